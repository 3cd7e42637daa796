"""A killed dpmesh-shard run resumes shard by shard: the rerun (without overwrite) writes only the missing shards,
leaves finished ones untouched, removes what the kill left behind, and ends byte-identical to an uninterrupted run."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.config import ConfigError, ShardJobConfig, compose_config
from pipelines.shard.job import run
from tests.fakes.corpus import broken_files, make_images, write_coco, write_corpus
from tests.fakes.kill import kill_after_write


# The killed run is slowed per shard so that the kill lands part-way whatever the machine's speed.
_SLOW_RUN = (
    "import sys, time; from pipelines.shard import write; slow = write.WriteShardsFn._write; "
    "write.WriteShardsFn._write = lambda self, shard: (time.sleep(0.4), slow(self, shard))[1]; "
    "from pipelines.shard.job import main; sys.argv[0] = 'dpmesh-shard'; main()"
)


def _args(corpus: Path, output: Path) -> list[str]:
    return [
        f"input.images={corpus / 'images'}",
        f"input.annotations={corpus / 'coco.json'}",
        f"output={output}",
        "shard.max_samples=3",
        "log_level=WARNING",
    ]


def _config(corpus: Path, output: Path, *more: str) -> ShardJobConfig:
    return compose_config("dpmesh_shard", [*_args(corpus, output), *more], ShardJobConfig)


def _digests(output: Path) -> dict[str, str]:
    """sha1 of every file of the shard set (markers included); the manifest without the output path it records."""
    files = {p.relative_to(output).as_posix(): p for p in output.rglob("*") if p.is_file()}
    digests = {name: hashlib.sha1(path.read_bytes()).hexdigest() for name, path in files.items()}
    manifest = json.loads((output / "_manifest.json").read_text())
    manifest["config"].pop("output")
    manifest.pop("elapsed_s", None)
    digests["_manifest.json"] = hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    images = make_images(30, seed=21, width=96, height=64, formats=("JPEG", "PNG"))
    write_corpus(str(root / "images"), images, extra=broken_files(images[0].data))
    write_coco(str(root / "coco.json"), images[:20])
    return root


def test_a_killed_run_resumes_without_rewriting_finished_shards(corpus: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    expected = run(_config(corpus, reference))
    total = len(expected["shards"])
    assert total >= 8

    output = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_RUN, *_args(corpus, output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while len(list((output / "_shards").glob("*.json"))) < 2:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (output / "_manifest.json").exists()
    done = sorted(p.stem for p in (output / "_shards").glob("*.json"))
    assert 2 <= len(done) < total, "the kill must land part-way"
    finished = {p: p.stat().st_mtime_ns for p in output.iterdir() if p.is_file() and p.stem in done}
    finished |= {p: p.stat().st_mtime_ns for p in (output / "_shards").iterdir()}
    (output / ".storage-tmp-shard-000099.tar-abc").write_bytes(b"half a tar")  # what a kill mid-write leaves
    stray = [output / "shard-009999.tar", output / "shard-009999.parquet", output / "_shards" / "shard-009999.json"]
    for path in stray:  # a shard of an earlier plan (the corpus changed since): not part of this set
        path.write_bytes(b"{}")

    resumed = run(_config(corpus, output))  # no overwrite=true

    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished shards are not rewritten"
    assert not list(output.glob(".storage-tmp-*")), "the killed run's temporary files are removed"
    assert not any(path.exists() for path in stray), "shards no longer planned are removed"
    assert resumed["counts"] == expected["counts"]
    assert _digests(output) == _digests(reference), "same bytes as an uninterrupted run: nothing missing or doubled"


def test_a_finished_set_is_refused_and_another_configs_shards_too(corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "set"
    run(_config(corpus, output))
    with pytest.raises(ConfigError, match="complete shard set"):
        run(_config(corpus, output))
    (output / "_manifest.json").unlink()  # as if killed just before the manifest: resumable, with this config only
    with pytest.raises(ConfigError, match="shards of another run"):
        run(_config(corpus, output, "shard.fill_target=0.5"))
    assert run(_config(corpus, output))["counts"]["reconciled"]


# dpmesh-shard, killed right after its first write whose URI matches argv[1] (tests/fakes/kill.py).
_KILL_AFTER_WRITE = kill_after_write("sys.argv[0] = 'dpmesh-shard'\nfrom pipelines.shard.job import main; main()\n")
_BOUNDARIES = {
    "intent": r"/_intent\.json$",
    "tar": r"/shard-\d+\.tar$",
    "index": r"/shard-\d+\.parquet$",
    "marker": r"/_shards/shard-\d+\.json$",
    "errors": r"/_errors\.parquet$",
    "manifest": r"/_manifest\.json$",
}


@pytest.fixture(scope="module")
def uninterrupted(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    reference = tmp_path_factory.mktemp("uninterrupted") / "shards"
    run(_config(corpus, reference))
    return _digests(reference)


@pytest.mark.parametrize("boundary", list(_BOUNDARIES))
def test_a_kill_at_any_write_boundary_resumes_to_the_same_bytes(
    corpus: Path, uninterrupted: dict[str, str], tmp_path: Path, boundary: str
) -> None:
    output = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_WRITE, _BOUNDARIES[boundary], *_args(corpus, output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, f"the run was not killed after its first {boundary} write"
    if (output / "_manifest.json").exists():  # killed after the last write: the set is complete, a rerun refused
        with pytest.raises(ConfigError, match="complete shard set"):
            run(_config(corpus, output))
    else:
        run(_config(corpus, output))  # no overwrite=true: the run's own unfinished work is taken up
    assert _digests(output) == uninterrupted
    assert not list(output.rglob(".storage-tmp-*")), "no temporary file is left"
