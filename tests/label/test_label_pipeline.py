"""dpmesh-label end to end: real Beam runners, bad inputs, resume, S3 (dpmesh-refilter on its outputs: tests/refilter).

The counts, error rows, schema and lineage tests run the tiny model (`tiny_labeled`); the runner, resume and kill
tests check the pipeline around the model and run the numpy stand-in (`fake_labeled`, tests/fakes/fake_dpmesh.py),
whose worker processes load no torch.
"""

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.config import LabelJobConfig
from pipelines.label import job as label_job
from pipelines.label.job import run
from pipelines.label.model_handler import DPMeshModelHandler
from pipelines.label.plan import LabelPlan, shard_tasks
from pipelines.storage import Storage
from schemas import ANNOTATION_SCHEMA, ERROR_SCHEMA, OCCLUSION_LEVELS, fixed_list_to_numpy
from tests.fakes.digests import identities, label_digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.kill import kill_after_write
from tests.fakes.label_inputs import fake_label, label_config, label_table
from tests.fakes.writes import recorded_writes


def test_counts_reconcile_and_every_person_is_accounted_for(
    tiny_labeled: tuple[str, dict], label_inputs: dict
) -> None:
    output, summary = tiny_labeled
    counts = summary["counts"]
    assert summary["reconciled"] is True
    assert counts["persons_in"] == counts["persons_accepted"] + counts["persons_rejected"] + counts["persons_errored"]
    # real shards + the bad shard's 6 + the truncated copy's persons
    assert counts["persons_in"] == int(label_inputs["persons"]) + 6 + int(label_inputs["truncated_persons"])
    accepted = sum(pq.read_table(p).num_rows for p in Path(output, "annotations").glob("*.parquet"))
    rejected = sum(pq.read_table(p).num_rows for p in Path(output, "rejected").glob("*.parquet"))
    errors = [r for p in Path(output, "errors").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert accepted + rejected + sum(1 for e in errors if e["person_idx"] is not None) == counts["persons_in"]
    assert summary["shards"]["done"] == summary["shards"]["total"]
    assert summary["throughput"]["persons_per_s"] > 0
    assert "torch" in summary["versions"]
    assert "AWS" not in json.dumps(summary)


def test_bad_inputs_become_error_rows_with_reasons(tiny_labeled: tuple[str, dict]) -> None:
    output, _ = tiny_labeled
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


def test_truncated_shard_is_caught_by_its_index(tiny_labeled: tuple[str, dict], label_inputs: dict) -> None:
    output, _ = tiny_labeled
    marker = json.loads(Path(output, "_done", "shard-000901.json").read_text())
    errors = pq.read_table(Path(output, "errors", "shard-000901.parquet")).to_pylist()
    missing = [e for e in errors if e["stage"] == "label.read"]
    assert missing, "samples missing from the tar must be reported"
    assert all("missing" in e["error"] for e in missing)
    assert marker["reconciled"]
    assert marker["counts"]["persons_in"] == int(label_inputs["truncated_persons"])


def test_outputs_follow_the_schemas(tiny_labeled: tuple[str, dict]) -> None:
    output, _ = tiny_labeled
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
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path
) -> None:
    labeled, _ = fake_labeled
    output = tmp_path / "o"
    shutil.copytree(labeled, output)  # the rerun with overwrite=true rewrites it: a copy, not the shared output
    before = label_digests(output)
    shard_files = list(output.glob("*/shard-*.parquet"))
    files = identities(shard_files)
    with recorded_writes() as writes:
        again = fake_label(f"input.shards={label_inputs['shards']}", f"output={output}")
    assert again["shards"]["labeled_this_run"] == 0
    assert writes.touching([p.relative_to(output).as_posix() for p in shard_files], str(output)) == []
    assert identities(shard_files) == files, "done shards are not rewritten"
    fake_label(f"input.shards={label_inputs['shards']}", f"output={output}", "overwrite=true")
    assert label_digests(output) == before


