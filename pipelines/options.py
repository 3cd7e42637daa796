"""The one place where Beam pipeline options are built, from :class:`~pipelines.config.RunnerConfig`.

Every flag name used here is one of the installed ``apache_beam.options.pipeline_options`` (the tests parse
the flags back into its views). What each runner gets:

* ``direct``: Beam's FnApiRunner, the engine behind the DirectRunner for batch pipelines.
* ``portable``: the PortableRunner against any Beam job service.
* ``spark`` / ``flink``: the PortableRunner against the Beam job server of a Spark or Flink cluster, SDK
  workers in the worker image (``DOCKER``) by default.
* ``dataflow``: the DataflowRunner on Runner v2 with the worker image; GPUs either on every worker
  (``worker_accelerator``) or, with right fitting, only on the inference step (:func:`inference_resource_hints`).
* ``dask``: Beam's DaskRunner on dask.distributed, against the scheduler at ``runner.address``, or, without one,
  a ``LocalCluster`` the runner starts itself (``distributed.Client()`` with no address does that).

Every launch gets its own job name (:func:`resolve_job_name`), so two launches never collide in one Dataflow project.
"""

import gc
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from pipelines.config import DataflowConfig, EnvironmentType, RunnerConfig, RunnerName
from pipelines.config.runner import JOB_NAME_MAX_LENGTH


BEAM_RUNNERS = {
    RunnerName.direct: "FnApiRunner",
    RunnerName.portable: "PortableRunner",
    RunnerName.spark: "PortableRunner",
    RunnerName.flink: "PortableRunner",
    RunnerName.dataflow: "DataflowRunner",
    # Not among Beam's known runner names (StandardOptions.ALL_KNOWN_RUNNERS), so only its full path resolves.
    RunnerName.dask: "apache_beam.runners.dask.dask_runner.DaskRunner",
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


def _dask_flags(runner: RunnerConfig, name: str) -> list[str]:
    # The client name shows up in the scheduler's logs and dashboard: it tells whose job a task belongs to.
    flags = [f"--dask_client_name={name}"]
    if runner.address:
        flags.append(f"--dask_client_address={runner.address}")
    if runner.partitions is not None:
        flags.append(f"--dask_npartitions={runner.partitions}")
    return flags


def unique_job_name(app: str, *, now: datetime | None = None) -> str:
    """``<app>-<UTC yyyymmdd-hhmmss>-<6 random hex>``, a valid Dataflow job name of at most 63 characters.

    ``app`` is lower-cased, characters Dataflow refuses become dashes and it is shortened to fit; the time
    orders launches in listings, the random part keeps two launches in the same second apart.
    """
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")
    suffix = f"-{stamp}-{secrets.token_hex(3)}"
    prefix = re.sub(r"[^a-z0-9]+", "-", app.lower()).strip("-")
    if not prefix[:1].isalpha():
        prefix = "job-" + prefix if prefix else "job"
    prefix = prefix[: JOB_NAME_MAX_LENGTH - len(suffix)].rstrip("-")
    return prefix + suffix


def resolve_job_name(runner: RunnerConfig, app: str) -> str:
    """``runner.job_name`` when set (validated with the config), else a new :func:`unique_job_name` for ``app``."""
    return runner.job_name or unique_job_name(app)


def _app_name(app: str | None, job_name: str | None) -> str:
    # ``job_name=`` is the keyword these functions had when it was the job's literal name; callers passed
    # their app name there, which is now the prefix of a unique name. Both keywords mean the app.
    if (app is None) == (job_name is None):
        raise TypeError("pass the app name as app=... (job_name=... is its older spelling), exactly once")
    return app or job_name or ""


def beam_flags(runner: RunnerConfig, *, app: str | None = None, job_name: str | None = None) -> list[str]:
    """Command-line style Beam flags for ``runner``, launching app ``app`` (e.g. ``dpmesh-shard``).

    The job name is ``runner.job_name``, or a new unique name with ``app`` as its prefix: call this once per
    launch, and build the options from the flags it returns. ``job_name=`` is an older spelling of ``app=``.

    ``direct`` maps to Beam's FnApiRunner: it is what the DirectRunner runs batch pipelines on, and
    naming it directly keeps the DirectRunner from first trying to download the Prism runner binary.
    """
    name = resolve_job_name(runner, _app_name(app, job_name))
    flags = [f"--job_name={name}", f"--runner={BEAM_RUNNERS[runner.name]}"]
    if runner.name == RunnerName.direct:
        flags += [
            f"--direct_running_mode={runner.running_mode.value}",
            f"--direct_num_workers={runner.num_workers}",
        ]
    elif runner.name == RunnerName.dataflow:
        flags += _dataflow_flags(runner)
    elif runner.name == RunnerName.dask:
        flags += _dask_flags(runner, name)
    else:
        flags += _job_server_flags(runner)
    return flags + list(runner.extra_options)


def pipeline_options(runner: RunnerConfig, *, app: str | None = None, job_name: str | None = None) -> PipelineOptions:
    """:func:`beam_flags` as :class:`PipelineOptions` (a new unique job name per call unless ``runner.job_name``)."""
    return PipelineOptions(beam_flags(runner, app=app, job_name=job_name))


@contextmanager
def running_pipeline(options: PipelineOptions) -> Iterator[beam.Pipeline]:
    """A Beam pipeline that runs when the ``with`` block ends, as ``with beam.Pipeline(options=...)`` does, and then
    releases what the run leaves open (:func:`release_runner`), whether the run succeeded or not.

    If the block raises before the run, Beam's local temp folder is removed too: Beam makes one per ``Pipeline`` and
    removes it only in ``run()``.
    """
    pipeline = beam.Pipeline(options=options)
    try:
        with pipeline:
            yield pipeline
            # The run allocates per element; each full collection would scan every object made before it (modules,
            # the graph) again. Set them aside for the run, and give them back to the collector after it.
            gc.freeze()
    except BaseException:
        discard_unrun(pipeline)
        raise
    finally:
        gc.unfreeze()
        release_runner(getattr(pipeline, "result", None))


def discard_unrun(pipeline: beam.Pipeline) -> None:
    """Removes the local temp folder Beam made for ``pipeline``, which Beam removes only in ``run()``: call it for a
    pipeline that was built but will not run (a launch plan, a build that raised). Harmless after a run."""
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)


def release_runner(result: PipelineResult | None) -> None:
    """Closes what a finished run leaves open (used by :func:`running_pipeline`).

    Beam's DaskRunner never closes its dask ``Client``, so the ``LocalCluster`` it started (or the connection to
    ``runner.address``) would live as long as the process: a notebook or test session would pile them up. Other
    runners' results hold nothing to close.
    """
    client = getattr(result, "client", None)  # DaskRunnerResult.client, a distributed.Client
    if client is not None:
        client.close()  # also stops a LocalCluster that this client started
