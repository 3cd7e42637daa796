"""Call-local state of one DPMesh forward pass: what its layers hand to later layers, and opt-in inspection.

A loaded model is shared: a GPU worker's SDK processes all call one copy (the shared model's host serves each caller
from its own thread), and a notebook may call one model from a thread pool. So nothing a forward pass records may
live on a module. What the backbone needs between its layers (the head-averaged cross-attention maps of the 10
capture layers and the four decoder taps) goes into a `ForwardCapture` that each `DPMeshBackbone.forward` creates
for itself and makes *current* for the duration of its UNet pass. The attention processors and the tap hooks are
installed once on the shared modules; at run time they write into the capture that is current in the calling
thread. Current means a `contextvars.ContextVar`: every thread (and asyncio task) has its own value, so two passes
in two threads never see each other's capture. `torch.compile` traces the set / get / reset without a graph break.

Inspection (parity tests, debugging) is opt-in and call-local too: `with record_intermediates() as seen:
model(...)` collects named intermediate tensors of the passes run *by this thread* inside the block. Nothing is kept
otherwise; a recording refuses to nest, since an inner block would silently take the outer block's tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class ForwardCapture:
    """What one backbone pass records on its way through the UNet.

    Attributes:
        maps: capture layer name → head-averaged attention probabilities `(B, N, M)` (N query tokens, M = 30
            keypoint tokens).
        taps: tap name (`f4`, `f8`, `f16`, `f32`) → that decoder block's output `(B, C, h, w)`.
    """

    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


_CURRENT: contextvars.ContextVar[ForwardCapture | None] = contextvars.ContextVar(
    "dpmesh_forward_capture", default=None
)
_RECORDING: contextvars.ContextVar[dict[str, torch.Tensor] | None] = contextvars.ContextVar(
    "dpmesh_intermediates", default=None
)


@contextlib.contextmanager
def capturing(capture: ForwardCapture) -> Iterator[ForwardCapture]:
    """Make `capture` the one the capture processors and tap hooks write to, in this thread, inside the block."""
    token = _CURRENT.set(capture)
    try:
        yield capture
    finally:
        _CURRENT.reset(token)


def current_capture(what: str) -> ForwardCapture:
    """The capture of the backbone pass running in this thread.

    Raises:
        RuntimeError: naming `what` (the layer or tap) when it runs outside a `DPMeshBackbone.forward` (e.g. the UNet
            called on its own), where there is no pass to record into.
    """
    capture = _CURRENT.get()
    if capture is None:
        raise RuntimeError(f"{what} ran outside a DPMesh backbone pass: call the backbone, not its UNet directly")
    return capture


@contextlib.contextmanager
def record_intermediates() -> Iterator[dict[str, torch.Tensor]]:
    """Collect named intermediate tensors (`latent`, `heatmap`, `f16a`, `hs`, ...) of the passes this thread runs.

    A later pass inside the block overwrites an earlier one's entries. Eager models only: a compiled step records
    what it recorded when it was traced.

    Raises:
        RuntimeError: when this thread is already recording.
    """
    if _RECORDING.get() is not None:
        raise RuntimeError("record_intermediates() is already active in this thread: it does not nest")
    seen: dict[str, torch.Tensor] = {}
    token = _RECORDING.set(seen)
    try:
        yield seen
    finally:
        _RECORDING.reset(token)


def record(**tensors: torch.Tensor) -> None:
    """Hand named intermediates to the active `record_intermediates()` of this thread (a no-op without one)."""
    seen = _RECORDING.get()
    if seen is not None:
        seen.update(tensors)