def test_a_partial_run_resumes_only_the_missing_shards(
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path
) -> None:
    output, _ = fake_labeled
    partial = tmp_path / "partial"
    for path in Path(output).rglob("*"):
        if path.is_file() and "shard-000000" not in path.name:
            (partial / path.relative_to(output)).parent.mkdir(parents=True, exist_ok=True)
            (partial / path.relative_to(output)).write_bytes(path.read_bytes())
    resumed = fake_label(f"input.shards={label_inputs['shards']}", f"output={partial}")
    assert resumed["shards"]["labeled_this_run"] == 1
    assert label_digests(partial) == label_digests(output)


def test_multi_processing_and_portable_give_the_same_bytes(
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path, beam_job_endpoint: str
) -> None:
    output, _ = fake_labeled
    mp = tmp_path / "mp"
    fake_label(
        f"input.shards={label_inputs['shards']}",
        f"output={mp}",
        "runner.running_mode=multi_processing",
        "runner.num_workers=2",
    )
    assert label_digests(mp) == label_digests(output)
    portable = tmp_path / "portable"
    fake_label(
        f"input.shards={label_inputs['shards']}",
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


def test_model_nan_outputs_are_rejected_not_written_aslabel_table(label_inputs: dict, tmp_path: Path) -> None:
    cfg = label_config(
        f"input.shards={label_inputs['shards']}/shard-000000.tar", f"output={tmp_path / 'o'}", "filter=off"
    )
    first_key = pq.read_table(Path(label_inputs["shards"]) / "shard-000000.parquet").column("key")[0].as_py()
    summary = run(cfg, handler=NaNInjectingHandler(cfg.model, cfg.storage, poisoned=first_key))
    assert summary["reconciled"]
    rejected = pq.read_table(tmp_path / "o" / "rejected" / "shard-000000.parquet").to_pylist()
    assert rejected, "even with the filter off, NaN outputs are rejected"
    assert all(r["image_key"] == first_key and r["reasons"] == ["non_finite_output"] for r in rejected)
    accepted = pq.read_table(tmp_path / "o" / "annotations" / "shard-000000.parquet").to_pylist()
    assert all(r["image_key"] != first_key for r in accepted)


def test_a_killed_run_resumes_without_duplicates_or_gaps(
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path
) -> None:
    reference, _ = fake_labeled
    output = tmp_path / "killed"
    args = [f"input.shards={label_inputs['shards']}", f"output={output}", "log_level=WARNING", "progress_interval_s=0"]
    # Killed right after its second shard marker: part-way by construction, not by timing.
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_SECOND_MARKER, _LABEL_BOUNDARIES["marker"], *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, "the run was not killed after its second marker"
    done = sorted(p.stem for p in (output / "_done").glob("*.json"))
    total = len(list(Path(label_inputs["shards"]).glob("shard-*.tar")))
    assert 2 <= len(done) < total, "the kill lands part-way"
    finished = [p for p in output.glob("*/shard-*.parquet") if p.stem in done]
    before = identities(finished)
    with recorded_writes() as writes:
        resumed = fake_label(f"input.shards={label_inputs['shards']}", f"output={output}")
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
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path, boundary: str
) -> None:
    reference, expected = fake_labeled
    output = tmp_path / "killed"
    args = [f"input.shards={label_inputs['shards']}", f"output={output}", "log_level=WARNING", "progress_interval_s=0"]
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_WRITE, _LABEL_BOUNDARIES[boundary], *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, f"the run was not killed after its first {boundary} write"
    resumed = fake_label(*args[:2])  # no overwrite=true: the run's own unfinished work is taken up
    assert resumed["reconciled"]
    assert resumed["counts"] == expected["counts"]
    assert label_digests(output) == label_digests(reference), (
        "same rows as an uninterrupted run: none missing or doubled"
    )


@pytest.mark.parametrize("threads", [0, 3])
def test_the_preparation_pool_gives_the_rows_of_a_serial_run(
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path, threads: int
) -> None:
    """Decoding and cropping in 0 (the reading thread) or 3 pool threads: the same rows, in the same order."""
    reference, expected = fake_labeled
    output = tmp_path / f"threads{threads}"
    summary = fake_label(f"input.shards={label_inputs['shards']}", f"output={output}", f"input.prep_threads={threads}")
    assert summary["counts"] == expected["counts"]
    assert label_digests(output) == label_digests(reference)


