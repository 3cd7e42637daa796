"""The model host: a bounded number of calls at once, counted; the predictor serves overlapping callers.

* ``CallGate`` lets exactly ``limit`` calls in while the others wait (ordering by events, no sleeps), and counts
  callers and the peak overlap that markers record.
* ``DPMeshPredictor`` (what a shared model's host serves, one thread per calling process) called from several
  threads with mixed batch sizes, overlap forced mid-pass by the ``OverlapProbe``, gives every caller the result
  of the serial call, bit for bit.
* The hosting keys are checked at launch and change no content hash.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict

import numpy as np
import pytest

from dpmesh_core.preprocessing import PersonInputs, prepare_person
from pipelines.common.model_host import CallGate, OverlapProbe, resolve_concurrent_calls
from pipelines.config import ConfigError, LabelJobConfig, ModelConfig, compose_config, config_hash
from pipelines.config.storage import StorageConfig
from pipelines.label.model_handler import DPMeshModelHandler, DPMeshPredictor


def test_the_gate_admits_exactly_its_limit_and_counts_callers() -> None:
    gate = CallGate(2, shared=True)
    inside = threading.Condition()
    entered = 0
    release = threading.Event()

    def call(caller: int) -> None:
        nonlocal entered
        with gate.call(caller):
            with inside:
                entered += 1
                inside.notify_all()
            release.wait(timeout=30)

    threads = [threading.Thread(target=call, args=(100 + i % 3,)) for i in range(5)]
    for thread in threads:
        thread.start()
    with inside:
        assert inside.wait_for(lambda: entered == 2, timeout=30)
    assert gate.stats().peak_concurrent_calls == 2  # two inside, three waiting at the gate
    release.set()
    for thread in threads:
        thread.join()
    stats = gate.stats()
    assert (stats.concurrent_calls, stats.peak_concurrent_calls, stats.calls, stats.callers) == (2, 2, 5, 3)
    assert stats.as_dict() == {
        "shared": True, "concurrent_calls": 2, "callers": 3, "peak_concurrent_calls": 2, "calls": 5,
    }  # fmt: skip


def test_the_probe_holds_a_call_until_the_next_arrives() -> None:
    probe = OverlapProbe(timeout_s=30)
    order: list[str] = []
    first = threading.Thread(target=lambda: (probe(), order.append("first released")))
    first.start()
    deadline = time.monotonic() + 30
    while probe.arrivals < 1:  # the first call is held at the probe (an arrival is counted under its condition)
        assert time.monotonic() < deadline, "the first call never reached the probe"
        time.sleep(0.001)
    order.append("second arrives")
    # the second arrival releases the first; it then waits for a third that never comes (until its timeout, in a
    # daemon thread the test does not wait for)
    threading.Thread(target=probe, daemon=True).start()
    first.join()
    assert order == ["second arrives", "first released"]
    assert probe.met == 1


def test_auto_concurrency_is_one_on_a_gpu_and_per_core_on_a_cpu() -> None:
    assert resolve_concurrent_calls(None, "cuda", 1) == 1
    assert resolve_concurrent_calls(3, "cuda", 1) == 3
    assert resolve_concurrent_calls(None, "cpu", 1) >= 1
    with pytest.raises(ValueError, match="at least one"):
        CallGate(0, shared=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.concurrent_calls=0", "model.concurrent_calls must be >= 1"),
        ("model.debug_overlap_s=-1", "model.debug_overlap_s must be >= 0"),
        ("model.concurrent_calls=1", "needs model.concurrent_calls >= 2"),
        ("detector.concurrent_calls=1", "needs detector.concurrent_calls >= 2"),
    ],
)
def test_hosting_keys_are_checked_at_launch(override: str, message: str) -> None:
    probe = "detector.debug_overlap_s=1" if override.startswith("detector") else "model.debug_overlap_s=1"
    overrides = ["input.shards=x", "output=y", override] + ([probe] if "needs" in message else [])
    with pytest.raises(ConfigError, match=message):
        compose_config("dpmesh_label", overrides, LabelJobConfig)


def test_hosting_keys_change_no_content_hash() -> None:
    base = compose_config("dpmesh_label", ["input.shards=x", "output=y"], LabelJobConfig)
    hosted = compose_config(
        "dpmesh_label",
        ["input.shards=x", "output=y", "model.concurrent_calls=4", "model.debug_overlap_s=2",
         "detector.concurrent_calls=3", "model.share_across_processes=true"],
        LabelJobConfig,
    )  # fmt: skip
    assert config_hash(base) == config_hash(hosted)


def _persons(n: int, seed: int, predictor: DPMeshPredictor) -> list[PersonInputs]:
    rng = np.random.default_rng(seed)
    persons = []
    for _ in range(n):
        image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        joints = np.concatenate([rng.uniform([20, 10], [140, 110], (30, 2)), np.ones((30, 1))], axis=1)
        persons.append(prepare_person(image, joints.astype(np.float32), predictor.crop_geometry()))
    return persons


def test_a_predictor_called_from_many_threads_gives_every_caller_the_serial_result() -> None:
    # the same seeded tiny model twice: one called serially, one with the probe that forces overlap mid-pass
    reference = DPMeshModelHandler(ModelConfig(batch_size=3), StorageConfig()).load_model()
    cfg = ModelConfig(concurrent_calls=4, debug_overlap_s=1.0, batch_size=3)
    predictor = DPMeshModelHandler(cfg, StorageConfig()).load_model()
    sizes = (1, 3, 2, 3, 1, 2)
    jobs = [_persons(n, seed, predictor) for seed, n in enumerate(sizes)]
    flips = [i % 2 == 1 for i in range(len(jobs))]  # with flip consistency, a call runs two passes
    serial = [reference.predict(persons, flip) for persons, flip in zip(jobs, flips, strict=True)]
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = predictor.predict(jobs[i], flips[i], 1000 + i)
        except BaseException as exc:  # collected: the test names every failure
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    stats = predictor.host_stats()
    assert stats.peak_concurrent_calls >= 2, "the calls did not overlap: the test would prove nothing"
    assert stats.peak_concurrent_calls <= 4
    assert (stats.callers, stats.calls) == (len(jobs), len(jobs))
    for i, ((got_persons, got_flips), (want_persons, want_flips)) in enumerate(zip(results, serial, strict=True)):  # type: ignore[misc]
        assert got_flips == want_flips, i
        for got, want in zip(got_persons, want_persons, strict=True):
            for name, value in asdict(want).items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(getattr(got, name), value, err_msg=f"call {i}: {name}")
                else:
                    assert getattr(got, name) == value, (i, name)
