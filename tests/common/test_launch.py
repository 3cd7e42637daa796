"""One resolved launch per run: for every job and runner, the dry-run plan prints the flags the run then uses.

Each job's ``run()`` resolves its launch once (``pipelines.common.launch``) and hands the same object to the plan
(``runner.dry_run=true``) and to the run. Here the run is stopped at the moment it would start its pipeline, and
the flags it would run with are compared with the plan's (a fixed ``runner.job_name`` makes both deterministic).
The DaskRunner's partitions are one per pending unit, which a dry run (it reads no storage) cannot count: the plan
says so, and every other flag is equal.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import launch as launch_module
from pipelines.config import (
    EvalJobConfig,
    ExportJobConfig,
    LabelJobConfig,
    RefilterJobConfig,
    ReportJobConfig,
    ShardJobConfig,
    compose_config,
)
from pipelines.eval.job import run as evaluate
from pipelines.export.job import run as export
from pipelines.label.job import run as label
from pipelines.refilter.job import run as refilter
from pipelines.report.job import run as report
from pipelines.shard.job import run as shard
from tests.fakes.corpus import make_images
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import label_shards, shard_annotated


IMAGE = "us-central1-docker.pkg.dev/my-project/dpmesh/dpmesh-cpu:0.1.0"
RUNNERS: dict[str, list[str]] = {
    "direct": ["runner.running_mode=multi_processing", "runner.num_workers=2"],
    "portable": ["runner=portable", "runner.job_endpoint=localhost:8099", f"runner.image={IMAGE}"],
    "dataflow": [
        "runner=dataflow", "runner.dataflow.project=my-project", "runner.dataflow.temp_location=gs://my-bucket/tmp",
        f"runner.image={IMAGE}",
    ],
    "spark": ["runner=spark", "runner.job_endpoint=jobserver:8099", f"runner.image={IMAGE}"],
    "flink": ["runner=flink", "runner.job_endpoint=jobserver:8099", f"runner.image={IMAGE}"],
    "dask": ["runner=dask"],
}  # fmt: skip


class _StoppedError(Exception):
    """Raised where the run would start its pipeline, carrying the options it would run with."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__("stopped before the run")
        self.options = options


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shard set and its labels (numpy stand-in model), the inputs of every job."""
    root = tmp_path_factory.mktemp("launch")
    shards = shard_annotated(
        root, make_images(4, seed=3, width=160, height=120, persons=(1, 1)), "shard.max_samples=2"
    )
    label_shards(shards, root / "labels", handler=FakeDPMeshHandler)
    old = root / "labels_without_statistics"  # as labeled before markers carried statistics: the report computes them
    shutil.copytree(root / "labels", old)
    (old / "_done_index.json.gz").unlink()
    (old / "_stats.json").unlink()
    for path in (old / "_done").glob("*.json"):
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "stats"}))
    files = [p for folder in ("annotations", "rejected") for p in sorted((root / "labels" / folder).glob("*.parquet"))]
    rows = [r for p in files for r in pq.read_table(p).to_pylist()]
    ground_truth = {"sample_id": [r["sample_id"] for r in rows], "joints_3d": [r["joints_3d"] for r in rows]}
    pq.write_table(pa.table(ground_truth), root / "ground_truth.parquet")  # dpmesh-eval's: the labels' own joints
    return root


def _jobs(root: Path, out: Path) -> dict[str, tuple[Callable[[Any], Any], Callable[[list[str]], Any]]]:
    """Per job: its ``run`` and a config maker taking extra overrides."""

    def label_run(cfg: LabelJobConfig) -> Any:
        return label(cfg, handler=FakeDPMeshHandler(cfg.model))

    return {
        "shard": (
            shard,
            lambda more: compose_config(
                "dpmesh_shard", [f"input.images={root / 'images'}", f"output={out}", *more], ShardJobConfig
            ),
        ),
        "label": (
            label_run,
            lambda more: compose_config(
                "dpmesh_label", [f"input.shards={root / 'shards'}", f"output={out}", *more], LabelJobConfig
            ),
        ),
        "refilter": (
            refilter,
            lambda more: compose_config(
                "dpmesh_refilter", [f"input={root / 'labels'}", f"output={out}", *more], RefilterJobConfig
            ),
        ),
        "report": (
            report,
            lambda more: compose_config(
                "dpmesh_report",
                [
                    f"input.labels={root / 'labels_without_statistics'}",
                    f"output={out}",
                    "report.render_mesh=false",
                    *more,
                ],
                ReportJobConfig,
            ),
        ),
        "eval": (
            evaluate,
            lambda more: compose_config(
                "dpmesh_eval",
                [
                    f"input.labels={root / 'labels'}",
                    f"input.ground_truth={root / 'ground_truth.parquet'}",
                    f"output={out}",
                    *more,
                ],
                EvalJobConfig,
            ),
        ),
        "export": (
            export,
            lambda more: compose_config(
                "dpmesh_export",
                [f"input.labels={root / 'labels'}", f"input.shards={root / 'shards'}", f"output={out}", *more],
                ExportJobConfig,
            ),
        ),
    }


@pytest.mark.parametrize("runner", list(RUNNERS))
@pytest.mark.parametrize("job", ["shard", "label", "refilter", "export", "report", "eval"])
def test_the_plan_prints_the_flags_the_run_uses(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: str, runner: str
) -> None:
    run, config = _jobs(inputs, tmp_path / "out")[job]
    overrides = [*RUNNERS[runner], "runner.job_name=fixed-name", "log_level=WARNING"]
    plan = run(config([*overrides, "runner.dry_run=true"]))

    @contextmanager
    def stop_before_running(options: PipelineOptions) -> Iterator[Any]:
        raise _StoppedError(options.get_all_options(drop_default=True))
        yield  # pragma: no cover

    monkeypatch.setattr(launch_module, "running_pipeline", stop_before_running)
    with pytest.raises(_StoppedError) as stopped:
        run(config(overrides))
    ran = stopped.value.options
    planned = PipelineOptions(plan["flags"]).get_all_options(drop_default=True)
    if (
        runner == "dask" and job != "shard"
    ):  # one partition per pending unit: counted by the run, described by the plan
        assert "one per pending unit" in plan["dask_partitions"]
        assert ran.pop("npartitions") >= 1  # --dask_npartitions
    assert ran == planned
