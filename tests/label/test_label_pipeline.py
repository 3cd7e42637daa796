"""dpmesh-label end to end: real Beam runners, bad inputs, resume, S3, refilter.

The counts, error rows, schema and refilter tests run the tiny model (`labeled`); the runner, resume and kill
tests check the pipeline around the model and run the numpy stand-in (`fake_labeled`, tests/fakes/fake_dpmesh.py),
whose worker processes load no torch.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import ConfigError, LabelJobConfig, RefilterJobConfig, ShardJobConfig, compose_config
from pipelines.label import job as label_job
from pipelines.label.job import run
from pipelines.label.model_handler import DPMeshModelHandler
from pipelines.label.plan import LabelPlan, shard_tasks
from pipelines.refilter.job import run as refilter
from pipelines.shard.job import run as shard
from pipelines.storage import Storage
from schemas import ANNOTATION_SCHEMA, ERROR_SCHEMA, OCCLUSION_LEVELS, fixed_list_to_numpy
from tests.fakes.corpus import make_images, write_coco, write_corpus
from tests.fakes.digests import identities, label_digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.kill import kill_after_write
from tests.fakes.writes import recorded_writes


N_IMAGES = 8


def _label_config(*overrides: str) -> LabelJobConfig:
    return compose_config("dpmesh_label", ["log_level=WARNING", "progress_interval_s=0", *overrides], LabelJobConfig)


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _bad_shard(path: Path, good_jpeg: bytes, keypoints: list) -> None:
    """A hand-written shard: a corrupt image with 2 persons, a good image with a valid, an empty, a NaN and an
    outside-the-image person, an unreadable JSON, and an image without persons (6 persons in, 5 of them errors)."""
    nan_keypoints = [list(k) for k in keypoints]
    nan_keypoints[4][0] = float("nan")
    outside = [[5000.0 + x, y, v] for x, y, v in keypoints]
    samples = [
        ("bad_a-000000000001", b"\xff\xd8 not really a jpeg", {"persons": [{"keypoints": keypoints}] * 2}),
        (
            "bad_b-000000000002",
            good_jpeg,
            {"persons": [{"keypoints": k} for k in (keypoints, [[0, 0, 0]] * 17, nan_keypoints, outside)]},
        ),
        ("bad_c-000000000003", good_jpeg, None),
        ("bad_d-000000000004", good_jpeg, {"persons": []}),
    ]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, meta in samples:
            _member(tar, f"{key}.jpg", image)
            doc = b"{broken" if meta is None else json.dumps({"source_uri": f"/src/{key}.jpg", **meta}).encode()
            _member(tar, f"{key}.json", doc)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Shards of 8 annotated images (from dpmesh-shard), plus a hand-made bad shard and a truncated shard."""
    root = tmp_path_factory.mktemp("label")
    images = make_images(N_IMAGES, seed=11, width=320, height=240, persons=(1, 2))
    write_corpus(str(root / "images"), images)
    write_coco(str(root / "coco.json"), images)
    out = root / "shards"
    cfg = compose_config(
        "dpmesh_shard",
        [
            f"input.images={root / 'images'}",
            f"input.annotations={root / 'coco.json'}",
            f"output={out}",
            "shard.max_samples=3",
            "log_level=WARNING",
        ],
        ShardJobConfig,
    )
    manifest = shard(cfg)
    keypoints = images[0].persons[0]["keypoints"]
    _bad_shard(out / "shard-000900.tar", images[0].data, keypoints)
    # A copy of a real shard cut at a member boundary: the tar stream ends cleanly, only its index tells.
    first = manifest["shards"][0]["shard"]
    data = (out / f"{first}.tar").read_bytes()
    with tarfile.open(out / f"{first}.tar") as tar:
        boundary = tar.getmembers()[2].offset
    (out / "shard-000901.tar").write_bytes(data[:boundary])
    index = pq.read_table(out / f"{first}.parquet")
    pq.write_table(index, out / "shard-000901.parquet")
    _add_to_manifest(out, ["shard-000900", "shard-000901"])
    persons = sum(s["persons"] for s in manifest["shards"])
    return {
        "shards": str(out),
        "persons": str(persons),
        "root": str(root),
        "truncated_from": first,
        "truncated_persons": str(sum(index.column("n_persons").to_pylist())),
    }


