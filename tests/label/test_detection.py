"""The detection stage's pieces: geometry of the top-down crop, handlers on tiny models, records, config."""

from pathlib import Path

import numpy as np
import pytest

from pipelines.config import ConfigError, DetectorConfig, DetectorName, LabelJobConfig, compose_config
from pipelines.config.storage import StorageConfig
from pipelines.label.detection.handlers import KeypointHandler, PersonDetectorHandler
from pipelines.label.detection.models import decode_heatmaps
from pipelines.label.detection.person_crops import box_center_scale, crop_person
from pipelines.label.detection.records import (
    DetectedPerson,
    DetectionFailure,
    ImageBatch,
    ImageDetections,
    ModelUsed,
    PoseBatch,
    PoseItem,
    assemble,
)
from pipelines.label.detection.shard_detector import needs_detection
from pipelines.label.persons import AnnotatedPerson
from tests.fakes.tiny_detectors import POSE_INPUT_HW, save_tiny_detector, save_tiny_pose


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory: pytest.TempPathFactory) -> DetectorConfig:
    root = tmp_path_factory.mktemp("tiny")
    return DetectorConfig(
        name=DetectorName.vitpose,
        detector_model=save_tiny_detector(root / "det"),
        pose_model=save_tiny_pose(root / "pose"),
        max_persons=3,
    )


def test_crop_and_heatmap_decoding_round_trip_to_image_pixels() -> None:
    """A dot in the image lands in the crop where the heatmap decoder maps it back to the same pixel."""
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    image[100, 150] = 255
    box = np.array([120.0, 60.0, 200.0, 180.0], dtype=np.float32)
    center, scale = box_center_scale(box, POSE_INPUT_HW)
    assert scale[1] / scale[0] == pytest.approx(POSE_INPUT_HW[0] / POSE_INPUT_HW[1])  # padded to the aspect
    assert scale[1] * 200 == pytest.approx(120 * 1.25)
    crop = crop_person(image, center, scale, POSE_INPUT_HW)
    assert crop.shape == (*POSE_INPUT_HW, 3)
    y, x = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
    # Heatmaps are the crop at 1/4 resolution with the same corners: put the peak at the crop's dot.
    h, w = POSE_INPUT_HW[0] // 4, POSE_INPUT_HW[1] // 4
    heatmaps = np.zeros((1, 17, h, w), dtype=np.float32)
    heatmaps[0, :, round(y * (h - 1) / (POSE_INPUT_HW[0] - 1)), round(x * (w - 1) / (POSE_INPUT_HW[1] - 1))] = 0.8
    keypoints = decode_heatmaps(heatmaps, center[None], scale[None])
    assert keypoints.shape == (1, 17, 3)
    cell = scale * 200 / (np.array([w, h]) - 1)  # one heatmap cell in image px
    assert np.all(np.abs(keypoints[0, :, :2] - [150, 100]) <= cell)
    assert np.allclose(keypoints[0, :, 2], 0.8)


