"""The sharding benchmark runs end to end on a tiny corpus and prints its machine-readable last line.

Figures from a corpus this small mean nothing (a run's fixed cost dominates); this checks that the benchmark the
README quotes still runs against the current job and reports every mode it claims to."""

import re
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"ratio_header=(\d+\.\d+) ratio_decode=(\d+\.\d+) images_per_s_header=(\d+) images_per_s_decode=(\d+)"
)


@pytest.mark.slow  # ~50 s: eight fresh dpmesh-shard processes, two of them multi_processing
def test_shard_benchmark_prints_every_mode_and_its_last_line(tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/shard_throughput.py", "--images", "10", "--repeats", "1"]
    result = subprocess.run([*command, "--cache", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert all(float(value) > 0 for value in match.groups())
    table = "\n".join(lines)
    for mode in ("validate=header", "validate=decode", "multi_processing x", "floor: raw + decode check"):
        assert mode in table, mode
    assert re.search(r"multi-process scaling, .*\(decode, 4x corpus\): \d+\.\d+", table)
    assert re.search(r"peak RSS 4x / 1x corpus: \d+\.\d+", table)
