"""The auditing tools at scale: how their time and peak memory grow with the label output they read.

One function per tool (`eval_scale` here; the report's part sits beside it). Each size is a synthetic label output
(``tests/eval/synthetic.py``: ``annotations/`` and ``rejected/`` Parquet per shard, typed as ``dpmesh-label`` writes
them, and ground truth with known errors), built once under ``--workdir`` (kept for reruns when given), and each run
is measured in its own subprocess: the in-process Beam runner's peak RSS is that process's
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read by the child as it ends).

``dpmesh-eval`` sizes (shards x persons per shard): 1,000 x 10 and 10,000 x 1 (many small shards), 100 x 1,000
(100k persons) and 1,000 x 1,000 (1M persons). Its target: peak RSS at 1M persons within 1.2x of 100k persons.
Prints one line per size, then ``eval_peak_rss_mb=<1M persons> eval_rss_ratio_10x=<1M / 100k>``.

Usage: python benchmarks/audit_scale.py [--eval-sizes 1000x10,10000x1,100x1000,1000x1000] [--workdir DIR]
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


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple((int(s), int(p)) for s, p in (item.split("x") for item in text.split(",") if item))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-sizes", type=_sizes, default=EVAL_SIZES, help="shards x persons, comma-separated")
    parser.add_argument("--workdir", type=Path, help="where the synthetic outputs are built (kept); default: a temp dir")
    parser.add_argument("--eval-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.eval_child:
        _eval_child(*args.eval_child)
        return
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        result = eval_scale(workdir, args.eval_sizes)
    print(f"eval_peak_rss_mb={result['eval_peak_rss_mb']} eval_rss_ratio_10x={result['eval_rss_ratio_10x']}")


if __name__ == "__main__":
    main()
