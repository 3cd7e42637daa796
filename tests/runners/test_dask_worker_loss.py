"""A dask worker killed mid-run: the job finishes on the other worker, and no shard committed before the kill is
rewritten.

When a worker dies, dask recomputes every task whose results lived on it, finished ones included: labeling steps
that had already committed their shards run again. Each finds its shard's marker where it runs
(``pipelines.common.commit_log``) and hands it on, so the committed files keep their identity (inode and size: a
rewrite goes through a temporary file and a rename) and the rows equal a direct run's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import distributed
import pytest

from pipelines.config import LabelJobConfig, compose_config
from pipelines.label.job import run as label
from tests.fakes.corpus import make_images
from tests.fakes.digests import label_digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import label_shards, shard_annotated
from tests.services import DaskCluster


pytestmark = pytest.mark.slow  # a cluster of its own (one of its workers is killed) and a deliberately slow model


def _label_config(shards: Path, output: Path, *more: str) -> LabelJobConfig:
    overrides = [f"input.shards={shards}", f"output={output}", "log_level=WARNING", "progress_interval_s=0"]
    return compose_config("dpmesh_label", [*overrides, *more], LabelJobConfig)


def _committed(output: Path) -> dict[str, tuple[int, int]]:
    """(inode, size) of the files of every shard with a marker."""
    done = {p.stem for p in (output / "_done").glob("*.json")}
    files = [p for p in output.glob("*/shard-*.*") if p.stem in done]
    return {p.relative_to(output).as_posix(): (p.stat().st_ino, p.stat().st_size) for p in files}


def test_a_worker_killed_mid_run_leaves_committed_shards_untouched(dask_cluster: DaskCluster, tmp_path: Path) -> None:
    images = make_images(8, seed=31, width=160, height=120, persons=(1, 1))
    shards_folder = shard_annotated(tmp_path, images, "shard.max_samples=1")
    shards = len(list(shards_folder.glob("shard-*.tar")))
    expected = label_shards(shards_folder, tmp_path / "direct", handler=FakeDPMeshHandler)

    output = tmp_path / "dask"
    cfg = _label_config(
        tmp_path / "shards",
        output,
        "runner=dask",
        f"runner.address={dask_cluster.address}",
        f"runner.partitions={shards}",
    )
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["summary"] = label(cfg, handler=FakeDPMeshHandler(cfg.model, seconds_per_batch=3.0))
        except BaseException as exc:  # reported by the test below
            result["error"] = exc

    driver = threading.Thread(target=run)
    driver.start()
    deadline = time.monotonic() + 180
    while len(list((output / "_done").glob("*.json"))) < 2:
        assert driver.is_alive(), result
        assert time.monotonic() < deadline, "no shard was committed in time"
        time.sleep(0.05)
    committed = _committed(output)
    with distributed.Client(dask_cluster.address, timeout=30) as client:
        pids = client.run(os.getpid)  # {worker address: pid}: the workers run on this machine
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in client.scheduler_info()["workers"]:
            assert time.monotonic() < deadline, "the scheduler never lost the killed worker"
            time.sleep(0.1)
    assert driver.is_alive(), "the kill must land mid-run"
    driver.join(timeout=300)
    assert not driver.is_alive(), "the run did not finish after losing a worker"
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary["reconciled"]
    assert summary["counts"] == expected["counts"]
    assert summary["shards"]["done"] == shards
    after = _committed(output)
    assert {name: after[name] for name in committed} == committed, "a shard committed before the kill was rewritten"
    assert label_digests(output) == label_digests(tmp_path / "direct")
