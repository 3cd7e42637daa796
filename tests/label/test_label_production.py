"""dpmesh-label on the production path, forced on CPU: per-shard commits, shared models, shard identity.

* Commit without barriers: with a slow model, the first shard's marker exists before the last shard's inference
  has finished, in one pipeline run (also with detection).
* The model shared across processes (``MultiProcessShared`` proxy, as on GPU workers), called by 2 and 4 worker
  processes whose calls are forced to overlap mid-pass (``debug_overlap_s``), labels with zero errors and the same
  bytes as an unshared model in one process; the detectors too; the summary records how each model was hosted.
* Markers are tied to the shard they label: a resharded folder is relabeled, a shard set without its manifest is
  refused, and a tampered tar gives error rows, never duplicate labels.

Only the model-sharing test runs the tiny model; the others check the pipeline around the model with the numpy
stand-in (tests/fakes/fake_dpmesh.py), which shares across processes the same way.
"""

import contextlib
import io
import json
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import ConfigError, LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.detection.handlers import KeypointHandler, PersonDetectorHandler
from pipelines.label.job import run
from pipelines.label.model_handler import DPMeshModelHandler
from pipelines.shard.job import run as shard
from pipelines.storage import Storage
from tests.fakes.corpus import make_images, write_coco, write_corpus
from tests.fakes.digests import label_digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import shard_annotated
from tests.fakes.tiny_detectors import save_tiny_detector, save_tiny_pose


SAMPLE_CORPUS = Path(__file__).resolve().parents[2] / "pipelines" / "sample_corpus"
BATCH_DELAY_S = 0.3


def _label_config(*overrides: str) -> LabelJobConfig:
    return compose_config("dpmesh_label", ["log_level=WARNING", "progress_interval_s=0", *overrides], LabelJobConfig)


def _fake_run(cfg: LabelJobConfig) -> dict:
    return run(cfg, handler=FakeDPMeshHandler(cfg.model))


def _shard(images: str, output: Path, *extra: str) -> dict:
    cfg = compose_config(
        "dpmesh_shard", [f"input.images={images}", f"output={output}", "log_level=WARNING", *extra], ShardJobConfig
    )
    return shard(cfg)


