"""dpmesh-shard mode=append: a grown corpus gets a new generation; finished shards are never rewritten; changed,
removed and benchmark-overlapping images are recorded; near-duplicates are grouped across generations."""

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.common.shard_set import NEAR_DUPLICATES_NAME, retired_keys_by_shard
from pipelines.config import ConfigError, ShardJobConfig, compose_config
from pipelines.shard.job import run
from pipelines.shard.keys import make_key
from pipelines.storage import Storage
from tests.fakes.near_duplicates import near_duplicate, varied_jpegs


def _config(images: str, output: str, *more: str) -> ShardJobConfig:
    overrides = [f"input.images={images}", f"output={output}", "shard.max_samples=8", "log_level=WARNING", *more]
    return compose_config("dpmesh_shard", overrides, ShardJobConfig)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _finished_files(output: Path) -> dict[str, tuple[int, str]]:
    """``(inode, sha1)`` of every shard tar, index and marker: what must stay untouched."""
    paths = [*output.glob("shard-*"), *(output / "_shards").glob("*.json")]
    return {str(p.relative_to(output)): (p.stat().st_ino, hashlib.sha1(p.read_bytes()).hexdigest()) for p in paths}


class Corpus:
    """A corpus in two folders, grown between generations, and the planted facts the tests check."""

    def __init__(self, root: Path) -> None:
        self.images = root / "images"
        self.benchmark = root / "benchmark"
        scenes = varied_jpegs(64, seed=3)
        self.first = {f"{'ab'[i % 2]}/img_{i:03d}.jpg": scenes[i] for i in range(40)}
        self.first["a/broken.jpg"] = scenes[0][: len(scenes[0]) // 2]  # truncated: reported in both generations
        rng = np.random.default_rng(11)
        self.added = {f"c/new_{i:03d}.jpg": scenes[40 + i] for i in range(10)}
        self.changed = {
            name: scenes[50 + i] for i, name in enumerate(["a/img_000.jpg", "b/img_001.jpg", "a/img_004.jpg"])
        }
        self.removed = ["b/img_003.jpg", "a/img_006.jpg", "b/img_007.jpg", "a/img_008.jpg"]
        # near-duplicates of gen-0 images (kept, unchanged) planted as new files: grouped across generations
        self.near = {
            f"c/near_{i}.jpg": (src, near_duplicate(self.first[src], rng))
            for i, src in enumerate(["a/img_010.jpg", "b/img_011.jpg", "a/img_012.jpg"])
        }
        # benchmark images: one copied byte for byte into the corpus, one planted as a near copy
        self.bench = {"bench_0.jpg": scenes[60], "bench_1.jpg": scenes[61]}
        self.overlapping = {"c/copy_of_bench.jpg": scenes[60], "c/near_bench.jpg": near_duplicate(scenes[61], rng)}
        _write(self.benchmark, self.bench)
        _write(self.images, self.first)

    def grow(self) -> None:
        _write(self.images, {**self.added, **self.changed, **{n: d for n, (_, d) in self.near.items()}})
        _write(self.images, self.overlapping)
        for name in self.removed:
            (self.images / name).unlink()


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return Corpus(tmp_path)


def _check_generation(
    manifest: dict[str, Any], corpus: Corpus, first: dict[str, Any], output: str, storage: Storage
) -> None:
    generations = manifest["generations"]
    assert [g["generation"] for g in generations] == [0, 1]
    assert [g["mode"] for g in generations] == ["create", "append"]
    g0, g1 = generations
    assert g1["first_shard"] == g0["end_shard"] == 1 + max(int(s.rsplit("-", 1)[1]) for s in g0["shards"])
    assert all(int(s.rsplit("-", 1)[1]) >= g1["first_shard"] for s in g1["shards"])
    assert g0["shards"] == first["generations"][0]["shards"]
    assert set(s["shard"] for s in manifest["shards"]) == set(g0["shards"]) | set(g1["shards"])

    c = manifest["counts"]
    new_files = len(corpus.added) + len(corpus.near) + len(corpus.overlapping) + 1  # + the broken file, retried
    assert (c["new"], c["changed"], c["removed"], c["absent_kept"]) == (new_files, 3, 4, 0)
    assert c["unchanged"] == 40 - 3 - 4
    assert c["files_in"] == c["unchanged"] + c["new"] + c["changed"]
    assert c["benchmark_overlap"] == 2
    assert c["errors_by_reason"] == {"benchmark_overlap": 2, "corrupt_image": 1}
    assert c["images_sharded"] == new_files + 3 - 3  # less the two benchmark copies and the broken file
    assert c["reconciled"] is True
    assert manifest["live"]["samples"] == first["live"]["samples"] - 7 + c["images_sharded"]

    retired = pq.read_table(io.BytesIO(storage.read_bytes(f"{output}/{g1['retired_file']}"))).to_pylist()
    assert sorted(r["key"] for r in retired if r["reason"] == "superseded") == sorted(map(make_key, corpus.changed))
    assert sorted(r["key"] for r in retired if r["reason"] == "removed") == sorted(map(make_key, corpus.removed))
    assert all(r["shard"] in g0["shards"] and r["generation"] == 1 for r in retired)
    assert g1["retired"] == {"superseded": 3, "removed": 4}

    errors = pq.read_table(io.BytesIO(storage.read_bytes(f"{output}/{g1['errors_file']}"))).to_pylist()
    overlap = {e["key"]: e["error"] for e in errors if e["reason"] == "benchmark_overlap"}
    assert set(overlap) == set(map(make_key, corpus.overlapping))
    assert "same bytes as benchmark image 'bench_0.jpg'" in overlap[make_key("c/copy_of_bench.jpg")]
    assert "near duplicate of benchmark image 'bench_1.jpg'" in overlap[make_key("c/near_bench.jpg")]
    assert manifest["exclude"]["images"] == 2

    # What is live: every index row of the listed shards less the retired ones; one shard per key.
    dead = retired_keys_by_shard(storage, output, manifest)
    live: dict[str, str] = {}
    for shard in manifest["shards"]:
        keys = pq.read_table(io.BytesIO(storage.read_bytes(f"{output}/{shard['shard']}.parquet"))).column("key")
        for key in keys.to_pylist():
            if key not in dead.get(shard["shard"], frozenset()):
                assert key not in live, f"{key} is live twice"
                live[key] = shard["shard"]
    assert len(live) == manifest["live"]["samples"]
    for name in corpus.changed:
        assert live[make_key(name)] in g1["shards"], "a changed file's live sample is its new version"
    assert not any(make_key(name) in live for name in corpus.removed)

    groups = pq.read_table(io.BytesIO(storage.read_bytes(f"{output}/{NEAR_DUPLICATES_NAME}"))).to_pylist()
    group_of = {row["key"]: row["group"] for row in groups}
    for near_name, (source, _) in corpus.near.items():
        assert group_of[make_key(near_name)] == group_of[make_key(source)], f"{near_name} not grouped with {source}"
        assert live[make_key(source)] in g0["shards"]
        assert live[make_key(near_name)] in g1["shards"]
    assert set(group_of) <= set(live), "only live samples are grouped"
    assert manifest["near_duplicates"]["groups"] == len(set(group_of.values())) >= 3


def test_append_writes_a_generation_and_never_touches_finished_shards(corpus: Corpus, tmp_path: Path) -> None:
    output = tmp_path / "shards"
    first = run(_config(str(corpus.images), str(output)))
    assert first["counts"]["reconciled"]
    assert first["generations"][0]["end_shard"] >= 4
    before = _finished_files(output)
    corpus.grow()
    append = ["mode=append", "input.record_removals=true", f"exclude.images={corpus.benchmark}"]

    manifest = run(_config(str(corpus.images), str(output), *append))

    after = _finished_files(output)
    assert {name: after[name] for name in before} == before, "finished tars, indexes and markers: same inode, bytes"
    _check_generation(manifest, corpus, first, str(output), Storage(_config("x", "y").storage))
    written = json.loads((output / "_manifest.json").read_text())
    assert written["generations"] == manifest["generations"]

    # Nothing new: the set is left as it is.
    snapshot = {p: p.read_bytes() for p in output.rglob("*") if p.is_file() and p.name != "_intent.json"}
    again = run(_config(str(corpus.images), str(output), *append))
    assert len(again["generations"]) == 2
    assert {p: p.read_bytes() for p in snapshot} == snapshot


def test_append_refuses_what_it_cannot_grow(corpus: Corpus, tmp_path: Path) -> None:
    output = tmp_path / "shards"
    with pytest.raises(ConfigError, match="mode=append grows a finished shard set"):
        run(_config(str(corpus.images), str(output), "mode=append"))
    run(_config(str(corpus.images), str(output)))
    with pytest.raises(ConfigError, match=r"shard.max_samples=9 differs from the set's 8"):
        run(_config(str(corpus.images), str(output), "mode=append", "shard.max_samples=9"))
    with pytest.raises(ConfigError, match=r"complete shard set.*mode=append"):
        run(_config(str(corpus.images), str(output)))
    manifest = json.loads((output / "_manifest.json").read_text())
    manifest["near_duplicates"]["hash"] = "colour-dct-v1"  # a set hashed by another version: hashes not comparable
    (output / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"perceptual hash colour-dct-v1, this version computes colour-dct-v2"):
        run(_config(str(corpus.images), str(output), "mode=append"))


def _groups(output: Path) -> dict[str, str]:
    rows = pq.read_table(output / NEAR_DUPLICATES_NAME).to_pylist()
    return {row["key"]: row["group"] for row in rows}


@pytest.mark.parametrize("case", ["builds_on_groups", "other_threshold", "groups_file_gone"])
def test_an_append_groups_near_duplicates_as_sharding_its_whole_corpus_does(
    corpus: Corpus, tmp_path: Path, case: str
) -> None:
    """The append looks up only its new samples, and compares the kept members of the set's groups within each (at
    another threshold, or with the set's groups file gone, it looks every sample up): its groups are those of a new
    set sharded from the grown corpus. The first set has groups of its own, one loses its original and one a member
    that changes into a copy of another image."""
    rng = np.random.default_rng(5)
    originals = {name: corpus.first[name] for name in ("a/img_020.jpg", "b/img_021.jpg", "a/img_022.jpg")}
    planted = {
        "a/copy_020.jpg": near_duplicate(originals["a/img_020.jpg"], rng),
        "b/copy_021.jpg": near_duplicate(originals["b/img_021.jpg"], rng),
        "b/copy2_021.jpg": near_duplicate(originals["b/img_021.jpg"], rng),
    }
    _write(corpus.images, planted)
    output = tmp_path / "shards"
    run(_config(str(corpus.images), str(output)))
    assert {make_key(n) for n in planted} <= set(_groups(output)), "the first set has groups of its own"
    corpus.grow()
    (corpus.images / "b/img_021.jpg").unlink()  # the copies stay, grouped by each other or not at all
    _write(corpus.images, {"a/copy_020.jpg": near_duplicate(originals["a/img_022.jpg"], rng)})  # changes group
    more = ["near_duplicates.threshold=16"] if case == "other_threshold" else []
    if case == "groups_file_gone":
        (output / NEAR_DUPLICATES_NAME).unlink()

    run(_config(str(corpus.images), str(output), "mode=append", "input.record_removals=true", *more))
    run(_config(str(corpus.images), str(tmp_path / "whole"), "input.record_removals=true", *more))

    appended, whole = _groups(output), _groups(tmp_path / "whole")
    assert appended == whole
    assert appended[make_key("a/copy_020.jpg")] == appended[make_key("a/img_022.jpg")]
    assert appended.get(make_key("a/img_020.jpg")) != appended[make_key("a/copy_020.jpg")], "it left its group"


def test_without_record_removals_gone_files_stay_live(corpus: Corpus, tmp_path: Path) -> None:
    output = tmp_path / "shards"
    first = run(_config(str(corpus.images), str(output)))
    for name in corpus.removed:
        (corpus.images / name).unlink()
    manifest = run(_config(str(corpus.images), str(output), "mode=append"))
    manifest.pop("elapsed_s"), first.pop("elapsed_s")
    assert manifest == first, "nothing retired, nothing new: no generation"


@pytest.mark.s3
def test_append_on_s3(corpus: Corpus, s3_bucket: str, s3_server: Any) -> None:
    storage_overrides = [
        "storage=s3",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
    ]
    images, output, bench = f"{s3_bucket}/corpus", f"{s3_bucket}/shards", f"{s3_bucket}/benchmark"
    storage = Storage(_config(images, output, *storage_overrides).storage)

    def upload() -> None:
        for path in corpus.images.rglob("*"):
            if path.is_file():
                storage.write_bytes(f"{images}/{path.relative_to(corpus.images)}", path.read_bytes())

    upload()
    for path in corpus.benchmark.iterdir():
        storage.write_bytes(f"{bench}/{path.name}", path.read_bytes())
    first = run(_config(images, output, *storage_overrides))
    finished = {
        o.uri: storage.read_bytes(o.uri) for o in storage.list(output) if "/shard-" in o.uri or "/_shards/" in o.uri
    }
    corpus.grow()
    for name in corpus.removed:
        storage.delete(f"{images}/{name}")
    upload()

    manifest = run(
        _config(
            images, output, *storage_overrides, "mode=append", "input.record_removals=true", f"exclude.images={bench}"
        )
    )

    assert {uri: storage.read_bytes(uri) for uri in finished} == finished, "finished shards keep their bytes"
    _check_generation(manifest, corpus, first, output, storage)