def test_fast_crops_label_every_person_the_reference_crops_label(
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path
) -> None:
    _, expected = fake_labeled
    summary = fake_label(
        f"input.shards={label_inputs['shards']}", f"output={tmp_path / 'fast'}", "input.crop_mode=fast"
    )
    assert summary["reconciled"]
    assert summary["counts"] == expected["counts"]


def _file_identities(output: Path) -> dict[str, tuple[int, int]]:
    """(inode, size) of every shard file and marker: a rewrite (write to a temporary name, rename) changes it."""
    files = [*output.glob("*/shard-*.parquet"), *output.glob("_done/*.json")]
    return {p.relative_to(output).as_posix(): (p.stat().st_ino, p.stat().st_size) for p in files}


def test_a_unit_committed_since_planning_is_not_redone_where_it_runs(
    fake_labeled: tuple[str, dict], label_inputs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    summary = fake_label(f"input.shards={label_inputs['shards']}", f"output={output}")
    assert summary["shards"]["already_committed"] == summary["shards"]["total"] == len(before) // 4
    assert summary["reconciled"]
    assert summary["counts"] == fake_labeled[1]["counts"]
    assert _file_identities(output) == before, "committed files are not rewritten"


def test_failed_batches_become_inference_errors(label_inputs: dict, tmp_path: Path) -> None:
    cfg = label_config(
        f"input.shards={label_inputs['shards']}/shard-00000*.tar", f"output={tmp_path / 'o'}", "model.batch_size=1"
    )
    first_key = pq.read_table(Path(label_inputs["shards"]) / "shard-000000.parquet").column("key")[0].as_py()
    summary = run(cfg, handler=PoisonedHandler(cfg.model, poisoned=first_key))
    assert summary["reconciled"]
    assert summary["errors_by_stage"].get("label.inference", 0) >= 1
    errors = pq.read_table(tmp_path / "o" / "errors" / "shard-000000.parquet").to_pylist()
    assert all(
        e["key"] == first_key and "out of memory" in e["error"] for e in errors if e["stage"] == "label.inference"
    )


def test_lineage_and_occlusion_columns_are_filled(tiny_labeled: tuple[str, dict]) -> None:
    output, summary = tiny_labeled
    table = label_table(output)
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


@pytest.mark.s3
def test_s3_shards_to_s3label_table(label_inputs: dict, s3_bucket: str, s3_server) -> None:
    storage_overrides = [
        "storage=s3",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
    ]
    shard_glob = f"input.shards={s3_bucket}/shards/shard-00000*.tar"
    cfg = label_config(shard_glob, f"output={s3_bucket}/labels", *storage_overrides)
    storage = Storage(cfg.storage)
    for path in [
        *sorted(Path(label_inputs["shards"]).glob("shard-00000*")),
        Path(label_inputs["shards"], "_manifest.json"),
    ]:
        storage.write_bytes(f"{s3_bucket}/shards/{path.name}", path.read_bytes())
    summary = run(cfg)
    assert summary["reconciled"]
    assert summary["shards"]["done"] == summary["shards"]["total"] > 0
    rejected = pq.read_table(io.BytesIO(storage.read_bytes(f"{s3_bucket}/labels/rejected/shard-000000.parquet")))
    assert rejected.num_rows > 0
    assert json.loads(storage.read_bytes(f"{s3_bucket}/labels/_summary.json"))["reconciled"]


def test_cli_fails_fast_on_a_missing_gpu_and_missing_weights(label_inputs: dict, tmp_path: Path) -> None:
    cli = [
        sys.executable,
        "-m",
        "pipelines.label.job",
        f"input.shards={label_inputs['shards']}",
        f"output={tmp_path}/o",
    ]
    no_weights = subprocess.run([*cli, "model=dpmesh"], capture_output=True, text=True)
    assert no_weights.returncode == 2
    assert "model.checkpoint" in no_weights.stderr
    gpu = subprocess.run(
        [*cli, "model.device=cuda"], capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )
    assert gpu.returncode == 2
    assert "model.device=cpu" in gpu.stderr


def test_output_reads_back_with_duckdb_in_order_and_reconciled(tiny_labeled: tuple[str, dict]) -> None:
    import duckdb

    output, summary = tiny_labeled
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
