"""Sharding throughput: ``dpmesh-shard`` against a raw loop doing the minimal work any sharder must do.

On the same seeded corpora of 640x480 JPEGs (generated once, cached; ``--images`` of them, and 4x as many), in
one run, it measures:

  raw     a plain Python loop, one core: read each file, sha1 it, parse its image header, append it to a tar
          on the same disk (a tar per ``shard.max_samples`` images, fsynced like the job's);
  floor   the same loop plus the pixel check of ``shard.validate=decode`` (the job's own ``probe_image``): what
          decode mode cannot go below;
  header  ``dpmesh-shard`` in_memory (one core), ``shard.validate=header`` (the default);
  decode  ``dpmesh-shard`` in_memory, ``shard.validate=decode``;
  mp      ``dpmesh-shard`` multi_processing with ``--workers`` processes, in both modes, on the 4x corpus only
          (its worker processes cost seconds to start, which the small corpus cannot amortise): the scaling;

and the peak RSS of a fresh ``dpmesh-shard`` process on both corpora. Every ``dpmesh-shard`` figure is taken in
a fresh process, best of ``--repeats``, and counts the whole run (launch checks, pipeline start, listing,
writing, manifest). A run has a fixed cost (building and starting the pipeline, about a second here) that a
small corpus cannot amortise, so the table shows both corpora and the marginal cost per image between them.
Its last line is machine-readable and is taken on the 4x corpus::

  ratio_header=<x> ratio_decode=<y> images_per_s_header=<a> images_per_s_decode=<b>

with wall-clock images/s of the in_memory runs (one worker) and ratios against the raw loop's wall-clock
images/s on the same files. The table also gives images per CPU-second of each process (user + system, all
threads and child processes), which depends less on what else the machine runs. Usage:
  python benchmarks/shard_throughput.py [--images 2000] [--workers N] [--cache DIR] [--repeats 2]
"""

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_TAR_SAMPLES = 1000  # the job's default shard.max_samples


def build_corpus(root: Path, n: int, seed_offset: int = 0) -> list[Path]:
    """``n`` seeded 640x480 JPEGs under ``root`` (reused if already there)."""
    from tests.fakes.corpus import make_images, write_corpus

    stamp = root / f".complete-{n}"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        for start in range(0, n, 200):
            batch = make_images(min(200, n - start), seed=seed_offset + start, width=640, height=480, persons=(1, 4))
            for i, image in enumerate(batch):
                image.file_name = f"img_{start + i:06d}.jpg"
            write_corpus(str(root), batch)
        stamp.touch()
    return sorted(p for p in root.iterdir() if p.suffix == ".jpg")


