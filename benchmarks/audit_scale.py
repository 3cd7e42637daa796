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

Last line: ``report_s_per_1k_shards=<x> eval_peak_rss_mb=<n> rss_ratio_10x=<r>``.

Usage: python benchmarks/audit_scale.py [--report-sizes 1000x10,10000x1,10000x10]
                                        [--eval-sizes 1000x10,10000x1,100x1000,1000x1000] [--workdir DIR]
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


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple((int(s), int(p)) for s, p in (item.split("x") for item in text.split(",") if item))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-sizes", type=_sizes, default=EVAL_SIZES, help="shards x persons, comma-separated")
    parser.add_argument("--workdir", type=Path, help="where synthetic outputs are built (kept); default: a temp dir")
    parser.add_argument("--report-sizes", type=_sizes, default=REPORT_SIZES, help="shards x persons, comma-separated")
    parser.add_argument("--eval-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--report-child", nargs=2, help=argparse.SUPPRESS)
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
