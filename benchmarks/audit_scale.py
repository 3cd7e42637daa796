"""The auditing tools at scale: how their time and peak memory grow with the label output they read.

One function per tool (`report_scale`, `eval_scale`). Each size is a synthetic label output
(``tests/eval/synthetic.py``: ``annotations/`` and ``rejected/`` Parquet per shard, typed as ``dpmesh-label`` writes
them, and ground truth with known errors), built once under ``--workdir`` (kept for reruns when given), and each run
is measured in its own subprocess: the in-process Beam runner's peak RSS is that process's
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read by the child as it ends).

``dpmesh-eval`` sizes (shards x persons per shard): 1,000 x 10 and 10,000 x 1 (many small shards), 100 x 1,000
(100k persons) and 1,000 x 1,000 (1M persons). Its target: peak RSS at 1M persons within 1.2x of 100k persons.
Prints one line per size, then ``eval_peak_rss_mb=<1M persons> eval_rss_ratio_10x=<1M / 100k>``.

``dpmesh-report`` sizes: 1,000 x 10, 10,000 x 1 and 10,000 x 10, each with the files a finished label run leaves
(markers with their statistics, the marker index, ``_stats.json``), made by the label job's own functions. Its
targets: <= 2 s per 1,000 shards beyond a fixed cost (the difference between 10,000 x 10 and 1,000 x 10, per 1,000
shards), peak RSS <= 1 GB at 10,000 shards. The gallery is off (``report.per_tier=0``): its cost is fixed (at most
``per_tier`` rows and images per tier, whatever the output's size) and the synthetic rows carry no images.

``dpmesh-export`` planning (`export_planning`): a finished export of 1,000 and 10,000 shards (synthetic markers and
indexes on local disk, made with the export's own functions), planned again in this process, then its card step;
time and GETs (calls of ``Storage.read_bytes``), with the export's marker index and without it. Target: one GET per
marker the index lacks, none for the others. Prints a line per size, then
``export_planning_s_per_1k_shards=<x> export_planning_gets=<n>`` (at 10,000 shards). Local disk makes a GET ~0.05 ms
where S3 takes ~5 ms: the GET count is what carries over.

Last line: ``report_s_per_1k_shards=<x> eval_peak_rss_mb=<n> rss_ratio_10x=<r>``.

Usage: python benchmarks/audit_scale.py [--report-sizes 1000x10,10000x1,10000x10]
                                        [--eval-sizes 1000x10,10000x1,100x1000,1000x1000] [--workdir DIR]
                                        [--export-planning-sizes 1000,10000] [--export-planning-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EVAL_SIZES = ((1000, 10), (10_000, 1), (100, 1000), (1000, 1000))
# The sizes whose peak RSS the target compares: 1M persons against 100k, same shard size.
EVAL_RATIO_SIZES = ((1000, 1000), (100, 1000))


def _eval_child(labels: str, ground_truth: str, output: str) -> None:
    """Runs dpmesh-eval in this process and prints its seconds and peak RSS (MB) as JSON (the subprocess side)."""
    from pipelines.config import EvalJobConfig, compose_config
    from pipelines.eval.job import run

    logging.basicConfig(level=logging.WARNING)
    cfg = compose_config(
        "dpmesh_eval",
        [f"input.labels={labels}", f"input.ground_truth={ground_truth}", f"output={output}", "log_level=WARNING"],
        EvalJobConfig,
    )
    started = time.perf_counter()
    doc = run(cfg)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "matched": doc["counts"]["matched"]}))


def _labels(workdir: Path, shards: int, persons: int) -> tuple[Path, Path]:
    """The synthetic label output of a size (built once per workdir)."""
    from tests.eval.synthetic import write_label_output

    root = workdir / f"labels-{shards}x{persons}"
    done = root / "built"
    if not done.exists():
        started = time.perf_counter()
        write_label_output(root, shards, persons)
        done.write_text("")
        print(f"  built {shards} x {persons} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return root / "labels", root / "ground_truth"


def eval_scale(workdir: Path, sizes: tuple[tuple[int, int], ...] = EVAL_SIZES) -> dict[str, Any]:
    """``dpmesh-eval`` on each size, each in a fresh subprocess.

    Returns:
        ``{"runs": [{"shards", "persons_per_shard", "persons", "seconds", "s_per_1k_shards", "peak_rss_mb"}, ...],
        "eval_peak_rss_mb": <at 1M persons or the largest size>, "eval_rss_ratio_10x": <1M / 100k, or None>}``.
    """
    runs = []
    for shards, persons in sizes:
        labels, ground_truth = _labels(workdir, shards, persons)
        with tempfile.TemporaryDirectory(dir=workdir) as out:
            done = subprocess.run(
                [sys.executable, __file__, "--eval-child", str(labels), str(ground_truth), str(Path(out) / "eval")],
                capture_output=True, text=True, check=False, cwd=REPO,
            )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"dpmesh-eval on {shards} x {persons} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["matched"] == shards * persons, result
        run = {
            "shards": shards,
            "persons_per_shard": persons,
            "persons": shards * persons,
            "seconds": round(result["seconds"], 2),
            "s_per_1k_shards": round(result["seconds"] / shards * 1000, 2),
            "peak_rss_mb": round(result["peak_rss_mb"]),
        }
        print(
            "eval " + " ".join(f"{k}={v}" for k, v in run.items()),
            flush=True,
        )
        runs.append(run)
    by_size = {(r["shards"], r["persons_per_shard"]): r for r in runs}
    big, small = (by_size.get(size) for size in EVAL_RATIO_SIZES)
    largest = max(runs, key=lambda r: r["persons"])
    return {
        "runs": runs,
        "eval_peak_rss_mb": (big or largest)["peak_rss_mb"],
        "eval_rss_ratio_10x": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3) if big and small else None,
    }


REPORT_SIZES = ((10_000, 1), (1000, 10), (10_000, 10))


def _report_child(labels: str, output: str) -> None:
    """Runs dpmesh-report in this process and prints its seconds and peak RSS (MB) as JSON (the subprocess side)."""
    from pipelines.config import ReportJobConfig, compose_config
    from pipelines.report.job import run

    logging.basicConfig(level=logging.WARNING)
    keys = [f"input.labels={labels}", f"output={output}", "report.per_tier=0", "report.render_mesh=false"]
    cfg = compose_config("dpmesh_report", [*keys, "log_level=WARNING"], ReportJobConfig)
    started = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "rows": result["rows"],
                      "computed": result["statistics_computed"]}))  # fmt: skip


def _label_run_files(labels: Path, shards: int) -> None:
    """What a finished ``dpmesh-label`` run leaves beside the rows: a marker per shard with its statistics, the
    marker index, ``_stats.json`` and ``_summary.json`` (made by the label job's own functions)."""
    import pyarrow.parquet as pq

    from pipelines.common.label_set import DONE_FOLDER, SUMMARY_NAME, index_entry, write_index
    from pipelines.common.label_stats import shard_stats
    from pipelines.common.label_summary import write_stats_file
    from pipelines.common.merged_stats import MergedStats
    from pipelines.storage import Storage

    storage = Storage()
    (labels / DONE_FOLDER).mkdir(exist_ok=True)
    markers, merged = {}, MergedStats()
    for shard in range(shards):
        name = f"shard-{shard:06d}"
        tables = {folder: pq.read_table(labels / folder / f"{name}.parquet") for folder in ("annotations", "rejected")}
        stats = shard_stats(tables, None)
        persons = sum(t.num_rows for t in tables.values())
        counts = {"images_in": persons, "images_ok": persons, "images_errored": 0, "persons_in": persons,
                  "persons_accepted": tables["annotations"].num_rows, "persons_rejected": tables["rejected"].num_rows,
                  "persons_errored": 0}  # fmt: skip
        marker = {
            "shard": name, "shard_identity": {"tar_bytes": 1, "tar_sha1": f"{shard:040x}"}, "config_hash": "bench",
            "pipeline_version": "bench", "counts": counts, "reconciled": True, "rejected_by_reason": {},
            "errors_by_stage": {}, "errors_by_reason": {}, "tiers": stats["rows"], "elapsed_s": 1.0 + shard % 7,
            "stats": stats,
        }  # fmt: skip
        (labels / DONE_FOLDER / f"{name}.json").write_text(json.dumps(marker))
        markers[name] = index_entry(marker)
        merged.add(name, stats)
    write_index(storage, str(labels), markers)
    write_stats_file(storage, str(labels), markers, merged, sorted(markers))
    (labels / SUMMARY_NAME).write_text(json.dumps({"created_by": "dpmesh-label", "shards": {"total": shards}}))


def report_scale(workdir: Path, sizes: tuple[tuple[int, int], ...] = REPORT_SIZES) -> dict[str, Any]:
    """``dpmesh-report`` (``report.per_tier=0``: no gallery, whose cost is fixed; no mesh rendering) on each size, each
    in a fresh subprocess.

    Returns:
        ``{"runs": [...], "report_s_per_1k_shards": <marginal: between the fewest and the most shards measured with the
        rows per shard of the last size>,
        "report_peak_rss_mb_10k": <the largest 10,000-shard run>}``.
    """
    runs = []
    for shards, persons in sizes:
        labels, _ = _labels(workdir, shards, persons)
        if not (labels / "_stats.json").exists():
            started = time.perf_counter()
            _label_run_files(labels, shards)
            print(f"  markers of {shards} x {persons} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=workdir) as out:
            done = subprocess.run(
                [sys.executable, __file__, "--report-child", str(labels), str(Path(out) / "report")],
                capture_output=True, text=True, check=False, cwd=REPO,
            )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"dpmesh-report on {shards} x {persons} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["rows"] != shards * persons or result["computed"]:
            raise RuntimeError(f"the report read {result}: expected {shards * persons} rows from _stats.json alone")
        run = {
            "shards": shards,
            "persons_per_shard": persons,
            "seconds": round(result["seconds"], 2),
            "peak_rss_mb": round(result["peak_rss_mb"]),
        }
        print("report " + " ".join(f"{k}={v}" for k, v in run.items()), flush=True)
        runs.append(run)
    # The marginal cost: between the fewest and the most shards measured with the same rows per shard.
    marginal = None
    same_rows = [r for r in runs if r["persons_per_shard"] == runs[-1]["persons_per_shard"]]
    small, big = min(same_rows, key=lambda r: r["shards"]), max(same_rows, key=lambda r: r["shards"])
    if big["shards"] > small["shards"]:
        marginal = round((big["seconds"] - small["seconds"]) / ((big["shards"] - small["shards"]) / 1000), 3)
    at_10k = [r["peak_rss_mb"] for r in runs if r["shards"] >= 10_000]
    return {"runs": runs, "report_s_per_1k_shards": marginal, "report_peak_rss_mb_10k": max(at_10k, default=None)}


EXPORT_PLANNING_SIZES = (1000, 10_000)


def _export_planning_inputs(root: Path, shards: int) -> tuple[Path, Path, Path]:
    """A finished export of ``shards`` shards on local disk, as planning and the card see it: the shard set's tars
    (empty files) and manifest, a label output's markers, index and one annotations file, and the export's markers
    and index, each marker made with the export's own functions (so that planning finds nothing pending)."""
    import pyarrow.parquet as pq

    from pipelines.common.label_set import marker_uri, write_index
    from pipelines.common.marker_index import write_index as write_marker_index
    from pipelines.export.export_shard import export_config_hash, label_lineage
    from pipelines.export.finish import EXPORT_INDEX
    from pipelines.storage import Storage
    from schemas import ANNOTATION_SCHEMA

    set_folder, labels, out = root / "shards", root / "labels", root / "export"
    if (root / "built").exists():
        return set_folder, labels, out
    storage = Storage()
    for folder in (set_folder, labels / "annotations", labels / "_done", out / "_done"):
        folder.mkdir(parents=True, exist_ok=True)
    cfg = _export_planning_config(labels, set_folder, out)
    export_hash = export_config_hash(cfg)
    names = [f"shard-{i:06d}" for i in range(shards)]
    entries, label_markers, export_markers = [], {}, {}
    for i, name in enumerate(names):
        (set_folder / f"{name}.tar").write_bytes(b"")
        identity = {"tar_bytes": 0, "tar_sha1": f"{i:040x}"}
        entries.append({"shard": name, **identity, "generation": 0})
        counts = {"images_in": 1, "images_ok": 1, "images_errored": 0, "persons_in": 1, "persons_accepted": 1,
                  "persons_rejected": 0, "persons_errored": 0}  # fmt: skip
        label_marker = {"shard": name, "shard_uri": str(set_folder / f"{name}.tar"), "shard_identity": identity,
                        "live_digest": None, "config_hash": "bench", "counts": counts, "reconciled": True}  # fmt: skip
        export_marker = {
            "shard": name, "format": "crops", "config_hash": export_hash, "pipeline_version": "bench",
            "label": {"shard_uri": label_marker["shard_uri"], **label_lineage(label_marker)},
            "counts": {"rows_in": 1, "rows_selected": 1, "images": 1, "persons": 1, "persons_skipped": 0,
                       "index_keys_invalid": 0},
            "reconciled": True, "skipped_by_reason": {}, "shard_error": None, "tiers": {"gold": 1},
            "occlusion_levels": None, "model_ids": ["bench"], "body_models": [], "errors": [], "skipped_images": [],
            "files": [f"{name}.tar"],
        }  # fmt: skip
        for output, marker in ((labels, label_marker), (out, export_marker)):
            Path(marker_uri(str(output), name)).write_text(json.dumps(marker))
        label_markers[name], export_markers[name] = label_marker, export_marker
    manifest = {"shards": entries, "generations": [{"generation": 0, "shards": names, "retired_file": None}]}
    (set_folder / "_manifest.json").write_text(json.dumps(manifest))
    pq.write_table(ANNOTATION_SCHEMA.empty_table(), labels / "annotations" / f"{names[0]}.parquet")
    write_index(storage, str(labels), label_markers)
    write_marker_index(storage, str(out), EXPORT_INDEX, export_markers)
    (root / "built").write_text("")
    return set_folder, labels, out


def _export_planning_config(labels: Path, shards: Path, out: Path) -> Any:
    from pipelines.config import ExportJobConfig, compose_config

    keys = [f"input.labels={labels}", f"input.shards={shards}", f"output={out}", "format=crops", "log_level=WARNING"]
    return compose_config("dpmesh_export", keys, ExportJobConfig)


def export_planning(workdir: Path, sizes: tuple[int, ...] = EXPORT_PLANNING_SIZES) -> dict[str, Any]:
    """``dpmesh-export``'s planning and card step on a finished export of each size (synthetic markers on local
    disk: a GET here is a file read, ~0.05 ms, where S3 takes ~5 ms), with and without the export's marker index.

    Planning is :func:`pipelines.export.plan.plan_export` (the label index, listings, manifest, guard, the export
    index; nothing is pending); the card step is :class:`pipelines.export.finish.WriteCardFn` with no shard of this
    run. GETs are the calls of ``Storage.read_bytes``.

    Returns:
        ``{"runs": [{"shards", "planning_s", "planning_gets", "card_s", "card_gets", "planning_gets_without_index"},
        ...], "export_planning_s_per_1k_shards": <planning seconds per 1,000 shards at the largest size>,
        "export_planning_gets": <planning GETs at the largest size>}``.
    """
    from pipelines.export.finish import WriteCardFn, provenance
    from pipelines.export.plan import plan_export
    from pipelines.storage import Storage

    logging.getLogger("pipelines").setLevel(logging.ERROR)  # the synthetic label output has no _summary.json
    reads = [0]
    original = Storage.read_bytes

    def counted(self: Storage, uri: str, *args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        return original(self, uri, *args, **kwargs)

    def measured(step: Any) -> tuple[Any, float, int]:
        reads[0] = 0
        started = time.perf_counter()
        result = step()
        return result, time.perf_counter() - started, reads[0]

    runs = []
    Storage.read_bytes = counted  # type: ignore[method-assign]
    try:
        for shards in sizes:
            set_folder, labels, out = _export_planning_inputs(workdir / f"export-planning-{shards}", shards)
            cfg = _export_planning_config(labels, set_folder, out)
            storage = Storage(cfg.storage)
            plan, planning_s, planning_gets = measured(lambda: plan_export(cfg, storage))  # noqa: B023
            assert len(plan.tasks) == shards, len(plan.tasks)
            assert not plan.pending, len(plan.pending)
            card = WriteCardFn(cfg, provenance(cfg, storage, plan.schema))
            stats, card_s, card_gets = measured(lambda: list(card.process([])))  # noqa: B023
            assert stats[0]["shards"] == shards
            index = out / "_done_index.json.gz"
            kept = index.read_bytes()
            index.unlink()
            _, unindexed_s, unindexed_gets = measured(lambda: plan_export(cfg, storage))  # noqa: B023
            index.write_bytes(kept)
            run = {
                "shards": shards,
                "planning_s": round(planning_s, 3),
                "planning_gets": planning_gets,
                "card_s": round(card_s, 3),
                "card_gets": card_gets,
                "planning_s_without_index": round(unindexed_s, 3),
                "planning_gets_without_index": unindexed_gets,
            }
            print("export_planning " + " ".join(f"{k}={v}" for k, v in run.items()), flush=True)
            runs.append(run)
    finally:
        Storage.read_bytes = original  # type: ignore[method-assign]
    largest = max(runs, key=lambda r: r["shards"])
    return {
        "runs": runs,
        "export_planning_s_per_1k_shards": round(largest["planning_s"] / largest["shards"] * 1000, 3),
        "export_planning_gets": largest["planning_gets"],
    }


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item)


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple((int(s), int(p)) for s, p in (item.split("x") for item in text.split(",") if item))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-sizes", type=_sizes, default=EVAL_SIZES, help="shards x persons, comma-separated")
    parser.add_argument("--workdir", type=Path, help="where synthetic outputs are built (kept); default: a temp dir")
    parser.add_argument("--report-sizes", type=_sizes, default=REPORT_SIZES, help="shards x persons, comma-separated")
    parser.add_argument("--eval-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--report-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--export-planning-sizes", type=_counts, default=EXPORT_PLANNING_SIZES, help="shards, comma-separated"
    )
    parser.add_argument("--export-planning-only", action="store_true", help="run only dpmesh-export's planning part")
    args = parser.parse_args()
    if args.eval_child:
        _eval_child(*args.eval_child)
        return
    if args.report_child:
        _report_child(*args.report_child)
        return
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        planning = export_planning(workdir, args.export_planning_sizes)
        print(
            f"export_planning_s_per_1k_shards={planning['export_planning_s_per_1k_shards']} "
            f"export_planning_gets={planning['export_planning_gets']}",
            flush=True,
        )
        if args.export_planning_only:
            return
        report = report_scale(workdir, args.report_sizes)
        evaluation = eval_scale(workdir, args.eval_sizes)
    print(
        f"report_s_per_1k_shards={report['report_s_per_1k_shards']} "
        f"report_peak_rss_mb_10k={report['report_peak_rss_mb_10k']}"
    )
    print(f"eval_peak_rss_mb={evaluation['eval_peak_rss_mb']} eval_rss_ratio_10x={evaluation['eval_rss_ratio_10x']}")
    print(
        f"report_s_per_1k_shards={report['report_s_per_1k_shards']} "
        f"eval_peak_rss_mb={evaluation['eval_peak_rss_mb']} rss_ratio_10x={evaluation['eval_rss_ratio_10x']}"
    )


if __name__ == "__main__":
    main()