def raw_loop(files: list[Path], out_dir: Path, decode: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of the minimal sharder: read, sha1, parse the header, append to a tar on the same disk;
    with ``decode``, also the pixel check of ``shard.validate=decode``."""
    from PIL import Image

    from pipelines.shard.probe import probe_image

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    tar = tar_file = None
    for i, path in enumerate(files):
        if i % _TAR_SAMPLES == 0:
            if tar is not None:
                _close(tar, tar_file)
            tar_file = open(out_dir / f"raw-{i // _TAR_SAMPLES:06d}.tar", "wb")  # noqa: SIM115 - closed in _close
            tar = tarfile.open(fileobj=tar_file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        data = path.read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if decode:
            probe_image(data, max_image_pixels=100_000_000, decode=True)
        else:
            with Image.open(io.BytesIO(data)) as image:
                _ = image.size, image.format
        info = tarfile.TarInfo(f"{digest}.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        _close(tar, tar_file)
    return time.perf_counter() - started, _cpu_seconds() - cpu_started


def _close(tar: tarfile.TarFile, tar_file: io.BufferedWriter) -> None:
    tar.close()
    tar_file.flush()
    os.fsync(tar_file.fileno())
    tar_file.close()


def child(corpus: str, output: str, overrides: list[str]) -> None:
    """One ``dpmesh-shard`` run in this (fresh) process; prints seconds, images and peak RSS as JSON."""
    import logging

    from pipelines.config import ShardJobConfig, compose_config
    from pipelines.logging_setup import configure_logging
    from pipelines.shard.job import run

    configure_logging("WARNING")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    cfg = compose_config(
        "dpmesh_shard",
        [f"input.images={corpus}", f"output={output}", "overwrite=true", "log_level=WARNING", *overrides],
        ShardJobConfig,
    )
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    manifest = run(cfg)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    images = manifest["counts"]["images_sharded"]
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "images": images, "rss_mib": rss_mib}))


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children, every thread counted."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def shard_in_fresh_process(corpus: Path, output: Path, overrides: list[str]) -> dict:
    shutil.rmtree(output, ignore_errors=True)  # as the raw loop: removing the previous output is not timed
    command = [sys.executable, __file__, "--child", str(corpus), str(output), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"dpmesh-shard failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def best_raw(files: list[Path], out_dir: Path, decode: bool = False) -> dict:
    raw_loop(files, out_dir, decode)  # warm the page cache and the code paths
    seconds, cpu_s = min((raw_loop(files, out_dir, decode) for _ in range(3)), key=lambda r: r[0])
    return {"seconds": seconds, "cpu_s": cpu_s, "images": len(files), "rss_mib": float("nan")}


def best_shard(corpus: Path, output: Path, overrides: list[str], repeats: int, images: int) -> dict:
    runs = [shard_in_fresh_process(corpus, output, overrides) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    assert best["images"] == images, best
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dpmesh-bench")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    small = build_corpus(args.cache / f"corpus-{args.images}", args.images)
    big = build_corpus(args.cache / f"corpus-{4 * args.images}", 4 * args.images, seed_offset=10_000_000)
    corpora = {"1x": small, "4x": big}
    modes = {
        "header": ["shard.validate=header"],
        "decode": ["shard.validate=decode"],
    }
    multi_process = ["runner.running_mode=multi_processing", f"runner.num_workers={args.workers}"]
    modes["mp_header"] = [*modes["header"], *multi_process]
    modes["mp_decode"] = [*modes["decode"], *multi_process]
    rows: dict[tuple[str, str], dict] = {}
    for size, files in corpora.items():
        corpus = files[0].parent
        rows["raw", size] = best_raw(files, args.cache / "raw")
        rows["floor", size] = best_raw(files, args.cache / "raw", decode=True)
        for name, overrides in modes.items():
            if name.startswith("mp_") and size == "1x":
                continue
            rows[name, size] = best_shard(corpus, args.cache / "shards", overrides, args.repeats, len(files))

    labels = {
        "raw": "raw: read+sha1+header+tar append",
        "floor": "floor: raw + decode check",
        "header": "dpmesh-shard in_memory, validate=header",
        "decode": "dpmesh-shard in_memory, validate=decode",
        "mp_header": f"dpmesh-shard multi_processing x{args.workers}, header",
        "mp_decode": f"dpmesh-shard multi_processing x{args.workers}, decode",
    }
    wall = {k: r["images"] / r["seconds"] for k, r in rows.items()}
    per_core = {k: r["images"] / r["cpu_s"] for k, r in rows.items()}
    small_mb = sum(p.stat().st_size for p in small) / 1e6
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"corpora: {len(small)} and {len(big)} JPEGs 640x480, {small_mb / len(small) * 1000:.0f} kB each, "
        "page cache warm"
    )
    print("images/s and ratio: wall clock; per core: images per CPU-second of the process (threads and children)")
    columns = f"{'corpus':>7}{'wall s':>8}{'CPU s':>8}{'images/s':>10}{'per core':>10}{'ratio':>7}{'RSS MiB':>9}"
    print(f"{'mode':<44}{columns}")
    for (name, size), r in rows.items():
        k = (name, size)
        print(
            f"{labels[name]:<44}{size:>7}{r['seconds']:>8.2f}{r['cpu_s']:>8.2f}{wall[k]:>10.0f}{per_core[k]:>10.0f}"
            f"{wall[k] / wall['raw', size]:>7.2f}{r['rss_mib']:>9.0f}"
        )
    extra = len(big) - len(small)
    for name in ("raw", "floor", "header", "decode"):
        marginal = (rows[name, "4x"]["cpu_s"] - rows[name, "1x"]["cpu_s"]) / extra * 1000
        fixed = rows[name, "1x"]["cpu_s"] - marginal * len(small) / 1000
        print(f"marginal CPU per image, {name}: {marginal:.3f} ms (fixed cost of a run: {fixed:.2f} CPU s)")
    print(f"peak RSS 4x / 1x corpus: {rows['header', '4x']['rss_mib'] / rows['header', '1x']['rss_mib']:.2f}")
    for mode in ("header", "decode"):
        scaling = wall[f"mp_{mode}", "4x"] / wall[mode, "4x"]
        print(f"multi-process scaling, wall images/s x{args.workers} / in_memory ({mode}, 4x corpus): {scaling:.2f}")
    ratio_header, ratio_decode = wall["header", "4x"] / wall["raw", "4x"], wall["decode", "4x"] / wall["raw", "4x"]
    print(
        f"ratio_header={ratio_header:.2f} ratio_decode={ratio_decode:.2f} "
        f"images_per_s_header={wall['header', '4x']:.0f} images_per_s_decode={wall['decode', '4x']:.0f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
