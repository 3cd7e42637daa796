"""Unit tests of the labeling building blocks: decoding, shard streaming, persons, tasks, handler, filter config."""

import dataclasses
import io
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from dpmesh_core.confidence import FilterThresholds, default_thresholds, strict_thresholds
from dpmesh_core.config import tiny_config
from pipelines.common.image_decode import ImageDecodeError, decode_rgb
from pipelines.common.label_filter import filter_thresholds
from pipelines.common.label_units import ShardReport, ShardTask, shard_marker
from pipelines.common.shard_members import ShardReadError, iter_shard_samples
from pipelines.config import (
    ConfigError,
    Device,
    FilterConfig,
    FilterPreset,
    LabelJobConfig,
    ModelConfig,
    ModelName,
    compose_config,
)
from pipelines.config.storage import StorageConfig
from pipelines.label.model_handler import DPMeshModelHandler, check_device, load_model
from pipelines.label.persons import PersonBatch, PersonTask, person_from_json, prepare_tasks
from pipelines.label.records import LabeledPerson
from tests.fakes.corpus import draw_scene


TINY = tiny_config().crop_geometry  # 128² crops, 16-grid keypoints


def _encoded(mode: str, size: tuple[int, int] = (40, 30), orientation: int | None = None, fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", size, (200, 100, 50)).convert(mode)
    buffer = io.BytesIO()
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# --- decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_decode_rgb_gives_uint8_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    array = decode_rgb(_encoded(mode, fmt=fmt), max_image_pixels=10**6)
    assert array.shape == (30, 40, 3)
    assert array.dtype == np.uint8


def test_decode_rgb_scales_16_bit_instead_of_clipping() -> None:
    image = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    assert decode_rgb(buffer.getvalue(), max_image_pixels=100).max() == 255
    half = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    buffer = io.BytesIO()
    half.save(buffer, "PNG")
    assert decode_rgb(buffer.getvalue(), max_image_pixels=100).max() == 128


def test_decode_rgb_applies_exif_orientation() -> None:
    assert decode_rgb(_encoded("RGB", orientation=6, fmt="JPEG"), max_image_pixels=10**6).shape == (40, 30, 3)


@pytest.mark.parametrize(("data", "reason"), [(b"junk", "corrupt_image"), (b"", "corrupt_image")])
def test_decode_rgb_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data, max_image_pixels=10**6)
    assert info.value.reason == reason


def test_decode_rgb_refuses_decompression_bombs() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(_encoded("RGB", size=(100, 100)), max_image_pixels=5000)
    assert info.value.reason == "decompression_bomb"


# --- shard streaming ---------------------------------------------------------------------------------


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_iter_shard_samples_groups_members_by_key() -> None:
    data = _tar([("a.jpg", b"1"), ("a.json", b"{}"), ("b.png", b"2"), ("b.json", b"{}")])
    samples = list(iter_shard_samples(io.BytesIO(data)))
    assert [(s.key, sorted(s.members)) for s in samples] == [("a", ["jpg", "json"]), ("b", ["json", "png"])]
    assert samples[1].image_bytes() == b"2"


def test_iter_shard_samples_reports_truncation_after_yielding_what_it_read() -> None:
    # Cut inside a member's data. (A cut exactly at a member boundary looks like a proper end to a tar stream;
    # the labeling reader catches that case by checking the shard's index, see the integration tests.)
    data = _tar([(f"k{i}.jpg", bytes(2000)) for i in range(6)])[: 5 * 2560 + 1200]
    seen: list[str] = []

    def consume() -> None:
        for sample in iter_shard_samples(io.BytesIO(data)):
            seen.append(sample.key)

    with pytest.raises(ShardReadError) as info:
        consume()
    assert seen[:2] == ["k0", "k1"]
    assert info.value.samples_read >= 2


# --- persons and tasks -------------------------------------------------------------------------------


