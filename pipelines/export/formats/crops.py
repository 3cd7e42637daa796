"""``format=crops``: a WebDataset of square person crops, ``<sample_id>.jpg`` + ``<sample_id>.json``, for any trainer.

Each crop is the label's ``crop_bbox_xywh`` (DPMesh's square crop, black past the image border) resized to
``export.crop_size``. The JSON holds the whole annotation row (``row``: every column, as in the Parquet, full-image
pixels) and the crop frame (``crop``): ``box_xywh`` and ``size``, ``keypoints_2d`` (17, 3) and ``keypoints_44``
(44, 3) in crop pixels (missing joints stay ``(0, 0, 0)``), ``cam_int`` (3, 3) the intrinsics of the crop
(``A @ K``, see :func:`pipelines.export.crop.crop_transform`), and ``has_body_pose`` / ``has_betas`` by tier.

Member names are ``<sample_id>``s the job has checked (``<key>_p<n>``, one plain segment; the tar builder refuses
any other). A row with a null, NaN or inf in a value the crop is made from
(:data:`pipelines.export.checks.CHECKED_COLUMNS`) never reaches this writer; other non-finite values of the row
(diagnostic columns) are written as ``null``, so the JSON is strict.
"""

import json
import math
from typing import Any

import numpy as np

from pipelines.common.shard_members import encode_jpeg
from pipelines.export.crop import crop_transform, square_crop, to_crop_pixels
from pipelines.export.formats.base import TarShardWriter
from pipelines.export.records import ExportImage, ExportPerson


def keypoints_in_crop(keypoints: np.ndarray, box_xywh: np.ndarray, size: int) -> np.ndarray:
    """``(J, 3)`` full-image ``(x, y, conf)`` -> crop pixels; joints with confidence 0 stay ``(0, 0, 0)``."""
    out = to_crop_pixels(keypoints, box_xywh, size)
    out[keypoints[:, 2] <= 0] = 0.0
    return out


def _jsonable(value: Any) -> Any:
    """Row values for strict JSON: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def crop_document(person: ExportPerson, size: int) -> dict[str, Any]:
    """The ``<sample_id>.json`` of one crop (see the module docstring)."""
    box = person.crop_bbox_xywh
    return {
        "row": {k: _jsonable(v) for k, v in person.row.items()},
        "crop": {
            "box_xywh": box.tolist(),
            "size": size,
            "keypoints_2d": keypoints_in_crop(person.keypoints_2d, box, size).tolist(),
            "keypoints_44": keypoints_in_crop(person.keypoints_44, box, size).tolist(),
            "cam_int": (crop_transform(box, size) @ person.cam_int).tolist(),
        },
        "has_body_pose": person.has_smpl,
        "has_betas": person.has_smpl,
    }


class CropsWriter(TarShardWriter):
    """Writes ``<output>/<shard>.tar``: per person ``<sample_id>.jpg`` (the square crop) and ``<sample_id>.json``."""

    def add(self, image: ExportImage) -> None:
        size = self.options.crop_size
        for person in image.persons:
            crop = square_crop(image.pixels, person.crop_bbox_xywh, size)
            self.tar.add(f"{person.sample_id}.jpg", encode_jpeg(crop, self.options.jpeg_quality))
            # default=str: a column of a type JSON lacks (a hand-added binary or date column) is written as text.
            document = json.dumps(crop_document(person, size), allow_nan=False, sort_keys=True, default=str)
            self.tar.add(f"{person.sample_id}.json", document.encode())
