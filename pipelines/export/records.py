"""The typed records every export writer and the PyTorch dataset take: a shard to export, a person, an image.

:class:`ExportPerson` is built from one annotation row (``schemas.ANNOTATION_SCHEMA``) and is the one home of the
conversions all trainer formats share: the 72-d pose, the box as ``center`` / ``scale``, the intrinsics matrix,
the 44-joint keypoints and the ``has_body_pose`` / ``has_betas`` rule (:func:`smpl_supervised`).
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.export.joints44 import coco17_to_hmr44
from schemas import QualityTier, fixed_list_to_numpy


# HMR / SPIN express box sizes in units of 200 px ("scale"); 4D-Humans and CameraHMR multiply by 200 when reading.
BOX_SCALE_UNIT_PX = 200.0

LINEAGE_COLUMNS = ("shard_uri", "annotation_id", "body_model", "body_model_sha256")
"""Lineage columns (schema 1.1.0) carried into every export's per-person metadata when the labels have them."""
OCCLUSION_COLUMNS = (
    "occlusion_level",
    "n_kp_visible",
    "n_kp_occluded",
    "n_kp_missing",
    "joints_in_image_frac",
    "crowd_index",
    "crowding_iou",
    "truncation",
)
"""Occlusion columns (schema 1.1.0, plus the 1.0.0 crowding / truncation signals) carried likewise."""


def smpl_supervised(tier: str) -> bool:
    """Whether a row's SMPL parameters are exported as supervision (``has_body_pose = has_betas = 1``).

    ``gold`` and ``silver`` labels are; ``bronze`` keeps its 2D keypoints with SMPL switched off, as 4D-Humans does
    for fits it distrusts (``schemas.QualityTier``). ``reject`` rows are never exported.
    """
    return tier in (QualityTier.GOLD.value, QualityTier.SILVER.value)


@dataclass(frozen=True)
class ExportTask:
    """One shard to export: the unit of work, of commit and of resume.

    Attributes:
        name: ``shard-NNNNNN``.
        labels_uri: Its accepted rows, ``<labels>/annotations/<name>.parquet``.
        tar_uri, index_uri: The shard tar and its index Parquet (``key``, ``tar_offset``, ``bytes``, ``sha1``).
        exported_before: An earlier export of this shard is in the output (it was relabeled since): files of
            images it no longer selects are removed (see :meth:`ShardWriter.remove_unselected`).
        tar_bytes: The tar's size as listed at planning. manifest_entry: The shard set manifest's record of the tar
            (``tar_bytes``, ``tar_sha1``), None without one: with the size, what the export compares with the label
            marker's ``shard_identity`` (:func:`pipelines.export.checks.lineage_problem`).
        corpus_root: The root the shard set's images were listed under (its manifest's ``input.images``), from
            which ``format=labels`` records each image's relative ``path``; None when unknown or listed from a
            manifest of URIs (:func:`pipelines.export.release.image_path`).
        images_folder: Set for a rebuild from a labels release: the images are files under it, named by the
            release's image table at ``index_uri`` (``labels_uri`` is the release's rows, ``tar_uri`` is empty).
        near_dup_groups: With ``split=`` on labels without a ``near_dup_group`` column: ``{key: group}`` of the
            shard's images in a near-duplicate group, this shard's part of the shard set's
            ``_near_duplicates.parquet`` (read once on the driver); None otherwise (:mod:`pipelines.export.splits`).
    """

    name: str
    labels_uri: str
    tar_uri: str
    index_uri: str
    exported_before: bool = False
    tar_bytes: int = 0
    manifest_entry: dict[str, Any] | None = None
    corpus_root: str | None = None
    images_folder: str | None = None
    near_dup_groups: dict[str, str] | None = None


_ARRAY_COLUMNS = (
    "keypoints_2d", "bbox_xyxy", "crop_bbox_xywh", "global_orient", "body_pose", "betas", "transl", "principal_point",
)  # fmt: skip
"""The annotation columns an :class:`ExportPerson` holds as arrays (shapes from the schema's own types)."""


