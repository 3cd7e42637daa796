"""A job's launch, resolved once from its config: the one object both the dry-run plan and the run use.

Every job's ``run()`` has one shape: plan the units (from storage) -> :func:`resolve_launch` -> execute
(:meth:`Launch.pipeline`, or :meth:`Launch.plan` on a dry run) -> read the result back. What differs between
runners (Beam flags, a unique job name, Dask partitions, the model steps' resource hints, the devices of every model
the job runs) is decided here, once, so the plan a user checks prints exactly the flags the run then uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import Device, RunnerConfig, RunnerName
from pipelines.options import beam_flags, inference_resource_hints, resolve_job_name, running_pipeline


@dataclass(frozen=True)
class Launch:
    """Everything about how one run of a job is launched.

    Attributes:
        app: The command (``dpmesh-label``): the job name's prefix and the plan's title.
        runner: The runner config, with what depends on the work resolved (Dask partitions: one per pending unit).
        flags: The Beam flags, unique job name included: :meth:`options` and the plan are built from these.
        hints: Resource hints of the model steps (the accelerator with right fitting on Dataflow; else empty).
        devices: Where each model the job runs lives (``{"model": "cuda", "detector": "cuda"}``; empty for CPU-only
            jobs).
    """

    app: str
    runner: RunnerConfig
    flags: tuple[str, ...]
    hints: dict[str, str] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str | None:
        """The most demanding device of the job's models (``cuda`` if any is), None without a model."""
        if not self.devices:
            return None
        return "cuda" if Device.cuda.value in self.devices.values() else Device.cpu.value

    def options(self) -> PipelineOptions:
        """Beam's options, from :attr:`flags`."""
        return PipelineOptions(list(self.flags))

    @contextlib.contextmanager
    def pipeline(self, options: PipelineOptions | None = None) -> Iterator[beam.Pipeline]:
        """The pipeline to build inside the block; it runs when the block ends (see ``options.running_pipeline``).

        ``options`` replaces :meth:`options` (tests that run a pipeline with options of their own).
        """
        with running_pipeline(options or self.options()) as p:
            yield p

    def plan(self, build: Callable[[beam.Pipeline], None]) -> dict[str, Any]:
        """Builds the pipeline without running it, prints the launch plan and returns it (a dry run)."""
        from pipelines.launch_plan import print_launch_plan

        return print_launch_plan(self, build)


def resolve_launch(
    app: str, runner: RunnerConfig, *, units: int | None = None, devices: Mapping[str, Device] | None = None
) -> Launch:
    """The launch of ``app`` on ``runner``.

    Args:
        app: The command name.
        runner: ``cfg.runner``.
        units: How many units of work the run has (pending shards); None when not known (a dry run touches no
            storage). The DaskRunner ignores Reshuffle: its only parallelism is how ``Create`` is split, so without
            ``runner.partitions`` it gets one partition per unit.
        devices: The device of each model the job runs (none for CPU-only jobs).
    """
    if runner.name == RunnerName.dask and runner.partitions is None and units is not None:
        runner = dataclasses.replace(runner, partitions=max(1, units))
    # One job name per launch, generated here once: the plan and the run's options come from the same flags.
    runner = dataclasses.replace(runner, job_name=resolve_job_name(runner, app))
    return Launch(
        app=app,
        runner=runner,
        flags=tuple(beam_flags(runner, app=app)),
        hints=inference_resource_hints(runner) if devices else {},
        devices={name: device.value for name, device in (devices or {}).items()},
    )