def _rows(output: Path, folder: str) -> list[dict]:
    return [r for p in sorted((output / folder).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample corpus (the demo's), sharded 4 images per shard."""
    out = tmp_path_factory.mktemp("demo") / "shards"
    _shard(
        str(SAMPLE_CORPUS / "images"),
        out,
        f"input.annotations={SAMPLE_CORPUS / 'person_keypoints.json'}",
        "shard.max_samples=4",
    )
    return out


@pytest.fixture(scope="module")
def annotated_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight annotated synthetic images in shards of two, and the folder they came from."""
    root = tmp_path_factory.mktemp("annotated")
    shard_annotated(root, make_images(8, seed=21, width=160, height=120, persons=(1, 2)), "shard.max_samples=2")
    return root


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("detectors")
    return save_tiny_detector(root / "rtdetr"), save_tiny_pose(root / "vitpose")


# --- commit without barriers ------------------------------------------------------------------------------


class SlowHandler(FakeDPMeshHandler):
    """Takes ``BATCH_DELAY_S`` per batch and appends ``inference <shard>`` to an event log when a batch's inference
    ended (a file: the handler is pickled into the runner's workers)."""

    def __init__(self, *args, log: str, **kwargs) -> None:
        super().__init__(*args, seconds_per_batch=BATCH_DELAY_S, **kwargs)
        self._log = log

    def run_inference(self, batch, model, inference_args=None):
        results = super().run_inference(batch, model, inference_args)
        for person_batch in batch:
            _record(self._log, f"inference {person_batch.batch_id.split('/')[0]}")
        return results


def _record(log: str, event: str) -> None:
    with open(log, "a") as f:  # one append per event: the file's line order is the order of the events
        f.write(event + "\n")


@contextlib.contextmanager
def _commits_logged(log: Path) -> Iterator[None]:
    """Appends ``commit <shard>`` to ``log`` as each shard's marker is written (in-memory runners: this process)."""
    write = Storage.write_bytes

    def logging_write(self: Storage, uri: str, data: bytes) -> None:
        write(self, uri, data)
        if (match := re.search(r"/_done/(shard-\d+)\.json$", uri)) is not None:
            _record(str(log), f"commit {match.group(1)}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Storage, "write_bytes", logging_write)
        yield


def _commit_timeline(log: Path) -> tuple[int, int, int]:
    """(first commit, last inference) as positions in the event log, and the number of shards committed."""
    events = [line.split() for line in log.read_text().splitlines()]
    commits = [i for i, (kind, _) in enumerate(events) if kind == "commit"]
    inferences = [i for i, (kind, _) in enumerate(events) if kind == "inference"]
    return min(commits), max(inferences), len(commits)


def test_each_shard_is_committed_before_the_last_shard_is_inferred(annotated_set: Path, tmp_path: Path) -> None:
    cfg = _label_config(f"input.shards={annotated_set / 'shards'}", f"output={tmp_path / 'o'}", "model.batch_size=1")
    log = tmp_path / "events.log"
    with _commits_logged(log):
        summary = run(cfg, handler=SlowHandler(cfg.model, log=str(log)))
    first_commit, last_inference, shards = _commit_timeline(log)
    assert shards == summary["shards"]["total"] >= 4
    assert first_commit < last_inference, f"{log.read_text()}: no shard was committed before the last inference"
    assert summary["reconciled"]
    assert summary["shards"]["labeled_this_run"] == shards


@pytest.mark.slow  # ~11 s; the annotations variant runs in the default suite
def test_with_detection_shards_are_committed_one_by_one_too(
    annotated_set: Path, detectors: tuple[str, str], tmp_path: Path
) -> None:
    cfg = _label_config(
        f"input.shards={annotated_set / 'shards'}",
        f"output={tmp_path / 'o'}",
        "detector=auto",
        f"detector.detector_model={detectors[0]}",
        f"detector.pose_model={detectors[1]}",
        "detector.device=cpu",
        "model.batch_size=1",
    )
    log = tmp_path / "events.log"
    with _commits_logged(log):
        summary = run(cfg, handler=SlowHandler(cfg.model, log=str(log)))
    first_commit, last_inference, shards = _commit_timeline(log)
    assert shards == summary["shards"]["total"]
    assert first_commit < last_inference
    assert summary["reconciled"]


# --- models shared across processes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_image_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample corpus, one image per shard: enough shards for every worker process to call the model."""
    out = tmp_path_factory.mktemp("demo1") / "shards"
    _shard(
        str(SAMPLE_CORPUS / "images"),
        out,
        f"input.annotations={SAMPLE_CORPUS / 'person_keypoints.json'}",
        "shard.max_samples=1",
    )
    return out


@pytest.fixture(scope="module")
def unshared_tiny_labels(one_image_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Digests of every Parquet file of the tiny model's labels, unshared, in one process (the reference)."""
    output = tmp_path_factory.mktemp("unshared") / "labels"
    cfg = _label_config(f"input.shards={one_image_shards}", f"output={output}", "model.share_across_processes=false")
    assert DPMeshModelHandler(cfg.model, cfg.storage).share_model_across_processes() is False
    summary = run(cfg)
    assert summary["counts"]["persons_errored"] == 0, summary["errors_by_reason"]
    assert summary["counts"]["persons_in"] > 0
    assert summary["model_hosts"]["dpmesh"] == {
        "shared": False, "concurrent_calls": summary["model_hosts"]["dpmesh"]["concurrent_calls"], "callers": 1,
        "peak_concurrent_calls": 1,
    }  # fmt: skip
    return label_digests(output)


def _assert_shared_by_workers(summary: dict, kinds: tuple[str, ...], workers: int) -> None:
    """Zero errors, counts reconcile, and each model was one shared copy that several processes called at once."""
    assert summary["counts"]["persons_errored"] == 0, summary["errors_by_reason"]
    assert summary["reconciled"]
    for kind in kinds:
        host = summary["model_hosts"][kind]
        assert host["shared"], kind
        assert host["concurrent_calls"] == workers, kind
        assert 2 <= host["callers"] <= workers, (kind, host)  # the worker processes (not every one may get work)
        assert host["peak_concurrent_calls"] >= 2, (kind, host)  # the probe held calls until another arrived


@pytest.mark.parametrize("workers", [2, pytest.param(4, marks=pytest.mark.slow)])  # 4: ~25 s each
def test_a_model_shared_by_worker_processes_labels_like_an_unshared_one(
    one_image_shards: Path, unshared_tiny_labels: dict[str, str], workers: int, tmp_path: Path
) -> None:
    """The GPU workers' topology on CPU: worker processes share one tiny DPMesh, their calls forced to overlap."""
    output = tmp_path / "shared"
    cfg = _label_config(
        f"input.shards={one_image_shards}",
        f"output={output}",
        "model.share_across_processes=true",
        "runner.running_mode=multi_processing",
        f"runner.num_workers={workers}",
        f"model.concurrent_calls={workers}",
        "model.debug_overlap_s=1",  # each pass is held after its UNet until another pass has reached that point
    )
    assert DPMeshModelHandler(cfg.model, cfg.storage).share_model_across_processes()
    summary = run(cfg)
    _assert_shared_by_workers(summary, ("dpmesh",), workers)
    marker = json.loads(next((output / "_done").glob("*.json")).read_text())
    assert marker["model_hosts"]["dpmesh"]["shared"] is True
    assert label_digests(output) == unshared_tiny_labels


def _detection_config(annotated_set: Path, output: Path, *overrides: str) -> LabelJobConfig:
    detectors = ("detector=vitpose", "detector.device=cpu", "filter=off")
    return _label_config(f"input.shards={annotated_set / 'shards'}", f"output={output}", *detectors, *overrides)


@pytest.mark.parametrize("workers", [2, pytest.param(4, marks=pytest.mark.slow)])  # 4: ~25 s each
def test_shared_detectors_label_like_unshared_ones(
    annotated_set: Path, detectors: tuple[str, str], workers: int, tmp_path: Path
) -> None:
    """Real tiny RT-DETR and ViTPose shared by the worker processes, calls forced to overlap after each backbone;
    the DPMesh stand-in (shared likewise) keeps the test short."""
    weights = (f"detector.detector_model={detectors[0]}", f"detector.pose_model={detectors[1]}")
    unshared = _detection_config(annotated_set, tmp_path / "unshared", *weights, "detector.batch_size=1")
    reference = _fake_run(unshared)
    assert reference["counts"]["persons_in"] > 0
    assert reference["model_hosts"]["detector"]["shared"] is False
    cfg = _detection_config(
        annotated_set,
        tmp_path / "shared",
        *weights,
        "detector.batch_size=1",  # more calls to overlap
        "detector.share_across_processes=true",
        "model.share_across_processes=true",
        "runner.running_mode=multi_processing",
        f"runner.num_workers={workers}",
        f"detector.concurrent_calls={workers}",
        "detector.debug_overlap_s=1",
    )
    assert PersonDetectorHandler(cfg.detector, cfg.storage).share_model_across_processes()
    assert KeypointHandler(cfg.detector, cfg.storage).share_model_across_processes()
    summary = _fake_run(cfg)
    _assert_shared_by_workers(summary, ("detector", "pose"), workers)
    assert label_digests(tmp_path / "shared") == label_digests(tmp_path / "unshared")


# --- markers tied to the shards they label ----------------------------------------------------------------


def test_a_resharded_folder_is_relabeled(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    for seed, name in ((1, "a"), (2, "b")):
        images = make_images(4, seed=seed, width=160, height=120, persons=(1, 1))
        write_corpus(str(tmp_path / name), images)
        write_coco(str(tmp_path / f"{name}.json"), images)
    _shard(str(tmp_path / "a"), shards, f"input.annotations={tmp_path / 'a.json'}")
    cfg = _label_config(f"input.shards={shards}", f"output={tmp_path / 'labels'}")
    first = _fake_run(cfg)
    assert first["shards"]["labeled_this_run"] == first["shards"]["total"]
    assert _fake_run(cfg)["shards"]["labeled_this_run"] == 0, "an unchanged shard set is not relabeled"
    _shard(str(tmp_path / "b"), shards, f"input.annotations={tmp_path / 'b.json'}", "overwrite=true")
    second = _fake_run(cfg)
    assert second["shards"]["labeled_this_run"] == second["shards"]["total"], "changed shards must be relabeled"
    labeled = {r["source_uri"].rsplit("/", 2)[-2] for r in _rows(tmp_path / "labels", "annotations")}
    labeled |= {r["source_uri"].rsplit("/", 2)[-2] for r in _rows(tmp_path / "labels", "rejected")}
    assert labeled == {"b"}, "the labels describe the new images only"


def test_a_shard_set_without_its_manifest_is_refused_unless_allowed(annotated_set: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in sorted((annotated_set / "shards").glob("shard-*"))[
        :4
    ]:  # two shards of a run killed before its manifest
        (partial / path.name).write_bytes(path.read_bytes())
    cfg = _label_config(f"input.shards={partial}", f"output={tmp_path / 'o'}")
    with pytest.raises(ConfigError, match=r"no _manifest\.json.*input\.allow_incomplete=true"):
        _fake_run(cfg)
    allowed = _label_config(f"input.shards={partial}", f"output={tmp_path / 'o'}", "input.allow_incomplete=true")
    summary = _fake_run(allowed)
    assert summary["shards"]["done"] == 2
    assert summary["reconciled"]
    marker = json.loads(next((tmp_path / "o" / "_done").glob("*.json")).read_text())
    assert marker["shard_identity"]["tar_sha1"] is None
    assert marker["shard_identity"]["tar_bytes"] > 0


def test_tars_missing_from_the_manifest_are_refused(annotated_set: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(annotated_set / "shards", shards)
    next(shards.glob("shard-*.tar")).unlink()
    with pytest.raises(ConfigError, match="lists 1 shards that are not there"):
        _fake_run(_label_config(f"input.shards={shards}", f"output={tmp_path / 'o'}"))


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_a_tampered_tar_gives_error_rows_and_no_duplicate_labels(annotated_set: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(annotated_set / "shards", shards)

    def members_of(path: Path) -> list[tuple[str, bytes]]:
        with tarfile.open(path) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]

    # a shard of two samples: the first is duplicated, the second's bytes are replaced
    target = next(p for p in sorted(shards.glob("shard-*.tar")) if len(members_of(p)) == 4)
    members = members_of(target)
    keys = sorted({name.split(".", 1)[0] for name, _ in members})
    other_jpeg = make_images(1, seed=99, width=160, height=120, persons=(1, 1))[0].data
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            changed = name == f"{keys[1]}.jpg"
            _member(tar, name, other_jpeg if changed else data)  # the second image's bytes are replaced
        for name, data in members:
            if name.startswith(keys[0]):
                _member(tar, name, data)  # the first sample appended again
                _member(tar, name.replace(keys[0], "zz_extra-000000000000"), data)  # a member the index lacks
    output = tmp_path / "o"
    summary = _fake_run(_label_config(f"input.shards={shards}", f"output={output}"))
    assert summary["reconciled"]
    shard = target.stem
    errors = pq.read_table(output / "errors" / f"{shard}.parquet").to_pylist()
    reasons = {(e["key"], e["reason"]) for e in errors}
    assert (keys[0], "duplicate") in reasons
    assert ("zz_extra-000000000000", "not_in_index") in reasons
    assert (keys[1], "checksum_mismatch") in reasons
    assert (None, "checksum_mismatch") in reasons, "the tar differs from the manifest's record"
    labels = pq.read_table(output / "annotations" / f"{shard}.parquet").to_pylist()
    labels += pq.read_table(output / "rejected" / f"{shard}.parquet").to_pylist()
    sample_ids = [r["sample_id"] for r in labels]
    assert sample_ids
    assert len(sample_ids) == len(set(sample_ids))
    assert {r["image_key"] for r in labels} == {keys[0]}
    assert "read_failed" not in summary["errors_by_reason"]


# --- one pixel limit for both jobs ------------------------------------------------------------------------


def test_labeling_follows_the_pixel_limit_the_shard_set_was_made_with(annotated_set: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(annotated_set / "shards", shards)
    manifest = json.loads((shards / "_manifest.json").read_text())
    assert manifest["config"]["shard"]["max_image_pixels"] == 100_000_000  # the shard job's default
    manifest["config"]["shard"]["max_image_pixels"] = 160 * 120 - 1  # as if sharded with a limit below 160x120
    (shards / "_manifest.json").write_text(json.dumps(manifest))
    followed = _fake_run(_label_config(f"input.shards={shards}", f"output={tmp_path / 'followed'}"))
    assert followed["reconciled"]
    assert followed["counts"]["images_errored"] == followed["counts"]["images_in"] > 0
    errors = _rows(tmp_path / "followed", "errors")
    assert {e["reason"] for e in errors} == {"decompression_bomb"}
    assert all("max_image_pixels=19199" in e["error"] for e in errors)
    # An explicit input.max_image_pixels wins over the shard set's.
    explicit = _label_config(
        f"input.shards={shards}", f"output={tmp_path / 'explicit'}", "input.max_image_pixels=20000"
    )
    assert _fake_run(explicit)["counts"]["images_errored"] == 0