@dataclass(frozen=True)
class ExportPerson:
    """One selected person: its annotation row and the arrays every format writes (float32; pixels are full-image,
    EXIF-upright; 3D is the OpenCV camera frame in metres).

    Attributes:
        row: The annotation row as read (every column; lists for arrays), written whole by ``format=crops``.
        keypoints_2d: ``(17, 3)`` COCO-17 ``(x px, y px, conf)``.
        bbox_xyxy: ``(4,)`` the person box (px). crop_bbox_xywh: ``(4,)`` DPMesh's square crop (px, w == h).
        global_orient: ``(3,)`` axis-angle (rad). body_pose: ``(69,)`` joints 1..23 axis-angle (rad).
        betas: ``(10,)``. transl: ``(3,)`` SMPL ``transl`` (m).
        focal_length: px. principal_point: ``(2,)`` px.
    """

    row: dict[str, Any]
    keypoints_2d: np.ndarray
    bbox_xyxy: np.ndarray
    crop_bbox_xywh: np.ndarray
    global_orient: np.ndarray
    body_pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    focal_length: float
    principal_point: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> list["ExportPerson"]:
        """One per row of an annotation table: arrays through Arrow's zero-copy path (`fixed_list_to_numpy`),
        ``row`` as ``to_pylist()`` gives it (``format=crops`` writes it whole)."""
        arrays = {name: fixed_list_to_numpy(table[name]).astype(np.float32, copy=False) for name in _ARRAY_COLUMNS}
        focal = table["focal_length"].to_numpy()
        return [
            cls(row=row, focal_length=float(focal[i]), **{name: arrays[name][i] for name in _ARRAY_COLUMNS})
            for i, row in enumerate(table.to_pylist())
        ]

    @property
    def sample_id(self) -> str:
        return str(self.row["sample_id"])

    @property
    def image_key(self) -> str:
        return str(self.row["image_key"])

    @property
    def tier(self) -> str:
        return str(self.row["quality_tier"])

    @property
    def has_smpl(self) -> bool:
        """See :func:`smpl_supervised`."""
        return smpl_supervised(self.tier)

    @property
    def pose72(self) -> np.ndarray:
        """``(72,)`` SMPL pose: ``global_orient``, ``body_pose`` (4D-Humans ``body_pose``, CameraHMR ``pose_cam``)."""
        return np.concatenate([self.global_orient, self.body_pose]).astype(np.float32)

    @property
    def center(self) -> np.ndarray:
        """``(2,)`` centre of ``bbox_xyxy`` (px)."""
        return np.array(
            [(self.bbox_xyxy[0] + self.bbox_xyxy[2]) / 2, (self.bbox_xyxy[1] + self.bbox_xyxy[3]) / 2],
            dtype=np.float32,
        )

    def scale_wh(self, box_scale: float = 1.0) -> np.ndarray:
        """``(2,)`` box width and height x ``box_scale`` / 200, float32 (4D-Humans tar ``scale``; CameraHMR takes the
        max). The box is ``bbox_xyxy``, the tight person box; ``box_scale`` (``export.box_scale``) pads it about
        :attr:`center`, e.g. 1.2 as 4D-Humans' and SPIN's preprocessing scripts pad keypoint boxes. At 1.0 nothing is
        multiplied, so the default writes the bytes it always wrote."""
        size: np.ndarray = self.bbox_xyxy[2:] - self.bbox_xyxy[:2]
        if box_scale != 1.0:
            size = size * np.float32(box_scale)
        return (size / BOX_SCALE_UNIT_PX).astype(np.float32)

    @property
    def cam_int(self) -> np.ndarray:
        """``(3, 3)`` full-image intrinsics ``[[f, 0, cx], [0, f, cy], [0, 0, 1]]`` (px)."""
        cx, cy = self.principal_point
        f = self.focal_length
        return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=np.float32)

    @property
    def keypoints_44(self) -> np.ndarray:
        """``(44, 3)`` 4D-Humans / CameraHMR keypoints from ``keypoints_2d`` (see :mod:`pipelines.export.joints44`)."""
        keypoints: np.ndarray = coco17_to_hmr44(self.keypoints_2d)
        return keypoints

    def extra(self) -> dict[str, Any]:
        """Identity, verdict and whichever lineage / occlusion columns the labels carry (None-valued and non-finite
        ones dropped: metadata is never a NaN in a training file either)."""
        keys = (
            *("sample_id", "image_key", "person_idx", "shard", "source_uri", "quality_tier", "confidence", "model_id"),
            *LINEAGE_COLUMNS,
            *OCCLUSION_COLUMNS,
        )
        return {k: self.row[k] for k in keys if _finite_or_text(self.row.get(k))}


def _finite_or_text(value: Any) -> bool:
    """Whether a metadata value is worth writing: not None, and finite if it is a float."""
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


@dataclass(frozen=True)
class ImageRecord:
    """Which original file an image is: what a labels release records so that a rebuild finds it and proves it is
    the same (``schemas.RELEASE_IMAGES_SCHEMA``).

    Attributes:
        key: The sample key. path: Relative to the corpus root, ``/``-separated. source_uri: Where it was sharded
            from. sha1: Hex SHA-1 of the original bytes (the bytes decoded for this export). bytes: Their size.
    """

    key: str
    path: str
    source_uri: str
    sha1: str
    bytes: int


@dataclass(frozen=True)
class ExportImage:
    """One image with its selected persons, decoded upright.

    Attributes:
        image_key: The shard sample key (dot-free), used as the output key.
        pixels: ``(H, W, 3)`` uint8 RGB, EXIF orientation applied (the frame the labels are in).
        jpeg: ``pixels`` encoded as JPEG without EXIF, so every reader sees it upright (empty for a writer that
            writes no image, :attr:`~pipelines.export.formats.base.ShardWriter.WRITES_IMAGES`).
        persons: In ``person_idx`` order.
        record: The original file the pixels were decoded from.
    """

    image_key: str
    pixels: np.ndarray
    jpeg: bytes
    persons: list[ExportPerson]
    record: ImageRecord | None = None
