"""Progress and the run summary of ``dpmesh-label``, both read from the per-shard ``_done/`` markers.

Markers live in storage, so the driver sees progress the same way whatever the runner: a local run
logs shards done and persons/s while it works, and the summary aggregates every marker, including
those of earlier (resumed) runs.
"""

import dataclasses
import logging
import platform
import threading
import time
from collections import Counter
from collections.abc import Iterable
from importlib import metadata
from types import TracebackType
from typing import Any

from pipelines.common.label_set import fetch_markers, listed_markers
from pipelines.storage import Storage


logger = logging.getLogger(__name__)

_VERSIONED = ("apache-beam", "torch", "diffusers", "smplx", "pyarrow", "numpy", "webdataset")


class ProgressReporter:
    """Logs ``shards done / total`` and persons/s every ``interval_s`` while a run is in flight."""

    def __init__(self, storage: Storage, output: str, pending: list[str], interval_s: float) -> None:
        self._storage = storage
        self._output = output
        self._pending = set(pending)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dpmesh-progress", daemon=True)
        self._started = time.monotonic()
        self._persons_by_shard: dict[str, int] = {}  # markers already read: each is read once, not every poll

    def __enter__(self) -> "ProgressReporter":
        if self._interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def poll(self) -> None:
        """Reads the markers written since the last poll and logs the progress line (the thread's one step)."""
        try:
            self._read_new_markers(self._persons_by_shard)
        except Exception as exc:  # progress is best effort; the run itself reports real failures
            logger.debug("progress poll failed: %s", exc)
            return
        persons = sum(self._persons_by_shard.values())
        rate = persons / max(time.monotonic() - self._started, 1e-9)
        logger.info(
            "progress: %d/%d shards done, %d persons, %.1f persons/s",
            len(self._persons_by_shard), len(self._pending), persons, rate,
        )  # fmt: skip

    def _read_new_markers(self, persons_by_shard: dict[str, int]) -> None:
        """Reads only the markers of pending shards not seen yet (this run's: never from the index)."""
        listed = listed_markers(self._storage, self._output)
        new = [uri for shard, uri in listed.items() if shard in self._pending and shard not in persons_by_shard]
        for shard, marker in fetch_markers(self._storage, new).items():
            persons_by_shard[shard] = marker["counts"]["persons_in"]


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def merge_model_hosts(per_shard: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """This run's model hosting, by model kind, from its shards' markers: shared if any shard's model was, and the
    largest limit, caller count and peak overlap any shard saw (each marker holds its host's counts so far)."""
    merged: dict[str, dict[str, Any]] = {}
    for hosts in per_shard:
        for kind, stats in hosts.items():
            seen = merged.setdefault(kind, {"shared": False, "concurrent_calls": 0, "callers": 0,
                                            "peak_concurrent_calls": 0})  # fmt: skip
            seen["shared"] = seen["shared"] or bool(stats["shared"])
            for key in ("concurrent_calls", "callers", "peak_concurrent_calls"):
                seen[key] = max(seen[key], int(stats[key]))
    return dict(sorted(merged.items()))


def build_summary(
    *,
    markers: dict[str, dict[str, Any]],
    shards_total: list[str],
    processed: list[str],
    elapsed_s: float,
    run_info: dict[str, Any],
    thresholds: Any,
) -> dict[str, Any]:
    """The ``_summary.json`` document: totals over every shard marker, this run's throughput, versions."""
    counts: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    error_reasons: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    model_ids: set[str] = set()
    body_models: dict[str, str] = {}
    for marker in markers.values():
        model_ids.update(marker.get("model_ids", ()))  # absent from markers written before lineage was recorded
        body_models.update(marker.get("body_models", {}))
        counts.update(marker["counts"])
        by_reason.update(marker["rejected_by_reason"])
        by_stage.update(marker["errors_by_stage"])
        error_reasons.update(marker["errors_by_reason"])
        tiers.update(marker["tiers"])
    this_run = sum(markers[s]["counts"]["persons_in"] for s in processed if s in markers)
    hosts = merge_model_hosts(markers[s].get("model_hosts", {}) for s in processed if s in markers)
    totals = dict(counts)
    reconciled = (
        totals.get("persons_in", 0)
        == totals.get("persons_accepted", 0) + totals.get("persons_rejected", 0) + totals.get("persons_errored", 0)
        and totals.get("images_in", 0) == totals.get("images_ok", 0) + totals.get("images_errored", 0)
        and all(m["reconciled"] for m in markers.values())
    )
    return {
        "created_by": "dpmesh-label",
        **run_info,
        "versions": _versions(),
        "thresholds": dataclasses.asdict(thresholds),
        "shards": {
            "total": len(shards_total),
            "done": sum(1 for s in shards_total if s in markers),
            "labeled_this_run": len(processed),
            "missing": sorted(s for s in shards_total if s not in markers)[:100],
        },
        "counts": totals,
        "reconciled": reconciled,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "errors_by_stage": dict(sorted(by_stage.items())),
        "errors_by_reason": dict(sorted(error_reasons.items())),
        "tiers": dict(sorted(tiers.items())),
        "model_ids": sorted(model_ids),
        "body_models": dict(sorted(body_models.items())),
        "model_hosts": hosts,
        "throughput": {
            "elapsed_s": round(elapsed_s, 3),
            "persons_this_run": this_run,
            "persons_per_s": round(this_run / elapsed_s, 3) if elapsed_s > 0 else None,
        },
    }


def _hosting(stats: dict[str, Any]) -> str:
    where = "shared by the machine's processes" if stats["shared"] else "one per process"
    return (
        f"{where}, {stats['concurrent_calls']} concurrent call(s), {stats['callers']} caller process(es), "
        f"peak overlap {stats['peak_concurrent_calls']}"
    )


def format_summary(summary: dict[str, Any], output: str) -> str:
    """The end-of-run table a local user reads."""
    c = summary["counts"]
    s = summary["shards"]
    rows = [
        ("shards done / total", f"{s['done']} / {s['total']} ({s['labeled_this_run']} this run)"),
        (
            "images in / ok / errored",
            f"{c.get('images_in', 0)} / {c.get('images_ok', 0)} / {c.get('images_errored', 0)}",
        ),
        ("persons in", str(c.get("persons_in", 0))),
        ("  accepted", str(c.get("persons_accepted", 0))),
        ("  rejected", str(c.get("persons_rejected", 0))),
        ("  errored", str(c.get("persons_errored", 0))),
        ("counts reconcile", "yes" if summary["reconciled"] else "NO"),
        ("tiers", ", ".join(f"{k} {v}" for k, v in summary["tiers"].items()) or "-"),
        ("rejected by reason", ", ".join(f"{k} {v}" for k, v in summary["rejected_by_reason"].items()) or "-"),
        ("errors by reason", ", ".join(f"{k} {v}" for k, v in summary["errors_by_reason"].items()) or "-"),
        ("persons/s (this run)", str(summary["throughput"]["persons_per_s"])),
        *[(f"model host: {kind}", _hosting(stats)) for kind, stats in summary.get("model_hosts", {}).items()],
        ("output", output),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        [f"{summary.get('created_by', 'dpmesh-label')} summary"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    )
