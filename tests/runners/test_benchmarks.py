"""Every benchmark the README quotes runs end to end on a tiny input against the current code.

Figures from inputs this small mean nothing (fixed costs dominate). These tests check that each benchmark still
runs, reconciles what it measured and prints the lines the README quotes: a benchmark no test runs breaks silently
(``label_pipeline.py`` did, when labeling's pixel limit became "follow the shard set")."""

import re
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: int = 400) -> list[str]:
    """The stdout lines of ``benchmarks/<script> <args>``; fails the test if it exits non-zero."""
    command = [sys.executable, f"benchmarks/{script}", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


@pytest.mark.slow  # ~50 s: eight fresh dpmesh-shard processes, two of them multi_processing
def test_shard_benchmark_prints_every_mode_and_its_last_line(tmp_path: Path) -> None:
    lines = _run("shard_throughput.py", "--images", "10", "--repeats", "1", "--cache", str(tmp_path))
    last = r"ratio_header=(\d+\.\d+) ratio_decode=(\d+\.\d+) images_per_s_header=(\d+) images_per_s_decode=(\d+)"
    match = re.fullmatch(last, lines[-1])
    assert match, lines[-1]
    assert all(float(value) > 0 for value in match.groups())
    table = "\n".join(lines)
    for mode in ("validate=header", "validate=decode", "multi_processing x", "floor: raw + decode check"):
        assert mode in table, mode
    assert re.search(r"multi-process scaling, .*\(decode, 4x corpus\): \d+\.\d+", table)
    assert re.search(r"peak RSS 4x / 1x corpus: \d+\.\d+", table)


@pytest.mark.slow  # ~40 s: the tiny model alone, crop preparation, the pipeline, and two fresh processes
def test_label_benchmark_runs_the_pipeline_and_reports_flat_memory(tmp_path: Path) -> None:
    lines = _run("label_pipeline.py", "--images", "3", "--cache", str(tmp_path))
    table = "\n".join(lines)
    for step in ("model alone", "crop preparation (1 core)", "pipeline in_memory"):
        assert re.search(rf"^{re.escape(step)}\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+$", table, re.M), step
    assert re.search(r"ratio 4x/1x: \d+\.\d+ \(flat = 1\.00\)", table)


@pytest.mark.slow  # ~20 s: tiny random RT-DETR and ViTPose on a few images
def test_detection_benchmark_runs_the_detection_stage(tmp_path: Path) -> None:
    lines = _run("detection_throughput.py", "--images", "4", "--batch-size", "2")
    table = "\n".join(lines)
    assert re.search(r"^\s+images\s+4\s+persons\s+\d+$", table, re.M), table
    for rate in ("images/s", "persons/s"):
        match = re.search(rf"^\s+{rate}\s+(\d+\.\d+)$", table, re.M)
        assert match, (rate, table)
        assert float(match.group(1)) > 0


@pytest.mark.slow  # ~30 s: SeaweedFS, a shard set of 50 placeholder tars and their markers
def test_planning_benchmark_prints_its_last_line() -> None:
    lines = _run("label_planning.py", "--shards", "50")
    match = re.fullmatch(r"shards=50 plan_s=\S+ plan_cold_s=\S+ sequential_s=\S+ speedup=\S+", lines[-1])
    assert match, lines[-1]


def test_crop_prep_benchmark_prints_its_last_line() -> None:
    lines = _run("crop_prep.py", "--images", "4", "--repeats", "1", "--pipeline-images", "6", "--model-s", "0.05")
    last = (
        r"ratio_fast_vs_reference=(\d+\.\d+) fast_vs_decode_floor=(\d+\.\d+) crops_per_cpu_s_fast=(\d+) "
        r"crops_per_cpu_s_reference=(\d+) fast_crop_psnr_db=(\d+\.\d+|inf) pipeline_vs_model_only=(\d+\.\d+) "
        r"ratio_fast_vs_reference_mode=(\d+\.\d+) crops_per_cpu_s_reference_mode=(\d+)"
    )
    match = re.fullmatch(last, lines[-1])
    assert match, lines[-1]
    assert all(float(value) > 0 for value in match.groups())


@pytest.mark.slow  # ~60 s: 300 generated images, four fresh dpmesh-shard processes, and two labelings
def test_append_benchmark_groups_and_labels_the_new_persons_only(tmp_path: Path) -> None:
    lines = _run("append.py", "--images", "300", "--repeats", "1", "--cache", str(tmp_path))
    match = re.fullmatch(r"recall=(\d\.\d+) precision=(\d\.\d+) append_vs_full=(\d+\.\d+)", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0.9, "the 30 planted near-duplicates are found"
    assert float(match.group(2)) > 0.9
    labeling = next(line for line in lines if line.startswith("labeling:"))
    after, new = re.search(r"after appending 2 of 202 images, (\d+) \(the new images hold (\d+)\)", labeling).groups()
    assert after == new
