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
``scale``        (N,)         max(box width, height) x ``export.box_scale`` / 200 (the loader multiplies by 200)
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
Image keys name files only through :func:`~pipelines.common.safe_paths.safe_join`, for writing and for the removal
of a re-exported shard's unselected images alike; no array holds a NaN or inf (such rows never reach the writer,
:mod:`pipelines.export.checks`).
"""

import io
from typing import Any

import numpy as np

from pipelines.common.safe_paths import UnsafeName, is_valid_key, safe_join
from pipelines.export.formats.base import ShardWriter
from pipelines.export.records import ExportImage, ExportPerson
from pipelines.storage import Storage


IMAGES_FOLDER = "images"


def image_name(image_key: str) -> str:
    """``imgname`` of an image: its path relative to the export folder."""
    return f"{IMAGES_FOLDER}/{image_key}.jpg"


def label_arrays(persons: list[tuple[str, ExportPerson]], box_scale: float = 1.0) -> dict[str, np.ndarray]:
    """The npz arrays for ``(imgname, person)`` pairs (module docstring); ``box_scale``: ``export.box_scale``."""
    n = len(persons)
    people = [p for _, p in persons]

    def stack(values: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.stack(values).astype(np.float32) if values else np.zeros((0, *shape), dtype=np.float32)

    return {
        "imgname": np.array([name for name, _ in persons], dtype=str),
        "center": stack([p.center for p in people], (2,)),
        "scale": np.array([p.scale_wh(box_scale).max() for p in people], dtype=np.float32).reshape(n),
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


def image_uri(output: str, image_key: str) -> str:
    """Where an image's loose JPEG goes: ``<output>/images/<image_key>.jpg``, the key one plain segment inside
    ``output`` (:func:`safe_join`: else :class:`UnsafeName`)."""
    return safe_join(output, IMAGES_FOLDER, f"{image_key}.jpg", what="image key")


def _remove_images(storage: Storage, output: str, image_keys: set[str]) -> None:
    """Deletes the loose images of ``image_keys``: only keys of the key grammar whose path resolves inside
    ``output``; any other name is left alone (the job never passes one: it drops such index rows first)."""
    for key in sorted(image_keys):
        if not is_valid_key(key):
            continue
        try:
            uri = image_uri(output, key)
        except UnsafeName:  # e.g. a link planted in images/ that leads outside the output
            continue
        storage.delete(uri)


class CameraHmrWriter(ShardWriter):
    """Writes ``<output>/images/<image_key>.jpg`` per image and ``<output>/<shard>.npz``.

    Image paths are made with :func:`safe_join`: only a key that is one plain segment, resolving inside ``output``,
    names a file to write or, on a re-export, to delete.
    """

    SHARD_SUFFIX = ".npz"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._persons: list[tuple[str, ExportPerson]] = []
        self._written: list[str] = []

    def add(self, image: ExportImage) -> None:
        uri = image_uri(self.output, image.image_key)
        self.storage.write_bytes(uri, image.jpeg)
        self._written.append(uri)
        name = image_name(image.image_key)
        self._persons.extend((name, p) for p in image.persons)

    def remove_unselected(self, image_keys: set[str]) -> None:
        """Loose images are per image: after a relabel, an image no longer selected would stay, named by no npz."""
        _remove_images(self.storage, self.output, image_keys)

    @classmethod
    def withdraw(cls, storage: Storage, output: str, shard: str, image_keys: set[str]) -> None:
        """Removes the shard's npz, then its loose images (an npz never names a missing image)."""
        super().withdraw(storage, output, shard, image_keys)
        _remove_images(storage, output, image_keys)

    def close(self) -> list[str]:
        buffer = io.BytesIO()
        np.savez(buffer, **label_arrays(self._persons, self.options.box_scale))  # type: ignore[arg-type]
        uri = safe_join(self.output, f"{self.shard}{self.SHARD_SUFFIX}", what="shard name")
        self.storage.write_bytes(uri, buffer.getvalue())
        return [*self._written, uri]
