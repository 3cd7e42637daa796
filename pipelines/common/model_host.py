"""How a loaded model serves its callers: how many calls run at once (on purpose), and what the host has seen.

A model shared across a machine's processes lives in one host process, and Beam's ``MultiProcessShared`` server
serves each caller process from its own thread: calls arrive and overlap as the callers' shards have batches
ready. The forward passes are safe to overlap (they keep their state call-local, ``dpmesh_core.models.
forward_capture``); how many may overlap is a decision, taken here and not left to timing:

* :class:`CallGate` lets at most ``limit`` calls run the model at a time; the others wait their turn. On a GPU the
  limit bounds device memory (each call holds one batch's activations) and keeps a CUDA graph's buffers to one
  caller; on a CPU each call runs on its own ``threads`` cores, so the limit is how many cores the host uses.
  Results never depend on the limit or on arrival order: each call computes its own batch with its own inputs, and
  the CPU kernels' thread count is pinned per call.
* The gate counts what a run's markers record (``model_hosts``): the limit, the distinct caller processes seen and
  the most calls that ran at once.
* :class:`OverlapProbe` is the test hook that makes overlap certain rather than likely: a forward hook, installed
  (``debug_overlap_s`` > 0) on a module in the middle of a model, that holds each call there until another call has
  reached the same point. A pass whose state leaked onto modules would then read the other pass's state.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class HostStats:
    """What a model's host has seen so far (one per loaded model, cumulative over its life).

    Attributes:
        shared: whether the model is shared across processes (else one copy per process).
        concurrent_calls: the gate's limit: calls allowed to run the model at once.
        callers: distinct processes that have called the model.
        peak_concurrent_calls: the most calls that ran the model at once.
        calls: calls served.
    """

    shared: bool
    concurrent_calls: int
    callers: int
    peak_concurrent_calls: int
    calls: int

    def as_dict(self) -> dict[str, Any]:
        """The marker's form."""
        return asdict(self)


class CallGate:
    """At most ``limit`` calls inside at a time (a bounded semaphore); counts callers and overlap.

    Args:
        limit: calls allowed at once (>= 1).
        shared: recorded in :class:`HostStats` (the gate behaves the same either way).
    """

    def __init__(self, limit: int, *, shared: bool) -> None:
        if limit < 1:
            raise ValueError(f"a model host needs at least one concurrent call, got {limit}")
        self._limit = limit
        self._shared = shared
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._inside = 0
        self._peak = 0
        self._calls = 0
        self._callers: set[int] = set()

    @contextlib.contextmanager
    def call(self, caller: int | None) -> Iterator[None]:
        """Hold one slot for the block; ``caller`` is the calling process's pid (None: this process)."""
        with self._slots:
            with self._lock:
                self._inside += 1
                self._peak = max(self._peak, self._inside)
                self._calls += 1
                self._callers.add(os.getpid() if caller is None else caller)
            try:
                yield
            finally:
                with self._lock:
                    self._inside -= 1

    def stats(self) -> HostStats:
        """A snapshot of what the gate has seen."""
        with self._lock:
            return HostStats(self._shared, self._limit, len(self._callers), self._peak, self._calls)


def resolve_concurrent_calls(configured: int | None, device: str, threads: int) -> int:
    """The gate's limit: ``configured``, or by device when None (``auto``).

    ``cuda``: 1. One forward pass at a time keeps device memory at one batch's activations and a CUDA graph's
    buffers to one caller; a batch of 12 persons at 256² crops (about 6 TFLOP) already fills the GPU with large
    kernels, so a second concurrent pass adds memory rather than throughput (see the README's model hosting notes).
    ``cpu``: as many calls as the machine has cores for ``threads`` each, since each call's kernels use its own
    cores and callers are the machine's SDK processes.
    """
    if configured is not None:
        return configured
    if device == "cuda":
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, threads))


class OverlapProbe:
    """Test hook: holds each call at one point of the forward pass until another call has reached that point.

    Used as a module forward hook (``module.register_forward_hook(probe)``). The i-th arrival waits until arrival
    i+1 (ordering by a condition variable, not by sleeps), or ``timeout_s`` when no other call comes (the run's last
    call, or a host with one caller). Needs a gate limit of at least 2, or calls could never meet.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._arrived = threading.Condition()
        self._arrivals = 0
        self.met = 0  # arrivals that saw another call reach the point while they were held there

    @property
    def arrivals(self) -> int:
        """Calls that have reached the probe's point so far."""
        with self._arrived:
            return self._arrivals

    def __call__(self, *_hook_args: Any) -> None:
        with self._arrived:
            self._arrivals += 1
            mine = self._arrivals
            self._arrived.notify_all()
            if self._arrived.wait_for(lambda: self._arrivals > mine, timeout=self._timeout_s):
                self.met += 1
