"""The one place where Beam pipeline options are built, from :class:`~pipelines.config.RunnerConfig`."""

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import ConfigError, RunnerConfig, RunnerName


_NOT_YET_SUPPORTED = (RunnerName.dataflow, RunnerName.spark, RunnerName.flink)


def beam_flags(runner: RunnerConfig, *, job_name: str) -> list[str]:
    """Command-line style Beam flags for ``runner``.

    ``direct`` maps to Beam's FnApiRunner: it is what the DirectRunner runs batch pipelines on, and
    naming it directly keeps the DirectRunner from first trying to download the Prism runner binary.

    Raises:
        ConfigError: for runners that are declared but not supported yet.
    """
    if runner.name in _NOT_YET_SUPPORTED:
        raise ConfigError(
            f"runner={runner.name.value} is not yet supported. Use runner=direct locally, or runner=portable "
            "with runner.job_endpoint=<host:port> of a Beam job service."
        )
    flags = [f"--job_name={job_name}"]
    if runner.name == RunnerName.direct:
        flags += [
            "--runner=FnApiRunner",
            f"--direct_running_mode={runner.running_mode.value}",
            f"--direct_num_workers={runner.num_workers}",
        ]
    elif runner.name == RunnerName.portable:
        flags += [
            "--runner=PortableRunner",
            f"--job_endpoint={runner.job_endpoint}",
            f"--environment_type={runner.environment_type.value}",
        ]
        if runner.environment_config:
            flags.append(f"--environment_config={runner.environment_config}")
    return flags + list(runner.extra_options)


def pipeline_options(runner: RunnerConfig, *, job_name: str) -> PipelineOptions:
    """:func:`beam_flags` as :class:`PipelineOptions`."""
    return PipelineOptions(beam_flags(runner, job_name=job_name))
