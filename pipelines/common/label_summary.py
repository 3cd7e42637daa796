"""A label set's ``_summary.json`` document and its end-of-run table: totals over every shard marker (earlier,
resumed runs included), this run's throughput, how its models were hosted, and versions. Shared by the jobs that
write label sets (``dpmesh-label`` and ``dpmesh-refilter``), each from its pipeline's own last step
(:class:`WriteLabelSummary`), not from the launcher: the launching machine may not survive a long Dataflow or Spark
job. The step gathers the indexed marker fields of the shards this run committed (small records, the only thing it
waits for; shards themselves never wait for it), takes the other markers from the marker index (reading only those
it lacks), rewrites the index and writes the summary.
"""

import dataclasses
import json
import logging
import platform
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Any

import apache_beam as beam

from pipelines.common.commit_log import ALREADY_COMMITTED
from pipelines.common.label_set import SUMMARY_NAME, read_markers, write_index
from pipelines.common.label_units import IMAGES_RETIRED, LIVE_UPDATE, PERSONS_RETIRED
from pipelines.common.merged_stats import (
    STATS_FILE,
    MergedStats,
    MergeStatsFn,
    ShardStats,
    StatsFile,
    marker_stamp,
    read_stats_file,
    still_valid,
)
from pipelines.common.reviews import with_applied
from pipelines.config.storage import StorageConfig
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CommittedShard:
    """What the shard step of a job writing a label set outputs for each shard it commits.

    Attributes:
        entry: The marker's indexed fields (`pipelines.common.label_set.index_entry`), with ``ALREADY_COMMITTED``
            set when a retried work item found the shard done.
        stats: The shard's statistics, None for a marker written before they existed.

    One record rather than two tagged outputs: Beam's DaskRunner does not keep a DoFn's tagged outputs apart.
    """

    entry: dict[str, Any]
    stats: ShardStats | None


def committed_shard(entry: dict[str, Any], marker: dict[str, Any]) -> CommittedShard:
    """The record of a committed shard: ``entry`` (indexed fields and flags) and the statistics ``marker`` holds."""
    stats = marker.get("stats")
    return CommittedShard(entry, ShardStats(marker["shard"], stats) if isinstance(stats, dict) else None)


