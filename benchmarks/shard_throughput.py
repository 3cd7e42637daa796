"""Sharding throughput: dpmesh-shard images/s against the raw read+hash limit of the same files.

Generates (once, cached) a corpus of realistic 640x480 JPEGs with people drawn on them, then in
one run measures:
  raw   - a plain Python loop that reads and sha1-hashes every file (the I/O + hashing floor),
  shard - ``dpmesh-shard`` on the same files, per runner mode (in-memory, multi_processing),
and prints images/s and the ratio shard/raw. The page cache is warmed first so both read from memory.

Usage: python benchmarks/shard_throughput.py [--images 2000] [--workers N] [--cache .bench]
"""

import argparse
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import ShardJobConfig, compose_config
from pipelines.logging_setup import configure_logging
from pipelines.shard_images import run
from tests.fakes.corpus import make_images, write_corpus


def build_corpus(root: Path, n: int) -> list[Path]:
    """``n`` seeded 640x480 JPEGs under ``root`` (reused if already there)."""
    stamp = root / f".complete-{n}"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        for start in range(0, n, 200):
            batch = make_images(min(200, n - start), seed=start, width=640, height=480, persons=(1, 4))
            for i, image in enumerate(batch):
                image.file_name = f"img_{start + i:06d}.jpg"
            write_corpus(str(root), batch)
        stamp.touch()
    return sorted(p for p in root.iterdir() if p.suffix == ".jpg")


def raw_read_and_hash(files: list[Path]) -> float:
    """Seconds for one pass reading and hashing every file in a plain loop."""
    started = time.perf_counter()
    for path in files:
        hashlib.sha1(path.read_bytes()).hexdigest()
    return time.perf_counter() - started


def shard_once(corpus: Path, output: Path, overrides: list[str]) -> tuple[float, dict]:
    cfg = compose_config(
        "dpmesh_shard",
        [f"input.images={corpus}", f"output={output}", "overwrite=true", "log_level=WARNING", *overrides],
        ShardJobConfig,
    )
    started = time.perf_counter()
    manifest = run(cfg)
    return time.perf_counter() - started, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path(".bench"))
    args = parser.parse_args()
    configure_logging("WARNING")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    corpus = args.cache / f"corpus-{args.images}"
    files = build_corpus(corpus, args.images)
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    raw_read_and_hash(files)  # warm the page cache
    raw_s = min(raw_read_and_hash(files) for _ in range(3))
    raw_rate = len(files) / raw_s
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"corpus: {len(files)} JPEGs 640x480, {total_mb:.0f} MB ({total_mb / len(files) * 1000:.0f} kB each)")
    print(f"{'mode':<28}{'seconds':>9}{'images/s':>11}{'ratio':>8}")
    print(f"{'raw read+sha1 (1 core)':<28}{raw_s:>9.2f}{raw_rate:>11.0f}{1.0:>8.2f}")
    modes = {
        "shard in_memory": [],
        "shard in_memory header-only": ["shard.validate=header"],
        f"shard multi_processing x{args.workers}": [
            "runner.running_mode=multi_processing",
            f"runner.num_workers={args.workers}",
        ],
    }
    for name, overrides in modes.items():
        seconds, manifest = shard_once(corpus, args.cache / "shards", overrides)
        assert manifest["counts"]["images_sharded"] == len(files), manifest["counts"]
        rate = len(files) / seconds
        print(f"{name:<28}{seconds:>9.2f}{rate:>11.0f}{rate / raw_rate:>8.2f}")


if __name__ == "__main__":
    main()
