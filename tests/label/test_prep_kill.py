"""A labeling worker killed (SIGKILL) inside a model call, mid-shard, while its preparation pool has a sample in
flight (``input.crop_mode=fast input.prep_threads=2``): the rerun resumes to the rows of an uninterrupted run with the
same settings, and the shards committed before the kill are left as they were."""

from __future__ import annotations

import signal
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.digests import identities, label_digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler, FakePredictor, FakeResult
from tests.fakes.label_inputs import fake_label


# One person per model call, so that a shard's persons take several calls and the kill can land between two of them.
_SETTINGS = ("input.crop_mode=fast", "input.prep_threads=2", "model.batch_size=1", "log_level=WARNING",
             "progress_interval_s=0")  # fmt: skip

# dpmesh-label with the stand-in model, killed inside its argv[1]-th predict call. The preparation of sample argv[2]
# (a later sample of the same shard) is held in its pool thread until then, and the call kills only once it has
# started (else the process exits with 3): the pool has that sample in flight when the process dies.
_KILL_IN_PREDICT = """
import os, signal, sys, threading
from pipelines.config import LabelJobConfig, compose_config
from pipelines.label.job import run
from pipelines.label.read import ShardReader
from tests.fakes.fake_dpmesh import FakeDPMeshHandler, FakePredictor
kill_at, held = int(sys.argv[1]), sys.argv[2]
calls, in_flight, never = [0], threading.Event(), threading.Event()
prepare, predict = ShardReader._prepare, FakePredictor.predict
def holding(self, task, sample, *args):
    if sample.key == held:
        in_flight.set()
        never.wait(60)
    return prepare(self, task, sample, *args)
def killing(self, persons, *args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        if not in_flight.wait(30):
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    return predict(self, persons, *args, **kwargs)
ShardReader._prepare = holding
FakePredictor.predict = killing
cfg = compose_config('dpmesh_label', sys.argv[3:], LabelJobConfig)
run(cfg, handler=FakeDPMeshHandler(cfg.model))
"""


@pytest.fixture(scope="module")
def fast_labeled(
    label_inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], list[tuple[str, str]]]:
    """An uninterrupted run with the same settings (the stand-in's rows follow the crops' pixels, so the reference
    crop mode's rows are not these), and the (shard, image key) of each model call, in order."""
    output = tmp_path_factory.mktemp("fast-labels") / "out"
    calls: list[tuple[str, str]] = []
    run_inference = FakeDPMeshHandler.run_inference

    def recording(self: FakeDPMeshHandler, batch: Sequence[Any], model: FakePredictor, *args: Any) -> list[FakeResult]:
        for person_batch in batch:  # one predict call each
            calls.append((person_batch.tasks[0].shard, person_batch.tasks[0].image_key))
        return run_inference(self, batch, model, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FakeDPMeshHandler, "run_inference", recording)
        summary = fake_label(f"input.shards={label_inputs['shards']}", f"output={output}", *_SETTINGS)
    assert summary["reconciled"]
    return output, summary, calls


def _kill_point(calls: list[tuple[str, str]], shards: str) -> tuple[list[str], str, int, str]:
    """The shards that call the model, in labeling order; the victim (neither the first of them nor the last); the
    number of its second model call, counted from the run's start; and its last sample, which neither of its first
    two calls needs."""
    order = list(dict.fromkeys(shard for shard, _ in calls))
    for shard in order[1:-1]:
        with tarfile.open(Path(shards) / f"{shard}.tar") as tar:
            held = list(dict.fromkeys(m.name.partition(".")[0] for m in tar.getmembers()))[-1]
        mine = [i for i, (s, _) in enumerate(calls) if s == shard]
        if len(mine) >= 2 and held not in {calls[i][1] for i in mine[:2]}:
            return order, shard, mine[1] + 1, held
    raise AssertionError(f"no shard to kill mid-batch in {calls}")


def test_a_worker_killed_mid_batch_with_the_pool_running_resumes_to_the_same_rows(
    fast_labeled: tuple[Path, dict[str, Any], list[tuple[str, str]]], label_inputs: dict[str, str], tmp_path: Path
) -> None:
    reference, expected, calls = fast_labeled
    order, victim, kill_at, held = _kill_point(calls, label_inputs["shards"])
    output = tmp_path / "killed"
    args = [f"input.shards={label_inputs['shards']}", f"output={output}", *_SETTINGS]
    process = subprocess.run(
        [sys.executable, "-c", _KILL_IN_PREDICT, str(kill_at), held, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, (
        f"not killed in model call {kill_at} (exit {process.returncode}): {process.stderr.decode()[-2000:]}"
    )
    done = sorted((output / "_done").glob("shard-*.json"))
    committed = {p.stem for p in done}
    assert committed, "at least one shard was committed before the kill"
    assert victim not in committed, "the shard killed mid-batch has no marker"
    assert set(order[: order.index(victim)]) <= committed
    total = expected["shards"]["total"]
    assert len(committed) < total
    finished = [*done, *(p for p in output.glob("*/shard-*.parquet") if p.stem in committed)]
    before = identities(finished)

    resumed = fake_label(*args)  # no overwrite=true: the run's own unfinished work is taken up
    assert resumed["reconciled"]
    assert resumed["shards"]["labeled_this_run"] == total - len(committed)
    assert resumed["counts"] == expected["counts"]
    assert label_digests(output) == label_digests(reference), (
        "same rows as an uninterrupted run: none missing or doubled"
    )
    assert identities(finished) == before, "shards committed before the kill are the same files"
