"""dpmesh-eval on Beam's DaskRunner (a real ``dask scheduler`` with two workers, tests/services.py), compared with
the DirectRunner run: the same figures, from several buckets joined on the cluster's workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.config import EvalJobConfig, compose_config
from pipelines.eval.job import run as evaluate
from tests.eval.synthetic import write_label_output
from tests.runners.test_dask_runner import _tasks_run_by_workers
from tests.services import DaskCluster


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.slow
def test_dpmesh_eval_on_dask_gives_the_direct_runs_figures(dask_cluster: DaskCluster, tmp_path: Path) -> None:
    labels, ground_truth = write_label_output(tmp_path / "corpus", 6, 20, seed=4)

    def cfg(output: str, *runner: str) -> EvalJobConfig:
        return compose_config(
            "dpmesh_eval",
            [f"input.labels={labels}", f"input.ground_truth={ground_truth}", f"output={tmp_path / output}",
             "bucket_persons=40", "log_level=WARNING", *runner],
            EvalJobConfig,
        )  # fmt: skip

    expected = evaluate(cfg("direct"))
    before = _tasks_run_by_workers(dask_cluster.address)
    got = evaluate(cfg("dask", "runner=dask", f"runner.address={dask_cluster.address}"))
    assert _tasks_run_by_workers(dask_cluster.address) > before, "the work ran on the cluster's workers"
    assert got["counts"] == expected["counts"]
    assert got["counts"]["matched"] == 120
    for key in ("overall", "by_tier", "by_occlusion_level"):
        assert _flat(got[key]) == pytest.approx(_flat(expected[key]), rel=1e-12), key
    for metric, quality in expected["confidence_quality"].items():
        assert got["confidence_quality"][metric]["spearman"] == pytest.approx(quality["spearman"], rel=1e-12)
        assert got["confidence_quality"][metric]["ause_mm"] == pytest.approx(quality["ause_mm"], rel=1e-12)
    assert len(list((tmp_path / "dask" / "persons").glob("part-*.parquet"))) == 3
