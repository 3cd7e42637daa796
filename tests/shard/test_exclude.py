"""The benchmark overlap guard's precomputed hash lists (``exclude.hashes``): text and Parquet, as a shard index
holds the hashes, and the matcher that finds a corpus image's benchmark copy."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import ConfigError, ShardJobConfig, compose_config
from pipelines.shard.exclude import BenchmarkMatcher, load_benchmark
from pipelines.shard.perceptual_hash import perceptual_hash, to_bytes, to_hex
from pipelines.storage import Storage
from tests.fakes.near_duplicates import near_duplicate, varied_jpegs


def _config(tmp_path: Path, *overrides: str) -> ShardJobConfig:
    base = [f"input.images={tmp_path / 'images'}", f"output={tmp_path / 'out'}"]
    return compose_config("dpmesh_shard", [*base, *overrides], ShardJobConfig)


@pytest.fixture(scope="module")
def scenes() -> list[bytes]:
    return varied_jpegs(4, seed=21)


def _load(tmp_path: Path, hashes: Path) -> BenchmarkMatcher:
    cfg = _config(tmp_path, f"exclude.hashes={hashes}")
    benchmark = load_benchmark(Storage(cfg.storage), cfg)
    assert benchmark is not None
    return BenchmarkMatcher(benchmark)


def test_a_text_list_finds_near_copies_of_its_hashes(tmp_path: Path, scenes: list[bytes]) -> None:
    listed = tmp_path / "bench.txt"
    listed.write_text("# benchmark\n" + "\n".join(to_hex(perceptual_hash(d)) + "  # an image" for d in scenes[:2]))
    matcher = _load(tmp_path, listed)
    copy = near_duplicate(scenes[1], np.random.default_rng(0))
    found = matcher.match(hashlib.sha1(copy).hexdigest(), perceptual_hash(copy))
    assert found is not None
    assert "near duplicate of benchmark image 'line 3'" in found
    assert matcher.match("0" * 40, perceptual_hash(scenes[3])) is None, "another scene is not a copy"


def test_a_list_of_hashes_of_another_length_is_refused(tmp_path: Path, scenes: list[bytes]) -> None:
    listed = tmp_path / "bench.txt"
    listed.write_text(f"{perceptual_hash(scenes[0]) >> 64:016x}\n")  # 16 digits: the 64-bit hash of version 1
    cfg = _config(tmp_path, f"exclude.hashes={listed}")
    with pytest.raises(ConfigError, match="has 16 hex digits, a colour-dct-v2 hash 32"):
        load_benchmark(Storage(cfg.storage), cfg)


def test_a_parquet_list_reads_hashes_as_a_shard_index_holds_them(tmp_path: Path, scenes: list[bytes]) -> None:
    table = pa.table({
        "phash": pa.array([to_bytes(perceptual_hash(d)) for d in scenes[:2]] + [None], pa.binary(16)),
        "sha1": [hashlib.sha1(d).hexdigest() for d in scenes[:3]],
        "name": ["val/0.jpg", "val/1.jpg", "val/2.jpg"],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "bench.parquet")
    matcher = _load(tmp_path, tmp_path / "bench.parquet")
    same_bytes = matcher.match(hashlib.sha1(scenes[2]).hexdigest(), perceptual_hash(scenes[2]))
    assert same_bytes == "same bytes as benchmark image 'val/2.jpg'", "a hashless row still matches by sha1"
    copy = near_duplicate(scenes[0], np.random.default_rng(1))
    found = matcher.match(hashlib.sha1(copy).hexdigest(), perceptual_hash(copy))
    assert found is not None
    assert "'val/0.jpg'" in found
