"""Dry runs (``runner.dry_run=true``): build the pipeline for the configured runner and print the launch plan.

The plan lists the Beam flags and the option values Beam parses from them (per options view), the worker
image, where GPUs go, how many model copies load, and every step with the resource hints it carries. The
pipeline is built and serialized to its portable proto exactly as for a launch, on a runner that refuses
to run, so nothing is submitted and no cloud API, job service or storage is contacted.
"""

import json
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.runner import PipelineRunner

from pipelines.common.launch import Launch
from pipelines.config import EnvironmentType, RunnerConfig, RunnerName
from pipelines.options import accelerator_spec, discard_unrun


_VIEWS: dict[RunnerName, tuple[type, ...]] = {
    RunnerName.direct: (StandardOptions, DirectOptions),
    RunnerName.portable: (StandardOptions, PortableOptions),
    RunnerName.spark: (StandardOptions, PortableOptions),
    RunnerName.flink: (StandardOptions, PortableOptions, FlinkRunnerOptions),
    RunnerName.dataflow: (StandardOptions, GoogleCloudOptions, WorkerOptions, DebugOptions, SetupOptions),
}


def _views(runner: RunnerName) -> tuple[type, ...]:
    if runner == RunnerName.dask:  # imported here: it loads dask.distributed, which only dask runs need
        from apache_beam.runners.dask.dask_runner import DaskOptions

        return (StandardOptions, DaskOptions)
    return _VIEWS[runner]


class _NoSubmitRunner(PipelineRunner):  # type: ignore[misc]
    """Builds are allowed, runs are not: a dry run must never submit."""

    def run_pipeline(self, pipeline: beam.Pipeline, options: Any) -> Any:
        raise RuntimeError("dry run: this pipeline must not be run")


def _hint_name(urn: str) -> str:
    return urn.split(":")[2] if urn.count(":") >= 3 else urn


def _steps(pipeline: beam.Pipeline) -> list[dict[str, Any]]:
    """Top-level steps in order, each with the resource hints of any transform inside it."""
    steps: list[dict[str, Any]] = []

    def walk(node: Any, hints: dict[str, str]) -> None:
        for urn, value in node.resource_hints.items():
            hints[_hint_name(urn)] = value.decode() if isinstance(value, bytes) else str(value)
        for part in node.parts:
            walk(part, hints)

    for top in pipeline.transforms_stack[0].parts:
        hints: dict[str, str] = {}
        walk(top, hints)
        steps.append({"name": top.full_label, "transform": type(top.transform).__name__, "resource_hints": hints})
    return steps


def _model_copies(runner: RunnerConfig, device: str | None) -> str:
    if device is None:
        return "no model (CPU-only job)"
    if runner.name == RunnerName.dask:
        return "loaded by each dask task that runs the model step (the DaskRunner sets DoFns up per partition)"
    if device != "cuda":
        return "one copy per SDK worker process (CPU)"
    if runner.name == RunnerName.dataflow:
        return "one copy per GPU worker VM (share_model_across_processes), shared by its SDK processes"
    if runner.name in (RunnerName.spark, RunnerName.flink, RunnerName.portable):
        return (
            "one copy per SDK harness (container/process) on each node: keep runner.sdk_worker_parallelism=1 per GPU"
        )
    return "one copy per machine (share_model_across_processes)"


def _dask_partitions(runner: RunnerConfig) -> str | None:
    """How the DaskRunner splits the work (it ignores Reshuffle: its only parallelism is how Create is split)."""
    if runner.name != RunnerName.dask:
        return None
    if runner.partitions is not None:
        return str(runner.partitions)
    return "one per pending unit of work, counted when the run plans its units (a dry run reads no storage)"


def _dask_cluster(runner: RunnerConfig) -> str | None:
    if runner.name != RunnerName.dask:
        return None
    if runner.address:
        return f"dask scheduler at {runner.address} (its workers need this project installed)"
    return "a dask LocalCluster started on this machine for the run"


