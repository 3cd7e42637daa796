"""dpmesh-refilter end to end on the outputs of dpmesh-label (tests/fakes/label_inputs.py): the same rows as a direct
run without the model, the label lineage carried through, resume after a kill at any write boundary."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import ConfigError, RefilterJobConfig, compose_config
from pipelines.label.job import run
from pipelines.refilter.job import run as refilter
from tests.fakes.digests import identities, label_digests
from tests.fakes.kill import kill_after_write
from tests.fakes.label_inputs import label_config, label_table
from tests.fakes.writes import recorded_writes


# The files a refilter writes, as dpmesh-label does (tests/label/test_label_pipeline.py kills at the same ones).
_BOUNDARIES = {
    "intent": r"/_intent\.json$",
    "annotations": r"/annotations/shard-\d+\.parquet$",
    "marker": r"/_done/shard-\d+\.json$",
    "index": r"/_done_index\.json\.gz$",
    "summary": r"/_summary\.json$",
}


_KILLED_REFILTER = kill_after_write(
    "from pipelines.config import RefilterJobConfig, compose_config\n"
    "from pipelines.refilter.job import run\n"
    "run(compose_config('dpmesh_refilter', sys.argv[1:], RefilterJobConfig))\n"
)


def _refilter_args(labels: str, output: Path) -> list[str]:
    return [f"input={labels}", f"output={output}", "filter=strict", "log_level=WARNING"]


@pytest.fixture(scope="module")
def fake_refiltered(fake_labeled: tuple[str, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("refiltered") / "out"
    args = _refilter_args(fake_labeled[0], output)
    return output, refilter(compose_config("dpmesh_refilter", args, RefilterJobConfig))


@pytest.mark.parametrize("boundary", ["intent", "annotations", "marker", "index", "summary"])
def test_a_refilter_killed_at_any_write_boundary_resumes_to_the_same_rows(
    fake_labeled: tuple[str, dict], fake_refiltered: tuple[Path, dict], tmp_path: Path, boundary: str
) -> None:
    reference, expected = fake_refiltered

    def args(output: Path) -> list[str]:
        return _refilter_args(fake_labeled[0], output)

    output = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-c", _KILLED_REFILTER, _BOUNDARIES[boundary], *args(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, f"the refilter was not killed after its first {boundary} write"
    resumed = refilter(compose_config("dpmesh_refilter", args(output), RefilterJobConfig))
    assert resumed["counts"] == expected["counts"]
    assert label_digests(output) == label_digests(reference)


def test_refilter_reproduces_a_direct_run_without_the_model(
    tiny_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path
) -> None:
    output, _ = tiny_labeled
    kept = tmp_path / "off"
    summary_off = run(label_config(f"input.shards={label_inputs['shards']}", f"output={kept}", "filter=off"))
    assert summary_off["counts"]["persons_rejected"] == 0
    refiltered = tmp_path / "refiltered"
    refilter(
        compose_config(
            "dpmesh_refilter", [f"input={kept}", f"output={refiltered}", "log_level=WARNING"], RefilterJobConfig
        )
    )
    for folder in ("annotations", "rejected", "errors"):
        for path in Path(output, folder).glob("*.parquet"):
            direct, again = pq.read_table(path), pq.read_table(refiltered / folder / path.name)
            if folder != "errors":
                # Signals are stored as float32, so the re-computed confidence may differ in the last bits.
                assert again.column("confidence").to_pylist() == pytest.approx(direct.column("confidence").to_pylist())
                direct, again = direct.drop_columns(["confidence"]), again.drop_columns(["confidence"])
            assert again.to_pylist() == direct.to_pylist(), path


def test_refilter_keeps_the_label_lineage_and_resumes(tiny_labeled: tuple[str, dict], tmp_path: Path) -> None:
    output, label_summary = tiny_labeled
    out = tmp_path / "strict"

    def refilter_config(*extra: str) -> RefilterJobConfig:
        overrides = [f"input={output}", f"output={out}", "filter=strict", "log_level=WARNING", *extra]
        return compose_config("dpmesh_refilter", overrides, RefilterJobConfig)

    summary = refilter(refilter_config())
    label_run = summary["label_run"]
    assert label_run["labels"] == output
    assert label_run["config_hash"] == label_summary["config_hash"] != summary["config_hash"]
    assert label_run["config"]["model"] == label_summary["config"]["model"]
    assert label_run["model_ids"] == summary["model_ids"] == ["tiny-seed0"]
    for path in sorted(Path(output, "_done").glob("*.json")):
        source, marker = json.loads(path.read_text()), json.loads((out / "_done" / path.name).read_text())
        expected_run = {
            "labels": output,
            "config_hash": source["config_hash"],
            "pipeline_version": source["pipeline_version"],
            "live_digest": source["live_digest"],  # the shard set's live record the labels follow
        }
        assert marker["label_run"] == expected_run
        for key in ("shard_uri", "shard_identity", "tar_read", "model_ids", "body_models", "live_digest"):
            assert marker[key] == source[key], key
        for folder in ("annotations", "rejected", "errors"):
            meta = pq.read_schema(out / folder / f"{path.stem}.parquet").metadata
            assert json.loads(meta[b"label_run"]) == expected_run
            assert meta[b"config_hash"].decode() == summary["config_hash"]
    lineage = ["sample_id", "shard", "shard_uri", "annotation_id", "model_id", "body_model_sha256", "occlusion_level"]
    assert label_table(out).select(lineage).sort_by("sample_id") == label_table(output).select(lineage).sort_by(
        "sample_id"
    )

    # Resume: as after a kill, two shards lack their marker (one of them its files too); only they are redone.
    digests = label_digests(out)
    killed = sorted(p.stem for p in (out / "_done").glob("*.json"))[:2]
    for name in killed:
        (out / "_done" / f"{name}.json").unlink()
    (out / "annotations" / f"{killed[0]}.parquet").unlink()
    kept = [p for p in out.glob("*/shard-*.parquet") if p.stem not in killed]
    before = identities(kept)
    with recorded_writes() as writes:
        resumed = refilter(refilter_config())
    assert resumed["shards"]["labeled_this_run"] == 2
    assert writes.touching([p.relative_to(out).as_posix() for p in kept], str(out)) == []
    assert identities(kept) == before, "finished shards are not rewritten"
    assert label_digests(out) == digests
    assert resumed["reconciled"]
    assert refilter(refilter_config())["shards"]["labeled_this_run"] == 0
    with pytest.raises(ConfigError, match="another config"):
        refilter(refilter_config("filter.min_box_px=80"))
    # Refiltering a refiltered output carries the original label run forward.
    again = compose_config(
        "dpmesh_refilter", [f"input={out}", f"output={tmp_path / 'again'}", "log_level=WARNING"], RefilterJobConfig
    )
    assert refilter(again)["label_run"] == label_run
    marker = json.loads(next((tmp_path / "again" / "_done").glob("*.json")).read_text())
    assert marker["label_run"]["labels"] == output