def test_person_from_json_maps_coco_visibility_and_falls_back_to_keypoint_box() -> None:
    keypoints = [[10.0 + i, 20.0 + i, [0, 1, 2][i % 3]] for i in range(17)]
    person = person_from_json({"keypoints": keypoints})
    assert person.keypoints_2d[:3, 2].tolist() == [0.0, 0.5, 1.0]
    assert person.bbox_xyxy.tolist() == [11.0, 21.0, 26.0, 36.0]  # extent of the labelled keypoints
    boxed = person_from_json({"keypoints": keypoints, "bbox_xywh": [1, 2, 3, 4]})
    assert boxed.bbox_xyxy.tolist() == [1.0, 2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="shape"):
        person_from_json({"keypoints": keypoints[:5]})


def test_prepare_tasks_turns_invalid_persons_into_errors_and_records_neighbours() -> None:
    image, people = draw_scene(np.random.default_rng(0), 320, 240, 2)
    persons = [
        (i, person_from_json({"keypoints": p["keypoints"], "bbox_xywh": p["bbox"]})) for i, p in enumerate(people)
    ]
    empty = person_from_json({"keypoints": [[0.0, 0.0, 0]] * 17})
    nan = dataclasses.replace(persons[0][1], keypoints_2d=persons[0][1].keypoints_2d.copy())
    nan.keypoints_2d[3, 0] = np.nan
    indexed = [*persons, (5, empty), (6, nan)]
    results = dict(
        prepare_tasks(
            np.asarray(image),
            indexed,
            shard="shard-000001",
            image_key="k",
            source_uri="u",
            source="annotations",
            geometry=TINY,
        )
    )
    assert isinstance(results[0], PersonTask)
    assert results[0].sample_id == "k_p0"
    assert results[0].other_boxes.shape == (3, 4)
    assert results[0].inputs.image.shape == (3, 128, 128)  # cut at the geometry given: the tiny model's crops
    assert getattr(results[5], "reason", None) == "no_valid_keypoints"
    assert getattr(results[6], "reason", None) == "nonfinite_keypoints"


def test_shard_marker_reconciles_and_records_the_shard_identity() -> None:
    report = ShardReport(Counter({"images_in": 3, "images_ok": 2, "images_errored": 1, "persons_in": 4}), 10, "ab")
    task = ShardTask("/s/shard-000001.tar", "shard-000001", {"tar_bytes": 10, "tar_sha1": "ab"})
    rows = [{"reasons": [], "quality_tier": "gold"}]
    rejected = [{"reasons": ["small_box"], "quality_tier": "reject"}]
    errors = [
        {"person_idx": 1, "stage": "label.decode", "reason": "corrupt_image"},
        {"person_idx": 2, "stage": "label.decode", "reason": "corrupt_image"},
        {"person_idx": None, "stage": "label.decode", "reason": "invalid_annotation"},
    ]
    marker = shard_marker(task, report, rows, rejected, errors, {"config_hash": "h"})
    assert marker["reconciled"] is True
    assert marker["counts"]["persons_errored"] == 2
    assert marker["rejected_by_reason"] == {"small_box": 1}
    assert marker["shard_identity"] == {"tar_bytes": 10, "tar_sha1": "ab"}
    assert marker["tar_read"] == {"tar_bytes": 10, "tar_sha1": "ab"}
    assert not shard_marker(task, report, rows, [], errors, {})["reconciled"]


# --- filter configuration ----------------------------------------------------------------------------


def test_filter_config_mirrors_every_threshold() -> None:
    mirrored = {f.name for f in dataclasses.fields(FilterConfig)} - {"preset", "flip_consistency", "calibration"}
    assert mirrored == {f.name for f in dataclasses.fields(FilterThresholds)}


def test_filter_thresholds_from_presets_and_overrides() -> None:
    assert filter_thresholds(FilterConfig()) == default_thresholds()
    assert filter_thresholds(FilterConfig(preset=FilterPreset.strict)) == strict_thresholds()
    assert filter_thresholds(FilterConfig(preset=FilterPreset.strict, max_betas_abs=2.5)).max_betas_abs == 2.5
    with pytest.raises(ConfigError, match=r"filter\.gold_min"):
        filter_thresholds(FilterConfig(gold_min=2.0))