def _add_to_manifest(folder: Path, shards: list[str]) -> None:
    """Lists hand-made tars in the shard set's manifest, as if dpmesh-shard had written them."""
    manifest = json.loads((folder / "_manifest.json").read_text())
    for name in shards:
        data = (folder / f"{name}.tar").read_bytes()
        entry = {"shard": name, "tar_bytes": len(data), "tar_sha1": hashlib.sha1(data).hexdigest()}
        manifest["shards"] = [s for s in manifest["shards"] if s["shard"] != name] + [entry]
    (folder / "_manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def labeled(shards: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    output = str(tmp_path_factory.mktemp("labels") / "out")
    return output, run(_label_config(f"input.shards={shards['shards']}", f"output={output}"))


def _fake_run(*overrides: str) -> dict:
    """``dpmesh-label`` with the numpy stand-in for the model."""
    cfg = _label_config(*overrides)
    return run(cfg, handler=FakeDPMeshHandler(cfg.model))


@pytest.fixture(scope="module")
def fake_labeled(shards: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    output = str(tmp_path_factory.mktemp("fake-labels") / "out")
    summary = _fake_run(f"input.shards={shards['shards']}", f"output={output}")
    assert summary["reconciled"]
    assert summary["counts"]["persons_accepted"] > 0, "the stand-in's labels pass the filter"
    return output, summary


def test_counts_reconcile_and_every_person_is_accounted_for(labeled: tuple[str, dict], shards: dict) -> None:
    output, summary = labeled
    counts = summary["counts"]
    assert summary["reconciled"] is True
    assert counts["persons_in"] == counts["persons_accepted"] + counts["persons_rejected"] + counts["persons_errored"]
    # real shards + the bad shard's 6 + the truncated copy's persons
    assert counts["persons_in"] == int(shards["persons"]) + 6 + int(shards["truncated_persons"])
    accepted = sum(pq.read_table(p).num_rows for p in Path(output, "annotations").glob("*.parquet"))
    rejected = sum(pq.read_table(p).num_rows for p in Path(output, "rejected").glob("*.parquet"))
    errors = [r for p in Path(output, "errors").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert accepted + rejected + sum(1 for e in errors if e["person_idx"] is not None) == counts["persons_in"]
    assert summary["shards"]["done"] == summary["shards"]["total"]
    assert summary["throughput"]["persons_per_s"] > 0
    assert "torch" in summary["versions"]
    assert "AWS" not in json.dumps(summary)


def test_bad_inputs_become_error_rows_with_reasons(labeled: tuple[str, dict]) -> None:
    output, _ = labeled
    errors = pq.read_table(Path(output, "errors", "shard-000900.parquet")).to_pylist()
    by_key = {(e["key"], e["person_idx"]): (e["stage"], e["reason"]) for e in errors}
    assert by_key[("bad_a-000000000001", 0)] == ("label.decode", "corrupt_image")
    assert by_key[("bad_a-000000000001", 1)] == ("label.decode", "corrupt_image")
    assert by_key[("bad_b-000000000002", 1)] == ("label.preprocess", "no_valid_keypoints")
    assert by_key[("bad_b-000000000002", 2)] == ("label.preprocess", "nonfinite_keypoints")
    assert by_key[("bad_b-000000000002", 3)] == ("label.preprocess", "bbox_outside_image")
    assert by_key[("bad_c-000000000003", None)] == ("label.decode", "invalid_annotation")
    marker = json.loads(Path(output, "_done", "shard-000900.json").read_text())
    assert marker["counts"] == {
        "images_in": 4,
        "images_ok": 2,
        "images_errored": 2,
        "persons_in": 6,
        "persons_accepted": marker["counts"]["persons_accepted"],
        "persons_rejected": marker["counts"]["persons_rejected"],
        "persons_errored": 5,
    }
    assert marker["reconciled"]


def test_truncated_shard_is_caught_by_its_index(labeled: tuple[str, dict], shards: dict) -> None:
    output, _ = labeled
    marker = json.loads(Path(output, "_done", "shard-000901.json").read_text())
    errors = pq.read_table(Path(output, "errors", "shard-000901.parquet")).to_pylist()
    missing = [e for e in errors if e["stage"] == "label.read"]
    assert missing, "samples missing from the tar must be reported"
    assert all("missing" in e["error"] for e in missing)
    assert marker["reconciled"]
    assert marker["counts"]["persons_in"] == int(shards["truncated_persons"])


def test_outputs_follow_the_schemas(labeled: tuple[str, dict]) -> None:
    output, _ = labeled
    for folder, schema in (
        ("rejected", ANNOTATION_SCHEMA),
        ("annotations", ANNOTATION_SCHEMA),
        ("errors", ERROR_SCHEMA),
    ):
        for path in Path(output, folder).glob("*.parquet"):
            table = pq.read_table(path)
            assert table.schema.remove_metadata() == schema.remove_metadata(), path
            assert table.schema.metadata[b"schema_version"] == schema.metadata[b"schema_version"]
            assert b"config_hash" in table.schema.metadata
    rows = pq.read_table(Path(output, "rejected")).to_pylist()
    assert rows, "the tiny model's random weights fail the default filter"
    row = rows[0]
    assert len(row["body_pose"]) == 69
    assert len(row["joints_3d"]) == 24
    assert row["reasons"]
    assert row["quality_tier"] == "reject"
    assert row["model_id"] == "tiny-seed0"
    assert row["sample_id"] == f"{row['image_key']}_p{row['person_idx']}"


def test_rerun_skips_done_shards_and_overwrite_is_byte_identical(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path
) -> None:
    labeled, _ = fake_labeled
    output = tmp_path / "o"
    shutil.copytree(labeled, output)  # the rerun with overwrite=true rewrites it: a copy, not the shared output
    before = label_digests(output)
    shard_files = list(output.glob("*/shard-*.parquet"))
    files = identities(shard_files)
    with recorded_writes() as writes:
        again = _fake_run(f"input.shards={shards['shards']}", f"output={output}")
    assert again["shards"]["labeled_this_run"] == 0
    assert writes.touching([p.relative_to(output).as_posix() for p in shard_files], str(output)) == []
    assert identities(shard_files) == files, "done shards are not rewritten"
    _fake_run(f"input.shards={shards['shards']}", f"output={output}", "overwrite=true")
    assert label_digests(output) == before


def test_a_partial_run_resumes_only_the_missing_shards(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path
) -> None:
    output, _ = fake_labeled
    partial = tmp_path / "partial"
    for path in Path(output).rglob("*"):
        if path.is_file() and "shard-000000" not in path.name:
            (partial / path.relative_to(output)).parent.mkdir(parents=True, exist_ok=True)
            (partial / path.relative_to(output)).write_bytes(path.read_bytes())
    resumed = _fake_run(f"input.shards={shards['shards']}", f"output={partial}")
    assert resumed["shards"]["labeled_this_run"] == 1
    assert label_digests(partial) == label_digests(output)


def test_multi_processing_and_portable_give_the_same_bytes(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path, beam_job_endpoint: str
) -> None:
    output, _ = fake_labeled
    mp = tmp_path / "mp"
    _fake_run(
        f"input.shards={shards['shards']}",
        f"output={mp}",
        "runner.running_mode=multi_processing",
        "runner.num_workers=2",
    )
    assert label_digests(mp) == label_digests(output)
    portable = tmp_path / "portable"
    _fake_run(
        f"input.shards={shards['shards']}",
        f"output={portable}",
        "runner=portable",
        f"runner.job_endpoint={beam_job_endpoint}",
    )
    assert label_digests(portable) == label_digests(output)


class PoisonedHandler(FakeDPMeshHandler):
    """Fails every batch that holds the poisoned image, like an out-of-memory error on one batch."""

    def __init__(self, *args, poisoned: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._poisoned = poisoned

    def run_inference(self, batch, model, inference_args=None):
        if any(task.image_key == self._poisoned for person_batch in batch for task in person_batch.tasks):
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().run_inference(batch, model, inference_args)


class NaNInjectingHandler(DPMeshModelHandler):
    """Feeds NaN pixels for one image through the real model: its outputs come out non-finite."""

    def __init__(self, *args, poisoned: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._poisoned = poisoned

    def _run_batch(self, person_batch, model, model_id):
        tasks = tuple(
            dataclasses.replace(t, inputs=dataclasses.replace(t.inputs, image=np.full_like(t.inputs.image, np.nan)))
            if t.image_key == self._poisoned
            else t
            for t in person_batch.tasks
        )
        return super()._run_batch(dataclasses.replace(person_batch, tasks=tasks), model, model_id)


def test_model_nan_outputs_are_rejected_not_written_as_labels(shards: dict, tmp_path: Path) -> None:
    cfg = _label_config(f"input.shards={shards['shards']}/shard-000000.tar", f"output={tmp_path / 'o'}", "filter=off")
    first_key = pq.read_table(Path(shards["shards"]) / "shard-000000.parquet").column("key")[0].as_py()
    summary = run(cfg, handler=NaNInjectingHandler(cfg.model, cfg.storage, poisoned=first_key))
    assert summary["reconciled"]
    rejected = pq.read_table(tmp_path / "o" / "rejected" / "shard-000000.parquet").to_pylist()
    assert rejected, "even with the filter off, NaN outputs are rejected"
    assert all(r["image_key"] == first_key and r["reasons"] == ["non_finite_output"] for r in rejected)
    accepted = pq.read_table(tmp_path / "o" / "annotations" / "shard-000000.parquet").to_pylist()
    assert all(r["image_key"] != first_key for r in accepted)


def test_a_killed_run_resumes_without_duplicates_or_gaps(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path
) -> None:
    reference, _ = fake_labeled
    output = tmp_path / "killed"
    args = [f"input.shards={shards['shards']}", f"output={output}", "log_level=WARNING", "progress_interval_s=0"]
    # Killed right after its second shard marker: part-way by construction, not by timing.
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_SECOND_MARKER, _LABEL_BOUNDARIES["marker"], *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, "the run was not killed after its second marker"
    done = sorted(p.stem for p in (output / "_done").glob("*.json"))
    total = len(list(Path(shards["shards"]).glob("shard-*.tar")))
    assert 2 <= len(done) < total, "the kill lands part-way"
    finished = [p for p in output.glob("*/shard-*.parquet") if p.stem in done]
    before = identities(finished)
    with recorded_writes() as writes:
        resumed = _fake_run(f"input.shards={shards['shards']}", f"output={output}")
    assert resumed["shards"]["labeled_this_run"] == total - len(done)
    finished_names = [p.relative_to(output).as_posix() for p in finished]
    assert writes.touching(finished_names, str(output)) == [], "finished shards are neither rewritten nor deleted"
    assert identities(finished) == before, "finished shards are the same files, not rewritten copies"
    assert label_digests(output) == label_digests(reference), (
        "same rows as an uninterrupted run: none missing or doubled"
    )
    assert resumed["reconciled"]


# A labeling run killed right after its first write whose URI matches argv[1] (tests/fakes/kill.py).
_LABEL_ENTRY = (
    "from pipelines.config import LabelJobConfig, compose_config\n"
    "from pipelines.label.job import run\n"
    "from tests.fakes.fake_dpmesh import FakeDPMeshHandler\n"
    "cfg = compose_config('dpmesh_label', sys.argv[1:], LabelJobConfig)\n"
    "run(cfg, handler=FakeDPMeshHandler(cfg.model))\n"
)
_KILL_AFTER_WRITE = kill_after_write(_LABEL_ENTRY)
_KILL_AFTER_SECOND_MARKER = kill_after_write(_LABEL_ENTRY, count=2)
_LABEL_BOUNDARIES = {
    "intent": r"/_intent\.json$",
    "annotations": r"/annotations/shard-\d+\.parquet$",
    "errors": r"/errors/shard-\d+\.parquet$",
    "marker": r"/_done/shard-\d+\.json$",
    "index": r"/_done_index\.json\.gz$",
    "summary": r"/_summary\.json$",
}


@pytest.mark.parametrize("boundary", list(_LABEL_BOUNDARIES))
def test_a_kill_at_any_write_boundary_resumes_to_the_same_rows(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path, boundary: str
) -> None:
    reference, expected = fake_labeled
    output = tmp_path / "killed"
    args = [f"input.shards={shards['shards']}", f"output={output}", "log_level=WARNING", "progress_interval_s=0"]
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_WRITE, _LABEL_BOUNDARIES[boundary], *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, f"the run was not killed after its first {boundary} write"
    resumed = _fake_run(*args[:2])  # no overwrite=true: the run's own unfinished work is taken up
    assert resumed["reconciled"]
    assert resumed["counts"] == expected["counts"]
    assert label_digests(output) == label_digests(reference), (
        "same rows as an uninterrupted run: none missing or doubled"
    )


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
        [sys.executable, "-c", _KILLED_REFILTER, _LABEL_BOUNDARIES[boundary], *args(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, f"the refilter was not killed after its first {boundary} write"
    resumed = refilter(compose_config("dpmesh_refilter", args(output), RefilterJobConfig))
    assert resumed["counts"] == expected["counts"]
    assert label_digests(output) == label_digests(reference)


@pytest.mark.parametrize("threads", [0, 3])
def test_the_preparation_pool_gives_the_rows_of_a_serial_run(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path, threads: int
) -> None:
    """Decoding and cropping in 0 (the reading thread) or 3 pool threads: the same rows, in the same order."""
    reference, expected = fake_labeled
    output = tmp_path / f"threads{threads}"
    summary = _fake_run(f"input.shards={shards['shards']}", f"output={output}", f"input.prep_threads={threads}")
    assert summary["counts"] == expected["counts"]
    assert label_digests(output) == label_digests(reference)


def test_fast_crops_label_every_person_the_reference_crops_label(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path
) -> None:
    _, expected = fake_labeled
    summary = _fake_run(f"input.shards={shards['shards']}", f"output={tmp_path / 'fast'}", "input.crop_mode=fast")
    assert summary["reconciled"]
    assert summary["counts"] == expected["counts"]


def _file_identities(output: Path) -> dict[str, tuple[int, int]]:
    """(inode, size) of every shard file and marker: a rewrite (write to a temporary name, rename) changes it."""
    files = [*output.glob("*/shard-*.parquet"), *output.glob("_done/*.json")]
    return {p.relative_to(output).as_posix(): (p.stat().st_ino, p.stat().st_size) for p in files}


def test_a_unit_committed_since_planning_is_not_redone_where_it_runs(
    fake_labeled: tuple[str, dict], shards: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the runner retries or recomputes a work item after its shard was committed: the plan says "label
    it", the worker finds the shard's marker (same identity and config) and hands it on without touching a file."""
    output = tmp_path / "o"
    shutil.copytree(fake_labeled[0], output)
    (output / "_done_index.json.gz").unlink()
    before = _file_identities(output)
    assert before

    def plan_everything(cfg: LabelJobConfig, storage: Any, calibration_sha256: Any = None) -> LabelPlan:
        tasks = shard_tasks(cfg, storage)
        return LabelPlan(tasks, tasks)  # a plan made before the markers were written

    monkeypatch.setattr(label_job, "plan_shards", plan_everything)
    summary = _fake_run(f"input.shards={shards['shards']}", f"output={output}")
    assert summary["shards"]["already_committed"] == summary["shards"]["total"] == len(before) // 4
    assert summary["reconciled"]
    assert summary["counts"] == fake_labeled[1]["counts"]
    assert _file_identities(output) == before, "committed files are not rewritten"


def test_failed_batches_become_inference_errors(shards: dict, tmp_path: Path) -> None:
    cfg = _label_config(
        f"input.shards={shards['shards']}/shard-00000*.tar", f"output={tmp_path / 'o'}", "model.batch_size=1"
    )
    first_key = pq.read_table(Path(shards["shards"]) / "shard-000000.parquet").column("key")[0].as_py()
    summary = run(cfg, handler=PoisonedHandler(cfg.model, poisoned=first_key))
    assert summary["reconciled"]
    assert summary["errors_by_stage"].get("label.inference", 0) >= 1
    errors = pq.read_table(tmp_path / "o" / "errors" / "shard-000000.parquet").to_pylist()
    assert all(
        e["key"] == first_key and "out of memory" in e["error"] for e in errors if e["stage"] == "label.inference"
    )


def test_refilter_reproduces_a_direct_run_without_the_model(
    labeled: tuple[str, dict], shards: dict, tmp_path: Path
) -> None:
    output, _ = labeled
    kept = tmp_path / "off"
    summary_off = run(_label_config(f"input.shards={shards['shards']}", f"output={kept}", "filter=off"))
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


def _labels(output: str | Path) -> pa.Table:
    """Every accepted and rejected row of a label output, one table."""
    paths = sorted(Path(output).glob("annotations/*.parquet")) + sorted(Path(output).glob("rejected/*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in paths])


def test_lineage_and_occlusion_columns_are_filled(labeled: tuple[str, dict]) -> None:
    output, summary = labeled
    table = _labels(output)
    rows = table.to_pylist()
    assert rows
    markers = {p.stem: json.loads(p.read_text()) for p in Path(output, "_done").glob("*.json")}
    (body_sha,) = {r["body_model_sha256"] for r in rows}
    assert len(body_sha) == 64
    for row in rows:
        assert row["shard_uri"] == markers[row["shard"]]["shard_uri"]
        assert row["shard_uri"].endswith(f"/{row['shard']}.tar")
        assert row["body_model"] == "synthetic_random_body_64v"  # the tiny model's random body is not called SMPL
        assert row["n_kp_visible"] + row["n_kp_occluded"] + row["n_kp_missing"] == 17
        assert row["occlusion_level"] in OCCLUSION_LEVELS
        assert 0.0 <= row["joints_in_image_frac"] <= 1.0
        assert row["crowd_index"] is None or row["crowd_index"] >= 0.0
        # The hand-made shard-000900 has persons without annotation ids; dpmesh-shard wrote the COCO ids elsewhere.
        assert (row["annotation_id"] is None) == (row["shard"] == "shard-000900")
    real = [r for r in rows if r["shard"] != "shard-000900" and r["shard"] != "shard-000901"]
    assert len({r["annotation_id"] for r in real}) == len(real)
    # Annotated keypoints: visible = COCO v=2 (stored conf 1), occluded = v=1 (0.5), missing = v=0 (0).
    conf = fixed_list_to_numpy(table["keypoints_2d"], (17, 3))[:, :, 2]
    assert table["n_kp_visible"].to_pylist() == (conf == 1.0).sum(axis=1).tolist()
    assert table["n_kp_occluded"].to_pylist() == (conf == 0.5).sum(axis=1).tolist()
    # Images with two persons give each one a crowd index from the other's keypoints (0 when they lie apart).
    assert any(r["crowding_iou"] > 0 for r in rows) or all(r["crowd_index"] == 0.0 for r in rows)
    assert summary["model_ids"] == ["tiny-seed0"]
    assert summary["body_models"] == {"synthetic_random_body_64v": body_sha}
    assert b"body_model" not in pq.read_schema(next(Path(output, "rejected").glob("*.parquet"))).metadata


def test_refilter_keeps_the_label_lineage_and_resumes(labeled: tuple[str, dict], tmp_path: Path) -> None:
    output, label_summary = labeled
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
        }
        assert marker["label_run"] == expected_run
        for key in ("shard_uri", "shard_identity", "tar_read", "model_ids", "body_models"):
            assert marker[key] == source[key], key
        for folder in ("annotations", "rejected", "errors"):
            meta = pq.read_schema(out / folder / f"{path.stem}.parquet").metadata
            assert json.loads(meta[b"label_run"]) == expected_run
            assert meta[b"config_hash"].decode() == summary["config_hash"]
    lineage = ["sample_id", "shard", "shard_uri", "annotation_id", "model_id", "body_model_sha256", "occlusion_level"]
    assert _labels(out).select(lineage).sort_by("sample_id") == _labels(output).select(lineage).sort_by("sample_id")

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


@pytest.mark.s3
def test_s3_shards_to_s3_labels(shards: dict, s3_bucket: str, s3_server) -> None:
    storage_overrides = [
        "storage=s3",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
    ]
    shard_glob = f"input.shards={s3_bucket}/shards/shard-00000*.tar"
    cfg = _label_config(shard_glob, f"output={s3_bucket}/labels", *storage_overrides)
    storage = Storage(cfg.storage)
    for path in [*sorted(Path(shards["shards"]).glob("shard-00000*")), Path(shards["shards"], "_manifest.json")]:
        storage.write_bytes(f"{s3_bucket}/shards/{path.name}", path.read_bytes())
    summary = run(cfg)
    assert summary["reconciled"]
    assert summary["shards"]["done"] == summary["shards"]["total"] > 0
    rejected = pq.read_table(io.BytesIO(storage.read_bytes(f"{s3_bucket}/labels/rejected/shard-000000.parquet")))
    assert rejected.num_rows > 0
    assert json.loads(storage.read_bytes(f"{s3_bucket}/labels/_summary.json"))["reconciled"]


def test_cli_fails_fast_on_a_missing_gpu_and_missing_weights(shards: dict, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "pipelines.label.job", f"input.shards={shards['shards']}", f"output={tmp_path}/o"]
    no_weights = subprocess.run([*cli, "model=dpmesh"], capture_output=True, text=True)
    assert no_weights.returncode == 2
    assert "model.checkpoint" in no_weights.stderr
    gpu = subprocess.run(
        [*cli, "model.device=cuda"], capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )
    assert gpu.returncode == 2
    assert "model.device=cpu" in gpu.stderr


def test_output_reads_back_with_duckdb_in_order_and_reconciled(labeled: tuple[str, dict]) -> None:
    import duckdb

    output, summary = labeled
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT shard, image_key, person_idx, quality_tier, len(body_pose) AS n_pose, len(reasons) AS n_reasons "
        f"FROM read_parquet('{output}/rejected/*.parquet', filename=true, file_row_number=true) "
        "ORDER BY filename, file_row_number"
    ).fetchall()
    assert all(r[4] == 69 and r[5] > 0 and r[3] == "reject" for r in rows)
    by_shard: dict[str, list[tuple[str, int]]] = {}
    for shard_name, image_key, person_idx, *_ in rows:
        by_shard.setdefault(shard_name, []).append((image_key, person_idx))
    assert all(keys == sorted(keys) for keys in by_shard.values()), "rows are written in (image_key, person_idx) order"
    (errored,) = con.execute(
        f"SELECT count(*) FROM read_parquet('{output}/errors/*.parquet') WHERE person_idx IS NOT NULL"
    ).fetchone()
    (labels,) = con.execute(
        f"SELECT count(*) FROM read_parquet(['{output}/rejected/*.parquet', '{output}/annotations/*.parquet'])"
    ).fetchone()
    assert labels + errored == summary["counts"]["persons_in"]
    (duplicates,) = con.execute(
        f"SELECT count(*) - count(DISTINCT (shard, sample_id)) FROM read_parquet('{output}/rejected/*.parquet')"
    ).fetchone()
    assert duplicates == 0
