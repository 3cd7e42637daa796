"""Annotation ingest: COCO, CrowdPose and AI Challenger files (hand-written) mapped to COCO-17."""

import json

import pytest

from pipelines.shard.annotation_formats import (
    AIC_JOINTS,
    COCO17_INDEX,
    CROWDPOSE_JOINTS,
    AnnotationFormat,
    detect_format,
    parse_annotations,
)
from pipelines.shard.steps import read_annotations


def _by_joint(person: dict) -> dict[str, list[float]]:
    return {name: person["keypoints"][i] for name, i in COCO17_INDEX.items()}


def _crowdpose_doc() -> dict:
    # Joint j of the file sits at (100 + j, 200 + j) with visibility 2, except the right wrist (occluded, 1)
    # and the left knee (not labelled, 0).
    keypoints = []
    for j, name in enumerate(CROWDPOSE_JOINTS):
        v = {"right_wrist": 1, "left_knee": 0}.get(name, 2)
        keypoints += [100 + j, 200 + j, v] if v else [0, 0, 0]
    return {
        "images": [{"id": 7, "file_name": "crowd/000007.jpg"}, {"id": 8, "file_name": "000008.jpg"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "bbox": [90, 190, 40, 50],
                "keypoints": keypoints,
                "iscrowd": 0,
            },
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "keypoints": keypoints[:-3]},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }


def test_crowdpose_joints_map_to_coco17_and_missing_joints_are_invalid() -> None:
    content = json.dumps(_crowdpose_doc()).encode()
    parsed = {a.file_name: a for a in parse_annotations(content, "crowdpose")}
    (person,) = parsed["crowd/000007.jpg"].persons
    joints = _by_joint(person)
    assert joints["left_shoulder"] == [100, 200, 2]  # CrowdPose joint 0
    assert joints["right_shoulder"] == [101, 201, 2]
    assert joints["right_wrist"] == [105, 205, 1]
    assert joints["left_hip"] == [106, 206, 2]
    assert joints["left_knee"] == [0, 0, 0]  # not labelled in the file
    assert joints["right_ankle"] == [111, 211, 2]  # CrowdPose joint 11
    for face in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
        assert joints[face] == [0, 0, 0]  # COCO joints CrowdPose lacks
    assert person["num_keypoints"] == 11  # 12 body joints, one unlabelled; head and neck dropped
    (problem,) = parsed["crowd/000007.jpg"].problems  # the 13-joint person
    assert problem.reason == "invalid_annotation"
    assert "42" in problem.message
    assert parsed["000008.jpg"].persons == ()


def _aic_doc() -> list:
    # Joint j at (10 * j, 5 * j); right_elbow occluded (2), left_ankle not labelled (3), the rest visible (1).
    keypoints = []
    for j, name in enumerate(AIC_JOINTS):
        keypoints += [10 * j, 5 * j, {"right_elbow": 2, "left_ankle": 3}.get(name, 1)]
    return [
        {
            "image_id": "0a1b2c",
            "human_annotations": {"human1": [5, 6, 105, 206], "human2": [0, 0, 10, 10], "human10": [1, 1, 2, 2]},
            "keypoint_annotations": {
                "human1": keypoints,
                "human2": [*keypoints[:-1], 4],  # visibility 4 does not exist
                "human10": keypoints,
            },
        },
        {"image_id": "ffff", "human_annotations": {}, "keypoint_annotations": {}},
    ]


def test_ai_challenger_joints_and_visibility_map_to_coco17() -> None:
    parsed = {a.file_name: a for a in parse_annotations(json.dumps(_aic_doc()).encode(), "aic")}
    annotations = parsed["0a1b2c.jpg"]
    assert [p["annotation_id"] for p in annotations.persons] == ["human1", "human10"]  # numeric order
    person = annotations.persons[0]
    assert person["bbox_xywh"] == [5, 6, 100, 200]
    joints = _by_joint(person)
    assert joints["right_shoulder"] == [0, 0, 2]  # AIC joint 0, visible
    assert joints["right_elbow"] == [10, 5, 1]  # occluded -> COCO 1
    assert joints["right_wrist"] == [20, 10, 2]
    assert joints["left_shoulder"] == [30, 15, 2]
    assert joints["left_wrist"] == [50, 25, 2]
    assert joints["right_hip"] == [60, 30, 2]
    assert joints["right_ankle"] == [80, 40, 2]
    assert joints["left_hip"] == [90, 45, 2]
    assert joints["left_knee"] == [100, 50, 2]
    assert joints["left_ankle"] == [0, 0, 0]  # not labelled -> invalid
    assert joints["nose"] == [0, 0, 0]
    (problem,) = annotations.problems
    assert problem.annotation_id == "human2"
    assert "visibility" in problem.message
    assert parsed["ffff.jpg"].persons == ()


def test_coco_files_parse_as_before() -> None:
    keypoints = [v for j in range(17) for v in (j, 2 * j, 2)]
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "keypoints": keypoints}],
        "categories": [{"id": 1, "name": "person"}],
    }
    (parsed,) = parse_annotations(json.dumps(doc).encode(), "coco")
    assert parsed.persons[0]["keypoints"][16] == [16, 32, 2]
    assert detect_format(doc) == AnnotationFormat.coco


def test_auto_detects_unambiguous_formats_and_refuses_mixed_ones() -> None:
    assert detect_format(_crowdpose_doc()) == AnnotationFormat.crowdpose  # despite its malformed 13-joint person
    assert detect_format(_aic_doc()) == AnnotationFormat.aic
    mixed = _crowdpose_doc()
    mixed["annotations"].append({"id": 9, "image_id": 8, "keypoints": [0] * 51, "bbox": [0, 0, 1, 1]})
    with pytest.raises(ValueError, match="annotation_format"):
        detect_format(mixed)
    with pytest.raises(ValueError, match="annotation_format"):
        detect_format([{"not": "aic"}])


def test_read_annotations_joins_by_base_name_in_any_format(tmp_path) -> None:
    from pipelines.config.storage import StorageConfig

    path = tmp_path / "aic.json"
    path.write_text(json.dumps(_aic_doc()))
    joined = dict(read_annotations(str(path), StorageConfig()))
    assert set(joined) == {"0a1b2c.jpg", "ffff.jpg"}
    crowd = tmp_path / "crowd.json"
    crowd.write_text(json.dumps(_crowdpose_doc()))
    assert set(dict(read_annotations(str(crowd), StorageConfig(), "crowdpose"))) == {"000007.jpg", "000008.jpg"}