def _leaves(pipeline: beam.Pipeline) -> list[Any]:
    """The primitive transforms in the order they were applied (the order the DaskRunner visits them)."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        if not node.parts and node is not pipeline.transforms_stack[0]:
            found.append(node)
        for part in node.parts:
            walk(part)

    walk(pipeline.transforms_stack[0])
    return found


def _runs_user_code(leaf: Any) -> bool:
    """A ParDo whose DoFn (or the callable given to Map/FlatMap) is ours, not one of Beam's own no-op pieces."""
    fn = getattr(leaf.transform, "fn", None)
    if fn is None:
        return False
    target = getattr(fn, "_fn", fn)  # FlatMap wraps its callable in one of Beam's DoFns,
    target = getattr(target, "_argspec_fn", target)  # and Map/Filter wrap theirs in a lambda first
    module = getattr(target, "__module__", None) or type(target).__module__
    return not str(module).startswith("apache_beam")


def _upstream_of_last(leaves: list[Any]) -> set[int]:
    """Ids of the last transform and of all it reads, through inputs and side inputs: what the DaskRunner computes
    (it hands dask only the last transform's result, ``apache_beam/runners/dask/dask_runner.py``, ``run_pipeline``)."""
    reached: set[int] = set()
    pending = leaves[-1:]
    while pending:
        node = pending.pop()
        if id(node) not in reached:
            reached.add(id(node))
            sources = [*node.inputs, *(side.pvalue for side in node.side_inputs)]
            pending += [pc.producer for pc in sources if getattr(pc, "producer", None) is not None]
    return reached


def _dask_problems(pipeline: beam.Pipeline) -> list[str]:
    """What Beam's DaskRunner would get wrong in this graph (see README "Dask")."""
    leaves = _leaves(pipeline)
    problems = []
    tagged = [leaf.full_label for leaf in leaves if len(leaf.outputs) > 1]
    if tagged:
        problems.append(
            "Beam's DaskRunner merges tagged outputs into the main output, so these steps would feed wrong "
            f"elements downstream: {', '.join(tagged)}"
        )
    reached = _upstream_of_last(leaves)
    skipped = dict.fromkeys(
        leaf.full_label.split("/")[0] for leaf in leaves if id(leaf) not in reached and _runs_user_code(leaf)
    )
    if skipped:
        problems.append(
            "Beam's DaskRunner computes only the last step and what it reads, so these steps would never run: "
            + ", ".join(skipped)
        )
    return problems


def _problems(runner: RunnerConfig, device: str | None, steps: list[dict[str, Any]]) -> list[str]:
    problems = []
    gpu_steps = [s["name"] for s in steps if "accelerator" in s["resource_hints"]]
    if runner.name == RunnerName.dataflow:
        df = runner.dataflow
        if device == "cuda" and not df.accelerator:
            problems.append("model.device=cuda but runner.dataflow.accelerator is not set: no worker has a GPU")
        if device == "cpu" and df.accelerator:
            problems.append("runner.dataflow.accelerator is set but model.device=cpu: the GPUs would sit idle")
        if device is None and df.accelerator:
            problems.append("this job runs no model: runner.dataflow.accelerator only adds cost")
        if df.right_fitting and device == "cuda" and not gpu_steps:
            problems.append("right_fitting: no step carries an accelerator hint, so every step would run on CPU")
        if df.accelerator and (df.disk_size_gb or 0) < 50:
            problems.append("GPU images are large: Dataflow recommends runner.dataflow.disk_size_gb >= 50")
    return problems