def test_label_config_composes_every_group_and_validates_the_model() -> None:
    for overrides in (["filter=strict"], ["filter=off"], ["model=tiny"], ["runner=portable", "storage=s3"]):
        cfg = compose_config("dpmesh_label", ["input.shards=/s", "output=/o", *overrides], LabelJobConfig)
        assert cfg.input.shards == "/s"
    assert (
        compose_config("dpmesh_label", ["input.shards=/s", "output=/o", "filter=off"], LabelJobConfig).filter.preset
        == FilterPreset.off
    )
    with pytest.raises(ConfigError, match=r"exactly one of model\.checkpoint"):
        compose_config("dpmesh_label", ["input.shards=/s", "output=/o", "model=dpmesh"], LabelJobConfig)


# --- model handler -----------------------------------------------------------------------------------


def test_model_handler_runs_the_tiny_model_and_shares_only_on_gpu() -> None:
    cfg = ModelConfig(name=ModelName.tiny, batch_size=4)
    handler = DPMeshModelHandler(cfg, StorageConfig())
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 1}
    assert handler.share_model_across_processes() is False
    assert DPMeshModelHandler(
        dataclasses.replace(cfg, device=Device.cuda), StorageConfig()
    ).share_model_across_processes()
    assert handler.get_metrics_namespace() == "dpmesh"
    image, people = draw_scene(np.random.default_rng(1), 320, 240, 2)
    persons = [(i, person_from_json({"keypoints": p["keypoints"]})) for i, p in enumerate(people)]
    tasks = [
        t
        for _, t in prepare_tasks(
            np.asarray(image), persons, shard="s", image_key="k", source_uri="u", source="annotations", geometry=TINY
        )
    ]
    model = handler.load_model()
    assert model.crop_geometry() == TINY  # what the shard reader cuts crops with
    batches = [PersonBatch("s/000000", tuple(tasks)), PersonBatch("s/000001", tuple(tasks[:1]))]
    results = list(handler.run_inference(batches, model))
    assert [r.example for r in results] == ["s/000000", "s/000001"]
    assert [[p.task.sample_id for p in r.inference] for r in results] == [["k_p0", "k_p1"], ["k_p0"]]
    labeled = results[0].inference[0]
    assert isinstance(labeled, LabeledPerson)
    assert labeled.prediction.body_pose.shape == (69,)
    assert labeled.task.inputs.image.size == 0  # the crop is dropped after inference
    assert results[0].model_id == "tiny-seed0"
    assert handler.get_num_bytes(batches) == 3 * 3 * 128 * 128 * 4  # float32 128² crops


def test_model_handler_loads_converted_weights(tmp_path) -> None:
    from dpmesh_core.model import DPMesh

    DPMesh.tiny(seed=3).save_pretrained(tmp_path / "weights")
    cfg = ModelConfig(name=ModelName.dpmesh, pretrained=str(tmp_path / "weights"))
    model = load_model(cfg, StorageConfig())
    reference = DPMesh.tiny(seed=3)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU failure")
def test_cuda_without_a_gpu_fails_instead_of_falling_back() -> None:
    with pytest.raises(ConfigError, match=r"model\.device=cpu"):
        check_device(ModelConfig(device=Device.cuda))


def test_flip_consistency_is_measured_per_person_in_the_handler_and_repeatable() -> None:
    image, people = draw_scene(np.random.default_rng(2), 320, 240, 2)
    persons = [(i, person_from_json({"keypoints": p["keypoints"]})) for i, p in enumerate(people)]
    tasks = [
        t
        for _, t in prepare_tasks(
            np.asarray(image), persons, shard="s", image_key="k", source_uri="u", source="annotations", geometry=TINY
        )
    ]
    handler = DPMeshModelHandler(ModelConfig(name=ModelName.tiny), StorageConfig(), flip_consistency=True)
    model = handler.load_model()
    (result,) = handler.run_inference([PersonBatch("s/000000", tuple(tasks))], model)
    flips = [p.flip_pa_mpjpe_mm for p in result.inference]
    assert all(f is not None and np.isfinite(f) and f > 0 for f in flips)  # random weights are not mirror-symmetric
    # Deterministic: the mirrored pass gives the same PA-MPJPE when run again on the same inputs.
    _, again = model.predict([t.inputs for t in tasks], True)
    assert again == pytest.approx(flips)