def test_handlers_run_every_method_on_tiny_models(tiny_cfg: DetectorConfig) -> None:
    """Like Beam's handler compatibility test: every ModelHandler method, on the real classes at tiny size."""
    detector = PersonDetectorHandler(tiny_cfg, StorageConfig())
    model = detector.load_model()
    images = (np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8),) * 2
    batch = ImageBatch("shard-000000/000000", "shard-000000", ("a", "b"), images)
    (result,) = detector.run_inference([batch], model)
    assert result.example is batch
    assert result.model_id.startswith(tiny_cfg.detector_model)
    first, second = result.inference
    assert first.key == "a"
    assert 0 < len(first.boxes) <= 3
    assert np.all(np.diff(first.scores) <= 0)
    assert np.all(first.scores >= tiny_cfg.min_score)
    assert np.all((first.boxes[:, 2:] <= [160, 120]) & (first.boxes[:, :2] >= 0))
    np.testing.assert_allclose(first.boxes, second.boxes, atol=1e-3)  # same image (batch position rounds)
    assert detector.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 1}
    assert detector.share_model_across_processes() is False  # CPU
    assert detector.get_num_bytes([batch]) == 2 * images[0].nbytes
    assert detector.get_metrics_namespace() == "dpmesh_detection"

    pose = KeypointHandler(tiny_cfg, StorageConfig())
    pose_model = pose.load_model()
    assert pose_model.input_hw() == POSE_INPUT_HW
    items = []
    for idx, (box, score) in enumerate(zip(first.boxes, first.scores, strict=True)):
        center, scale = box_center_scale(box, POSE_INPUT_HW)
        crop = crop_person(images[0], center, scale, POSE_INPUT_HW)
        items.append(PoseItem("a", idx, len(first.boxes), crop, center, scale, box, float(score)))
    (posed,) = pose.run_inference([PoseBatch("shard-000000/000000/0000", "shard-000000", tuple(items))], pose_model)
    persons = posed.inference
    assert [p.box_idx for p in persons] == list(range(len(items)))
    kp = persons[0].person.keypoints_2d
    assert kp.shape == (17, 3)
    assert np.all((kp[:, 2] >= 0) & (kp[:, 2] <= 1))
    assert persons[0].person.det_score == pytest.approx(float(first.scores[0]))


def test_assemble_orders_persons_and_turns_incomplete_images_into_errors() -> None:
    def person(score: float) -> AnnotatedPerson:
        return AnnotatedPerson(np.zeros(4, np.float32), np.zeros((17, 3), np.float32), score)

    records = [
        DetectedPerson("b", 1, 2, person(0.6)),
        ModelUsed("pose", "p@1"),
        DetectedPerson("b", 0, 2, person(0.9)),
        DetectedPerson("c", 0, 2, person(0.9)),  # its second person never came back
        ImageDetections("a"),
        DetectionFailure("d", "RuntimeError: out of memory"),
        ModelUsed("detector", "d@1"),
    ]
    result = assemble(records)
    assert list(result.images) == ["a", "b", "c", "d"]
    assert result.images["a"].persons == ()
    assert result.images["a"].error is None
    assert [p.det_score for p in result.images["b"].persons] == [0.9, 0.6]
    assert result.images["c"].error
    assert result.images["c"].persons == ()
    assert result.images["d"].error == "RuntimeError: out of memory"
    assert result.models == {"detector": "d@1", "pose": "p@1"}


def test_which_samples_need_detection() -> None:
    assert needs_detection(DetectorName.vitpose, {"annotated": True})
    assert needs_detection(DetectorName.auto, {"annotated": False})
    assert not needs_detection(DetectorName.auto, {"annotated": True, "persons": []})
    assert not needs_detection(DetectorName.annotations, {})


def test_detector_configs_compose_and_bad_values_fail_at_launch(tmp_path: Path) -> None:
    base = ["input.shards=x", f"output={tmp_path}"]
    cfg = compose_config("dpmesh_label", [*base, "detector=vitpose"], LabelJobConfig)
    assert cfg.detector.name == DetectorName.vitpose
    assert cfg.detector.detects
    assert cfg.detector.detector_model == "PekingU/rtdetr_r50vd_coco_o365"
    assert cfg.detector.pose_model == "usyd-community/vitpose-base-simple"
    assert compose_config("dpmesh_label", [*base, "detector=auto"], LabelJobConfig).detector.name == DetectorName.auto
    assert not compose_config("dpmesh_label", base, LabelJobConfig).detector.detects
    with pytest.raises(ConfigError, match=r"detector\.min_score"):
        compose_config("dpmesh_label", [*base, "detector=vitpose", "detector.min_score=2"], LabelJobConfig)
    with pytest.raises(ConfigError, match=r"detector\.batch_size"):
        compose_config("dpmesh_label", [*base, "detector=vitpose", "detector.batch_size=0"], LabelJobConfig)
