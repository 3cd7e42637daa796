"""One model, many threads: a forward pass keeps no state on modules, so overlapping calls give serial results.

This is what a shared model's host does (one thread per calling process). Overlap is forced, not hoped for: an
`OverlapProbe` hook after the UNet holds each pass there, its attention maps and taps written, until another pass
has written its own; a pass that kept them on a module would then read the other's (and, with another batch size,
fail to stack them). Every result must equal the serial one bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from dpmesh_core.fast_path import FastPathConfig, prepare_for_inference
from dpmesh_core.model import DPMesh, DPMeshOutput
from dpmesh_core.models.forward_capture import record_intermediates
from pipelines.common.model_host import OverlapProbe
from tests.fakes.tiny_dpmesh import build_tiny_dpmesh, tiny_inputs


BATCH_SIZES = (1, 3, 2, 1, 2, 3)  # mixed: a pass that read another's maps would fail or differ


@pytest.fixture(scope="module")
def tiny() -> DPMesh:
    return build_tiny_dpmesh()


def _call(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> DPMeshOutput:
    with torch.inference_mode():
        out: DPMeshOutput = model(**inputs)
    return out


def _concurrently(fn: Callable[[int], DPMeshOutput], n: int) -> tuple[list[DPMeshOutput | None], list[BaseException]]:
    results: list[DPMeshOutput | None] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # collected: the test names every failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def _assert_overlapping_calls_match_serial(model: torch.nn.Module, probe_on: torch.nn.Module) -> None:
    jobs = [tiny_inputs(batch=b, seed=i, config=model.config) for i, b in enumerate(BATCH_SIZES)]
    serial = [_call(model, x) for x in jobs]
    probe = OverlapProbe(timeout_s=2.0)
    handle = probe_on.register_forward_hook(probe)
    try:
        results, errors = _concurrently(lambda i: _call(model, jobs[i]), len(jobs))
    finally:
        handle.remove()
    assert not errors, errors
    assert probe.met >= len(jobs) - 1, "the passes did not overlap: the test would prove nothing"
    for i, (got, want) in enumerate(zip(results, serial, strict=True)):
        assert got is not None
        for name in ("smpl_pose", "smpl_shape", "cam_trans", "joint_img", "vertices"):
            assert torch.equal(getattr(got, name), getattr(want, name)), f"call {i} ({BATCH_SIZES[i]} persons): {name}"


def test_overlapping_forward_passes_give_the_serial_results(tiny: DPMesh) -> None:
    _assert_overlapping_calls_match_serial(tiny, tiny.backbone.unet)


def test_overlapping_fast_path_calls_give_the_serial_results(tiny: DPMesh) -> None:
    # fixed batch size: every call is padded to 3, so the lazily built step is shared by all the threads
    fast = prepare_for_inference(tiny, FastPathConfig(dtype="float32", batch_size=3), copy_model=True)
    _assert_overlapping_calls_match_serial(fast, fast.backbone.unet)


def test_recording_is_per_thread_and_does_not_nest(tiny: DPMesh) -> None:
    inputs = {b: tiny_inputs(batch=b, seed=b) for b in (1, 2)}
    seen: dict[int, dict[str, torch.Tensor]] = {}
    meet = threading.Barrier(2)

    def record(batch: int) -> DPMeshOutput:
        with record_intermediates() as mine:
            meet.wait()  # both threads are recording at once
            out = _call(tiny, inputs[batch])
        seen[batch] = mine
        return out

    _, errors = _concurrently(lambda i: record(i + 1), 2)
    assert not errors, errors
    for batch in (1, 2):
        assert seen[batch]["f16a"].shape[0] == batch  # each thread saw only its own pass
        assert len([k for k in seen[batch] if k.startswith("attn:")]) == 10
    with record_intermediates(), pytest.raises(RuntimeError, match="does not nest"), record_intermediates():
        pass


def test_the_unet_alone_names_the_missing_pass(tiny: DPMesh) -> None:
    unet = tiny.backbone.unet
    size = tiny.config.latent_size
    latent = torch.zeros(1, tiny.config.vae.latent_channels, size, size)
    context = torch.zeros(1, 30, tiny.config.unet.cross_attention_dim)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside a DPMesh backbone pass"):
        unet(latent, torch.tensor([1]), encoder_hidden_states=context)