_VERSIONED = ("apache-beam", "torch", "diffusers", "smplx", "pyarrow", "numpy", "webdataset")


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
    """The ``_summary.json`` document: totals over every shard marker, this run's throughput, versions.

    ``counts`` are over the live samples of the shard set (``persons_in = accepted + rejected + errored`` and
    ``images_in = images_ok + images_errored``: ``reconciled``), plus ``images_retired`` and ``persons_retired``: the
    samples later generations retired, never labeled. Throughput and model hosting are of the shards whose model ran
    this run (``labeled_this_run``), not of those updated to their live record (``updated_this_run``).
    """
    counts: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    error_reasons: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    reviewed: Counter[str] = Counter()
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
        reviewed.update(marker.get("review") or {})
    # Shards updated to their live record ran no model: neither this run's throughput nor its model hosting.
    updated = [s for s in processed if s in markers and markers[s].get(LIVE_UPDATE)]
    modeled = [s for s in processed if s in markers and s not in updated]
    this_run = sum(markers[s]["counts"]["persons_in"] for s in modeled)
    hosts = merge_model_hosts(markers[s].get("model_hosts", {}) for s in modeled)
    # Every count but these two is over live samples; retired samples (superseded or removed by a later generation
    # of the shard set) are counted apart, never labeled, and stated even when none are (markers hold them only then).
    totals = {IMAGES_RETIRED: 0, PERSONS_RETIRED: 0, **counts}
    reconciled = (
        totals.get("persons_in", 0)
        == totals.get("persons_accepted", 0) + totals.get("persons_rejected", 0) + totals.get("persons_errored", 0)
        and totals.get("images_in", 0) == totals.get("images_ok", 0) + totals.get("images_errored", 0)
        and all(m["reconciled"] for m in markers.values())
    )
    review = run_info.get("review")  # a job applying reviews (dpmesh-refilter): its record, with the shards' counts
    return {
        "created_by": "dpmesh-label",
        **run_info,
        **({"review": with_applied(review, reviewed)} if isinstance(review, dict) else {}),
        "versions": _versions(),
        "thresholds": dataclasses.asdict(thresholds),
        "shards": {
            "total": len(shards_total),
            "done": sum(1 for s in shards_total if s in markers),
            "labeled_this_run": len(processed) - len(updated),
            "updated_this_run": len(updated),  # brought up to their live record from their rows, no model run
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


_MERGED = "_stats_merged"
"""Flag on an entry the summary step collects: the shard's statistics are in this run's merge."""


class WriteSummaryFn(beam.DoFn):
    """Input: the list of the indexed marker fields of the shards this run committed (once, possibly empty).

    Args:
        shards_total: Names of every shard of the input (committed earlier or now).
        run_info: Lineage and config recorded in the summary (``created_by`` names the job).
        started_at: Wall-clock time (s since the epoch) the driver launched the run, for the throughput.
    """

    def __init__(
        self,
        storage_cfg: StorageConfig,
        output: str,
        shards_total: list[str],
        run_info: dict[str, Any],
        thresholds: Any,
        started_at: float,
    ) -> None:
        self._storage_cfg = storage_cfg
        self._output = output
        self._shards_total = shards_total
        self._run_info = run_info
        self._thresholds = thresholds
        self._started_at = started_at

    def process(self, committed: Iterable[dict[str, Any]], run_stats: MergedStats) -> Iterator[dict[str, Any]]:
        """``run_stats``: the statistics of this run's shards merged (those whose entry has ``_MERGED`` set)."""
        storage = Storage(self._storage_cfg)
        entries = list(committed)
        # Shards a retried or recomputed work item found committed (by an earlier attempt of this run): done, kept.
        already = sorted(e["shard"] for e in entries if e.get(ALREADY_COMMITTED))
        stats_of = [e["shard"] for e in entries if e.get(_MERGED)]
        known = {e["shard"]: {k: v for k, v in e.items() if k not in (ALREADY_COMMITTED, _MERGED)} for e in entries}
        processed = sorted(known)
        markers = read_markers(storage, self._output, known=known)
        write_index(storage, self._output, markers)
        write_stats_file(storage, self._output, markers, run_stats, stats_of)
        summary = build_summary(
            markers=markers,
            shards_total=self._shards_total,
            processed=processed,
            elapsed_s=max(time.time() - self._started_at, 0.0),
            run_info=self._run_info,
            thresholds=self._thresholds,
        )
        summary["shards"]["already_committed"] = len(already)
        document = json.dumps(summary, indent=1, sort_keys=True).encode()
        storage.write_bytes(join(self._output, SUMMARY_NAME), document)
        yield summary


class WriteLabelSummary(beam.PTransform):  # type: ignore[misc]
    """The last step of a job that writes a label set: its input is one indexed marker record per shard the run
    committed (:func:`pipelines.common.label_set.index_entry`, with ``ALREADY_COMMITTED`` set on shards a retried
    work item found done); ``write`` writes the marker index and ``_summary.json`` from them and their statistics
    merged."""

    def __init__(self, write: WriteSummaryFn) -> None:
        super().__init__()
        self._fn = write

    def expand(self, committed: beam.PCollection) -> beam.PCollection:
        """``committed``: one :class:`CommittedShard` per shard the run committed."""
        stats = committed | "ShardStats" >> beam.FlatMap(_stats_of)
        merged = stats | "MergeStats" >> beam.CombineGlobally(MergeStatsFn())
        return (
            committed
            | "Entries" >> beam.Map(_entry_of)
            | "CollectCommitted" >> beam.combiners.ToList()
            | "WriteSummary" >> beam.ParDo(self._fn, beam.pvalue.AsSingleton(merged))
        )


def _stats_of(record: CommittedShard) -> Iterator[ShardStats]:
    if record.stats is not None:
        yield record.stats


def _entry_of(record: CommittedShard) -> dict[str, Any]:
    return {**record.entry, _MERGED: record.stats is not None}


def write_stats_file(
    storage: Storage, output: str, markers: dict[str, dict[str, Any]], run_stats: MergedStats, stats_of: list[str]
) -> None:
    """Writes ``<output>/_stats.json`` (`pipelines.common.merged_stats`): this run's merged statistics, plus the
    previous file's when it is still valid (none of its shards redone or changed since), covering those shards."""
    previous = read_stats_file(storage, output)
    covers = {shard: marker_stamp(markers[shard]) for shard in stats_of if shard in markers}
    stats = run_stats
    if previous is not None and still_valid(previous, markers, set(stats_of)):
        covers.update(previous.covers)
        stats = previous.stats.merge(run_stats)
    elif previous is not None:
        logger.info("%s: shards merged before were redone or changed; the new file covers this run's", STATS_FILE)
    storage.write_bytes(join(output, STATS_FILE), StatsFile(covers, stats).to_bytes())


def _hosting(stats: dict[str, Any]) -> str:
    where = "shared by the machine's processes" if stats["shared"] else "one per process"
    return (
        f"{where}, {stats['concurrent_calls']} concurrent call(s), {stats['callers']} caller process(es), "
        f"peak overlap {stats['peak_concurrent_calls']}"
    )


def _reviewed(review: Any) -> bool:
    """Whether a summary's review record says anything: files were given, or rows carried reviews."""
    return isinstance(review, dict) and bool(review.get("files") or any((review.get("applied") or {}).values()))


def _reviews(review: dict[str, Any]) -> str:
    applied = review.get("applied") or {}
    return (
        f"{len(review.get('files') or [])} file(s): accepted {applied.get('applied_accept', 0)}, rejected "
        f"{applied.get('applied_reject', 0)}, not found {applied.get('not_found', 0)}, conflicts "
        f"{(review.get('conflicts') or {}).get('count', 0)}; carried {applied.get('carried_accept', 0)} + "
        f"{applied.get('carried_reject', 0)}"
    )


def _updated(shards: dict[str, Any]) -> str:
    updated = shards.get("updated_this_run", 0)
    return f", {updated} updated to the live set" if updated else ""


def format_summary(summary: dict[str, Any], output: str) -> str:
    """The end-of-run table a local user reads."""
    c = summary["counts"]
    s = summary["shards"]
    rows = [
        ("shards done / total", f"{s['done']} / {s['total']} ({s['labeled_this_run']} this run{_updated(s)})"),
        (
            "images in / ok / errored",
            f"{c.get('images_in', 0)} / {c.get('images_ok', 0)} / {c.get('images_errored', 0)}",
        ),
        ("persons in", str(c.get("persons_in", 0))),
        ("  accepted", str(c.get("persons_accepted", 0))),
        ("  rejected", str(c.get("persons_rejected", 0))),
        ("  errored", str(c.get("persons_errored", 0))),
        ("counts reconcile", "yes" if summary["reconciled"] else "NO"),
        (
            "retired (left out)",
            f"{c.get(IMAGES_RETIRED, 0)} images, {c.get(PERSONS_RETIRED, 0)} persons",
        ),
        ("tiers", ", ".join(f"{k} {v}" for k, v in summary["tiers"].items()) or "-"),
        ("rejected by reason", ", ".join(f"{k} {v}" for k, v in summary["rejected_by_reason"].items()) or "-"),
        ("errors by reason", ", ".join(f"{k} {v}" for k, v in summary["errors_by_reason"].items()) or "-"),
        ("persons/s (this run)", str(summary["throughput"]["persons_per_s"])),
        *[(f"model host: {kind}", _hosting(stats)) for kind, stats in summary.get("model_hosts", {}).items()],
        *([("reviews", _reviews(summary["review"]))] if _reviewed(summary.get("review")) else []),
        ("output", output),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        [f"{summary.get('created_by', 'dpmesh-label')} summary"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    )
