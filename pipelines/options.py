"""The one place where Beam pipeline options are built, from :class:`~pipelines.config.RunnerConfig`.

Every flag name used here is one of the installed ``apache_beam.options.pipeline_options`` (the tests parse
the flags back into its views). What each runner gets:

* ``direct``: Beam's FnApiRunner, the engine behind the DirectRunner for batch pipelines.
* ``portable``: the PortableRunner against any Beam job service.
* ``spark`` / ``flink``: the PortableRunner against the Beam job server of a Spark or Flink cluster, SDK
  workers in the worker image (``DOCKER``) by default.
* ``dataflow``: the DataflowRunner on Runner v2 with the worker image; GPUs either on every worker
  (``worker_accelerator``) or, with right fitting, only on the inference step (:func:`inference_resource_hints`).
"""

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import DataflowConfig, EnvironmentType, RunnerConfig, RunnerName


BEAM_RUNNERS = {
    RunnerName.direct: "FnApiRunner",
    RunnerName.portable: "PortableRunner",
    RunnerName.spark: "PortableRunner",
    RunnerName.flink: "PortableRunner",
    RunnerName.dataflow: "DataflowRunner",
}


def accelerator_spec(dataflow: DataflowConfig) -> str | None:
    """``type:<gpu>;count:<n>;install-nvidia-driver[;use_nvidia_mps]``, the value Dataflow takes for a GPU."""
    if not dataflow.accelerator:
        return None
    spec = f"type:{dataflow.accelerator};count:{dataflow.accelerator_count};install-nvidia-driver"
    return spec + (";use_nvidia_mps" if dataflow.use_nvidia_mps else "")


def inference_resource_hints(runner: RunnerConfig) -> dict[str, str]:
    """Resource hints for the model-inference step: the GPU when right fitting on Dataflow, else none.

    With ``runner.dataflow.right_fitting`` only the step carrying these hints runs on GPU workers; every
    other step stays on the (cheaper) default workers. The ModelHandler returns them from
    ``get_resource_hints()``, and RunInference applies them to its inference ParDo.
    """
    dataflow = runner.dataflow
    if runner.name != RunnerName.dataflow or not dataflow.right_fitting:
        return {}
    spec = accelerator_spec(dataflow)
    hints = {"accelerator": spec} if spec else {}
    if dataflow.min_ram:
        hints["min_ram"] = dataflow.min_ram
    return hints


def _dataflow_flags(runner: RunnerConfig) -> list[str]:
    df = runner.dataflow
    flags = [
        f"--project={df.project}",
        f"--region={df.region}",
        f"--temp_location={df.temp_location}",
        f"--sdk_container_image={runner.image}",
        "--experiments=use_runner_v2",
    ]
    optional = {
        "staging_location": df.staging_location,
        "service_account_email": df.service_account_email,
        "worker_machine_type": df.machine_type,
        "disk_size_gb": df.disk_size_gb,
        "num_workers": df.num_workers,
        "max_num_workers": df.max_num_workers,
        "network": df.network,
        "subnetwork": df.subnetwork,
    }
    flags += [f"--{name}={value}" for name, value in optional.items() if value is not None]
    if not df.use_public_ips:
        flags.append("--no_use_public_ips")
    spec = accelerator_spec(df)
    if spec and not df.right_fitting:  # right fitting puts the GPU on the inference step only
        flags.append(f"--dataflow_service_options=worker_accelerator={spec}")
    flags += [f"--labels={label}" for label in df.labels]
    return flags


def _job_server_flags(runner: RunnerConfig) -> list[str]:
    flags = [f"--job_endpoint={runner.job_endpoint}", f"--environment_type={runner.environment_type.value}"]
    config = runner.environment_config
    if runner.environment_type == EnvironmentType.DOCKER:
        config = config or runner.image
    if config:
        flags.append(f"--environment_config={config}")
    if runner.sdk_worker_parallelism is not None:
        flags.append(f"--sdk_worker_parallelism={runner.sdk_worker_parallelism}")
    if runner.parallelism is not None:
        flags.append(f"--parallelism={runner.parallelism}")
    if runner.max_parallelism is not None:
        flags.append(f"--max_parallelism={runner.max_parallelism}")
    return flags


def beam_flags(runner: RunnerConfig, *, job_name: str) -> list[str]:
    """Command-line style Beam flags for ``runner``.

    ``direct`` maps to Beam's FnApiRunner: it is what the DirectRunner runs batch pipelines on, and
    naming it directly keeps the DirectRunner from first trying to download the Prism runner binary.
    """
    flags = [f"--job_name={job_name}", f"--runner={BEAM_RUNNERS[runner.name]}"]
    if runner.name == RunnerName.direct:
        flags += [
            f"--direct_running_mode={runner.running_mode.value}",
            f"--direct_num_workers={runner.num_workers}",
        ]
    elif runner.name == RunnerName.dataflow:
        flags += _dataflow_flags(runner)
    else:
        flags += _job_server_flags(runner)
    return flags + list(runner.extra_options)


def pipeline_options(runner: RunnerConfig, *, job_name: str) -> PipelineOptions:
    """:func:`beam_flags` as :class:`PipelineOptions`."""
    return PipelineOptions(beam_flags(runner, job_name=job_name))
