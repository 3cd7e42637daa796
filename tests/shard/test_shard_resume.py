"""A killed dpmesh-shard run resumes shard by shard: the rerun (without overwrite) writes only the missing shards,
leaves finished ones untouched, removes what the kill left behind, and ends byte-identical to an uninterrupted run."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import ConfigError, ShardJobConfig, compose_config
from pipelines.shard.job import run
from tests.fakes.corpus import Corpus
from tests.fakes.digests import identities, shard_set_digests
from tests.fakes.kill import kill_after_write
from tests.fakes.writes import recorded_writes


_ENTRY = "sys.argv[0] = 'dpmesh-shard'\nfrom pipelines.shard.job import main; main()\n"
_MARKER = r"/_shards/shard-\d+\.json$"


def _args(corpus: Corpus, output: Path) -> list[str]:
    return [
        f"input.images={corpus.images}",
        f"input.annotations={corpus.annotations}",
        f"output={output}",
        "shard.max_samples=3",
        "log_level=WARNING",
    ]


def _config(corpus: Corpus, output: Path, *more: str) -> ShardJobConfig:
    return compose_config("dpmesh_shard", [*_args(corpus, output), *more], ShardJobConfig)


def _digests(output: Path) -> dict[str, str]:
    """sha1 of every file of the shard set (markers and temporaries included), the manifest without its output path."""
    return shard_set_digests(output, "**")


@pytest.fixture(scope="module")
def uninterrupted(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict]:
    """The digests and manifest of an uninterrupted run, which every resumed run must end equal to."""
    reference = tmp_path_factory.mktemp("uninterrupted") / "shards"
    manifest = run(_config(corpus, reference))
    return _digests(reference), manifest


def test_a_killed_run_resumes_without_rewriting_finished_shards(
    corpus: Corpus, uninterrupted: tuple[dict[str, str], dict], tmp_path: Path
) -> None:
    expected_digests, expected = uninterrupted
    total = len(expected["shards"])
    assert total >= 8

    output = tmp_path / "killed"
    # Killed right after its second shard marker (tests/fakes/kill.py): part-way by construction, not by timing.
    process = subprocess.run(
        [sys.executable, "-c", kill_after_write(_ENTRY, count=2), _MARKER, *_args(corpus, output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, "the run was not killed after its second marker"
    assert not (output / "_manifest.json").exists()
    done = sorted(p.stem for p in (output / "_shards").glob("*.json"))
    assert 2 <= len(done) < total, "the kill lands part-way"
    finished = [p for p in output.iterdir() if p.is_file() and p.stem in done]
    finished += list((output / "_shards").iterdir())
    before = identities(finished)
    (output / ".storage-tmp-shard-000099.tar-abc").write_bytes(b"half a tar")  # what a kill mid-write leaves
    stray = [output / "shard-009999.tar", output / "shard-009999.parquet", output / "_shards" / "shard-009999.json"]
    for path in stray:  # a shard of an earlier plan (the corpus changed since): not part of this set
        path.write_bytes(b"{}")

    with recorded_writes() as writes:
        resumed = run(_config(corpus, output))  # no overwrite=true

    finished_names = [p.relative_to(output).as_posix() for p in finished]
    assert writes.touching(finished_names, str(output)) == [], "finished shards are neither rewritten nor deleted"
    assert writes.written, "the missing shards are written"
    assert identities(finished) == before, "finished shards are the same files, not rewritten copies"
    assert not list(output.glob(".storage-tmp-*")), "the killed run's temporary files are removed"
    assert not any(path.exists() for path in stray), "shards no longer planned are removed"
    assert resumed["counts"] == expected["counts"]
    assert _digests(output) == expected_digests, "same bytes as an uninterrupted run: nothing missing or doubled"


def test_a_finished_set_is_refused_and_another_configs_shards_too(corpus: Corpus, tmp_path: Path) -> None:
    output = tmp_path / "set"
    run(_config(corpus, output))
    with pytest.raises(ConfigError, match="complete shard set"):
        run(_config(corpus, output))
    (output / "_manifest.json").unlink()  # as if killed just before the manifest: resumable, with this config only
    with pytest.raises(ConfigError, match="shards of another run"):
        run(_config(corpus, output, "shard.fill_target=0.5"))
    assert run(_config(corpus, output))["counts"]["reconciled"]


# dpmesh-shard, killed right after its first write whose URI matches argv[1] (tests/fakes/kill.py).
_KILL_AFTER_WRITE = kill_after_write(_ENTRY)
_BOUNDARIES = {
    "intent": r"/_intent\.json$",
    "tar": r"/shard-\d+\.tar$",
    "index": r"/shard-\d+\.parquet$",
    "marker": _MARKER,
    "errors": r"/_errors\.parquet$",
    "manifest": r"/_manifest\.json$",
}


@pytest.mark.parametrize("boundary", list(_BOUNDARIES))
def test_a_kill_at_any_write_boundary_resumes_to_the_same_bytes(
    corpus: Corpus, uninterrupted: tuple[dict[str, str], dict], tmp_path: Path, boundary: str
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
    assert _digests(output) == uninterrupted[0]
    assert not list(output.rglob(".storage-tmp-*")), "no temporary file is left"