def launch_plan(launch: Launch, build: Callable[[beam.Pipeline], None]) -> dict[str, Any]:
    """Builds the pipeline of ``launch`` without running it and returns the launch plan: the launch's own flags
    (the ones the run uses), its steps with their resource hints, and the problems found in the combination."""
    runner: RunnerConfig = launch.runner
    app = launch.app
    flags = list(launch.flags)
    options = PipelineOptions(flags)
    pipeline = beam.Pipeline(runner=_NoSubmitRunner(), options=options)
    try:
        build(pipeline)
        proto = pipeline.to_runner_api()  # pickles every DoFn, as a launch does
        steps = _steps(pipeline)
    finally:
        discard_unrun(pipeline)  # a plan never runs its pipeline
    device = launch.device
    image = None
    if runner.name == RunnerName.dataflow:
        image = runner.image
    elif runner.environment_type == EnvironmentType.DOCKER:
        image = runner.environment_config or runner.image
    accelerator = None
    if runner.name == RunnerName.dataflow and runner.dataflow.accelerator:
        spec = accelerator_spec(runner.dataflow)
        accelerator = (
            f"right fitting: resource hint accelerator={spec} on the inference step only"
            if runner.dataflow.right_fitting
            else f"worker_accelerator={spec} on every worker"
        )
    return {
        "app": app,
        "dry_run": True,
        "submitted": False,
        "runner": runner.name.value,
        "beam_runner": options.view_as(StandardOptions).runner,
        "flags": flags,
        "options": _own_options(options, _views(runner.name)),
        "image": image,
        "cluster": _dask_cluster(runner),
        "accelerator": accelerator,
        "inference_resource_hints": dict(launch.hints),
        "devices": dict(launch.devices),
        "dask_partitions": _dask_partitions(runner),
        "model_copies": _model_copies(runner, device),
        "steps": steps,
        "n_transforms": len(proto.components.transforms),
        "problems": _problems(runner, device, steps)
        + (_dask_problems(pipeline) if runner.name == RunnerName.dask else []),
    }


def _own_options(options: beam.options.pipeline_options.PipelineOptions, views: tuple[type, ...]) -> dict[str, Any]:
    """Per view, the options it defines whose value differs from Beam's default."""
    explicit = options.get_all_options(drop_default=True)
    result: dict[str, Any] = {}
    for view in views:
        parser = beam.options.pipeline_options._BeamArgumentParser(allow_abbrev=False)
        view._add_argparse_args(parser)
        names = sorted({action.dest for action in parser._actions if action.dest != "help"})
        result[view.__name__] = {name: explicit[name] for name in names if name in explicit}
    return result


def _devices(devices: dict[str, str]) -> str:
    return ", ".join(f"{model}={device}" for model, device in devices.items())


def format_launch_plan(plan: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    lines = [
        f"{plan['app']} launch plan (dry run: nothing submitted)",
        f"  runner       {plan['runner']} -> {plan['beam_runner']}",
        f"  worker image {plan['image'] or '(none: workers run in this Python environment)'}",
        *([f"  cluster      {plan['cluster']}"] if plan.get("cluster") else []),
        *([f"  partitions   {plan['dask_partitions']}"] if plan.get("dask_partitions") else []),
        *([f"  devices      {_devices(plan['devices'])}"] if plan.get("devices") else []),
        f"  GPUs         {plan['accelerator'] or 'none'}",
        f"  model copies {plan['model_copies']}",
        "  beam flags",
        *[f"    {flag}" for flag in plan["flags"]],
        "  options (parsed by apache_beam, non-default values per view)",
    ]
    for view, values in plan["options"].items():
        lines.append(f"    {view}")
        lines += [f"      {name} = {json.dumps(value)}" for name, value in values.items()]
    lines.append(f"  steps ({len(plan['steps'])} top-level, {plan['n_transforms']} transforms in the proto)")
    for step in plan["steps"]:
        hints = ", ".join(f"{k}={v}" for k, v in sorted(step["resource_hints"].items()))
        lines.append(f"    {step['name']:<22} {step['transform']:<20} {('hints: ' + hints) if hints else ''}".rstrip())
    lines.append("  problems" if plan["problems"] else "  problems     none found")
    lines += [f"    - {problem}" for problem in plan["problems"]]
    return "\n".join(lines)


def print_launch_plan(launch: Launch, build: Callable[[beam.Pipeline], None]) -> dict[str, Any]:
    """:func:`launch_plan`, printed; returns the plan."""
    plan = launch_plan(launch, build)
    print(format_launch_plan(plan), flush=True)
    return plan