def test_progress_reads_each_marker_once(tmp_path, caplog) -> None:
    import json
    import logging
    import time

    from pipelines.label.progress import ProgressReporter
    from pipelines.storage import Storage

    reads: list[str] = []

    class CountingStorage(Storage):
        def read_bytes(self, uri: str) -> bytes:
            reads.append(uri)
            return super().read_bytes(uri)

    done = tmp_path / "_done"
    done.mkdir()
    for name, persons in (("shard-000000", 3), ("shard-000001", 4), ("shard-000009", 50)):
        (done / f"{name}.json").write_text(json.dumps({"shard": name, "counts": {"persons_in": persons}}))
    storage = CountingStorage(StorageConfig())
    pending = ["shard-000000", "shard-000001"]
    reporter = ProgressReporter(storage, str(tmp_path), pending, interval_s=0)  # 0: no thread; polled here
    with caplog.at_level(logging.INFO, logger="pipelines.label.progress"), reporter:
        reporter.poll()
        assert "progress: 2/2 shards done, 7 persons" in caplog.text  # shard-000009 is not part of this run
        reporter.poll()
    assert sorted(reads) == sorted(str(done / f"shard-00000{i}.json") for i in (0, 1)), "each marker read once"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines.label.progress"):
        with ProgressReporter(storage, str(tmp_path), pending, interval_s=0.01):  # its own thread polls
            deadline = time.monotonic() + 30
            while "progress: 2/2 shards done" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
        assert "progress: 2/2 shards done, 7 persons" in caplog.text


def test_batch_persons_cuts_fixed_batches_in_order_and_passes_other_outputs_through() -> None:
    import apache_beam as beam

    from pipelines.label.label_shard import batch_persons

    image, people = draw_scene(np.random.default_rng(3), 320, 240, 5)
    persons = [(i, person_from_json({"keypoints": p["keypoints"]})) for i, p in enumerate(people)]
    tasks = [
        t
        for _, t in prepare_tasks(
            np.asarray(image), persons, shard="s", image_key="k", source_uri="u", source="annotations", geometry=TINY
        )
    ]
    error = beam.pvalue.TaggedOutput("errors", ("s", {"reason": "x"}))
    out = list(batch_persons("s", [tasks[0], error, *tasks[1:]], batch_size=2))
    batches = [o for o in out if isinstance(o, PersonBatch)]
    assert [b.batch_id for b in batches] == ["s/000000", "s/000001", "s/000002"]
    assert [[t.sample_id for t in b.tasks] for b in batches] == [["k_p0", "k_p1"], ["k_p2", "k_p3"], ["k_p4"]]
    assert error in out


def test_markers_come_from_the_index_where_it_has_them_and_are_read_otherwise(tmp_path, monkeypatch) -> None:
    import json

    from pipelines.common.label_set import read_markers, write_index
    from pipelines.storage import Storage

    storage = Storage()
    done = tmp_path / "_done"
    done.mkdir()
    for i in range(3):
        marker = {"shard": f"shard-00000{i}", "shard_identity": {"tar_bytes": i}, "counts": {"persons_in": i}}
        (done / f"shard-00000{i}.json").write_text(json.dumps({**marker, "unindexed": True}))
    write_index(storage, str(tmp_path), read_markers(storage, str(tmp_path)))
    (done / "shard-000003.json").write_text(json.dumps({"shard": "shard-000003", "counts": {"persons_in": 3}}))
    (done / "shard-000000.json").unlink()  # deleted by hand: its index entry must not resurrect it
    reads: list[str] = []
    original = Storage.read_bytes
    monkeypatch.setattr(Storage, "read_bytes", lambda self, uri: reads.append(uri) or original(self, uri))
    markers = read_markers(storage, str(tmp_path))
    assert sorted(markers) == ["shard-000001", "shard-000002", "shard-000003"]
    assert [uri.rsplit("/", 1)[-1] for uri in reads] == ["_done_index.json.gz", "shard-000003.json"]
    assert "unindexed" not in markers["shard-000001"]  # the index keeps the fields planning and summaries use
    reads.clear()
    just_written = {"shard": "shard-000001", "counts": {"persons_in": 9}}
    fresh = read_markers(storage, str(tmp_path), known={"shard-000001": just_written})
    assert fresh["shard-000001"] == just_written, "what this run wrote wins over the index"
    assert [uri.rsplit("/", 1)[-1] for uri in reads] == ["_done_index.json.gz", "shard-000003.json"], "no GET"
