"""``format=camerahmr``: one CameraHMR label npz per shard, plus the upright images as loose JPEGs.

Layout read by CameraHMR's ``DatasetTrain`` (``core/datasets/dataset_train.py``): ``np.load(npz)`` and images at
``os.path.join(img_dir, imgname)`` read with ``cv2.imread(..., IMREAD_IGNORE_ORIENTATION)`` (so they must be stored
upright: EXIF is baked here). Point its ``DATASET_FOLDERS`` entry at the export folder and ``DATASET_FILES`` at the
npz. Arrays, one row per person (float32 unless noted):

===============  ===========  ==========================================================================
key              shape        value
===============  ===========  ==========================================================================
``imgname``      (N,) str     ``images/<image_key>.jpg``, relative to the export folder
``center``       (N, 2)       centre of ``bbox_xyxy`` (px)
``scale``        (N,)         max(box width, height) / 200 (the loader multiplies by 200)
``pose_cam``     (N, 72)      ``global_orient`` + ``body_pose`` in the camera frame (axis-angle, rad)
``shape``        (N, 10)      ``betas``
``cam_int``      (N, 3, 3)    full-image intrinsics from ``focal_length``, ``principal_point``
``gtkps``        (N, 44, 3)   ``coco17_to_hmr44(keypoints_2d)`` in full-image px
``cam_ext``      (N, 4, 4)    identity: labels are already in the camera frame
``trans_cam``    (N, 3)       ``transl`` (m); the loader's translation is ``cam_ext[:3, 3] + trans_cam``
``has_body_pose``, ``has_betas``  (N,)  1 / 0 by tier (extra keys: CameraHMR's stock loader ignores them, so
                              export ``select.tiers=[gold,silver]`` for it)
``sample_id``, ``quality_tier``  (N,) str; ``confidence`` (N,)
===============  ===========  ==========================================================================
"""

import io
from typing import Any

import numpy as np

from pipelines.export.formats.base import ShardWriter
from pipelines.export.records import ExportImage, ExportPerson
from pipelines.storage import join


IMAGES_FOLDER = "images"


def image_name(image_key: str) -> str:
    """``imgname`` of an image: its path relative to the export folder."""
    return f"{IMAGES_FOLDER}/{image_key}.jpg"


def label_arrays(persons: list[tuple[str, ExportPerson]]) -> dict[str, np.ndarray]:
    """The npz arrays for ``(imgname, person)`` pairs (see the module docstring)."""
    n = len(persons)
    people = [p for _, p in persons]

    def stack(values: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.stack(values).astype(np.float32) if values else np.zeros((0, *shape), dtype=np.float32)

    return {
        "imgname": np.array([name for name, _ in persons], dtype=str),
        "center": stack([p.center for p in people], (2,)),
        "scale": np.array([p.scale_wh.max() for p in people], dtype=np.float32).reshape(n),
        "pose_cam": stack([p.pose72 for p in people], (72,)),
        "shape": stack([p.betas for p in people], (10,)),
        "cam_int": stack([p.cam_int for p in people], (3, 3)),
        "gtkps": stack([p.keypoints_44 for p in people], (44, 3)),
        "cam_ext": np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
        "trans_cam": stack([p.transl for p in people], (3,)),
        "has_body_pose": np.array([float(p.has_smpl) for p in people], dtype=np.float32).reshape(n),
        "has_betas": np.array([float(p.has_smpl) for p in people], dtype=np.float32).reshape(n),
        "sample_id": np.array([p.sample_id for p in people], dtype=str),
        "quality_tier": np.array([p.tier for p in people], dtype=str),
        "confidence": np.array([float(p.row["confidence"]) for p in people], dtype=np.float32).reshape(n),
    }


class CameraHmrWriter(ShardWriter):
    """Writes ``<output>/images/<image_key>.jpg`` per image and ``<output>/<shard>.npz``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._persons: list[tuple[str, ExportPerson]] = []
        self._written: list[str] = []

    def add(self, image: ExportImage) -> None:
        name = image_name(image.image_key)
        uri = join(self.output, name)
        self.storage.write_bytes(uri, image.jpeg)
        self._written.append(uri)
        self._persons.extend((name, p) for p in image.persons)

    def remove_unselected(self, image_keys: set[str]) -> None:
        """Loose images are per image: after a relabel, an image no longer selected would stay, named by no npz."""
        for key in sorted(image_keys):
            self.storage.delete(join(self.output, image_name(key)))

    def close(self) -> list[str]:
        buffer = io.BytesIO()
        np.savez(buffer, **label_arrays(self._persons))  # type: ignore[arg-type]
        uri = join(self.output, f"{self.shard}.npz")
        self.storage.write_bytes(uri, buffer.getvalue())
        return [*self._written, uri]
