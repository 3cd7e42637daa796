"""A PyTorch dataset over a label output and its shard set: one item per selected person, a square crop + labels.

    >>> from pipelines.export.torch_dataset import LabeledPersonDataset
    >>> ds = LabeledPersonDataset("/data/labels", "/data/shards", crop_size=256, select=SelectConfig(tiers=["gold"]))
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=8, shuffle=True)

Rows are joined to their shard members once, at construction, through each shard's index (``key`` ->
``tar_offset``, ``bytes``, ``sha1``); an item then reads its image with one seek and one read in the tar (no
tar scan; on S3 or GCS one ranged GET, ``Storage.read_range``), checks the sha1, applies the EXIF orientation
(the frame the labels are in) and cuts the label's square crop. Label arrays are read from Parquet with
Arrow's flatten + ``to_numpy`` (no Python lists) and held as numpy arrays, so the dataset pickles small to
``DataLoader`` workers; local tar files are opened lazily, once per worker process.

With ``splits=SplitConfig(fractions=..., group_by=...)`` and ``split="val"`` it holds one split's persons, chosen as
``dpmesh-export split=`` chooses them (:mod:`pipelines.export.splits`: whole groups by the hash of the group id), so
a model trained from this dataset and one trained from an export hold out the same persons.

Labels and shards may be anywhere the storage layer reads (local, ``s3://``, ``gs://``). A label row's ``shard``
names a tar only through :func:`~pipelines.common.safe_paths.safe_join` (one plain segment inside ``shards``; else
``UnsafeName``, a ``ValueError``). This is the only module of :mod:`pipelines.export` that imports torch.
"""

import dataclasses
import os
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import torch

from pipelines.common.safe_paths import safe_join
from pipelines.common.shard_members import MemberRef, check_member, decode_upright, read_member_at
from pipelines.common.shard_set import index_uri_of, near_duplicate_groups
from pipelines.config import DEFAULT_MAX_IMAGE_PIXELS, SelectConfig, StorageConfig
from pipelines.config.export import SplitConfig
from pipelines.export.crop import crop_transform, square_crop
from pipelines.export.formats.crops import keypoints_in_crop
from pipelines.export.joints44 import coco17_to_hmr44
from pipelines.export.records import smpl_supervised
from pipelines.export.selection import check_selection, select_rows
from pipelines.export.splits import NEAR_DUP_COLUMN, Splitter
from pipelines.parquet_io import read_parquet_bytes
from pipelines.storage import Storage, join, parse_uri
from schemas import fixed_list_to_numpy


def column_array(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float column as an ``(N, *shape)`` float32 array (fixed-size lists through Arrow's flatten, no lists)."""
    column = table.column(name)
    values = fixed_list_to_numpy(column, shape) if shape else column.to_numpy()
    return np.array(values, dtype=np.float32)  # a writable copy: zero-copy views are read-only


class LabeledPersonDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Selected persons of ``labels`` (a ``dpmesh-label`` / ``dpmesh-refilter`` output) with their shard images.

    Args:
        labels: The label output folder (``annotations/*.parquet`` are read; rejected rows never are).
        shards: The shard set the labels were made from (``shard-NNNNNN.tar`` + index Parquet), local or on an
            object store.
        crop_size: Side ``S`` of the square crops (px).
        select: Which rows (as ``dpmesh-export select.*``); all accepted rows by default.
        storage: Storage config for reading ``labels`` and ``shards`` (local by default).
        verify: Check every image's sha1 against the shard index.
        splits, split: Hold only the persons of split ``split`` of ``splits`` (both or neither), as
            ``dpmesh-export split=`` assigns them.

    Each item is a dict:

    * ``img``: ``(3, S, S)`` uint8 RGB, the label's ``crop_bbox_xywh`` of the upright image (black past its border).
    * ``keypoints_2d``: ``(17, 3)`` COCO-17 ``(x, y, conf)`` in crop px; ``keypoints_44``: ``(44, 3)`` the
      4D-Humans / CameraHMR joints (:mod:`pipelines.export.joints44`) in crop px; missing joints are ``(0, 0, 0)``.
    * ``global_orient`` ``(3,)``, ``body_pose`` ``(69,)`` (axis-angle, rad), ``betas`` ``(10,)``, ``transl`` ``(3,)``
      (m, full-image camera, OpenCV axes).
    * ``cam_int``: ``(3, 3)`` full-image intrinsics (px); ``cam_int_crop``: ``(3, 3)`` the crop's (``A @ K``).
    * ``crop_box_xywh``: ``(4,)`` full-image px; ``has_smpl``: ``()`` 1.0 for gold / silver, 0.0 for bronze;
      ``confidence``: ``()``; ``sample_id``: str.
    """

    def __init__(
        self,
        labels: str,
        shards: str,
        *,
        crop_size: int = 256,
        select: SelectConfig | None = None,
        storage: StorageConfig | None = None,
        verify: bool = True,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        splits: SplitConfig | None = None,
        split: str | None = None,
    ) -> None:
        self.crop_size = crop_size
        self._max_pixels = max_image_pixels
        reader = Storage(storage)
        self._storage_cfg = reader.cfg
        self._storage = reader
        select = select or SelectConfig()
        tables = []
        for obj in reader.list(join(labels, "annotations")):
            if obj.uri.endswith(".parquet"):
                shard_rows = read_parquet_bytes(reader.read_bytes(obj.uri))
                check_selection(select, shard_rows.schema)  # e.g. occlusion levels asked of labels without them
                tables.append(select_rows(shard_rows, select))
        table = pa.concat_tables(tables, promote_options="default") if tables else None
        if table is not None and (splits is not None or split is not None):
            table = _one_split(reader, shards, table, splits, split)
        if table is None or table.num_rows == 0:
            raise ValueError(f"no selected rows under {join(labels, 'annotations')}")
        shard_of, key_of = table.column("shard").to_pylist(), table.column("image_key").to_pylist()
        self._tars: list[str] = []
        members: dict[str, dict[str, MemberRef]] = {}
        tar_number: dict[str, int] = {}
        for shard in sorted(set(shard_of)):
            tar = safe_join(shards, f"{shard}.tar", what="label row shard")  # a name from data: one plain segment
            index = read_parquet_bytes(reader.read_bytes(index_uri_of(tar))).to_pylist()
            members[shard] = {row["key"]: MemberRef.from_index_row(row) for row in index}
            tar_number[shard] = len(self._tars)
            self._tars.append(tar)
        lost = [key for shard, key in zip(shard_of, key_of, strict=True) if key not in members[shard]]
        if lost:
            raise ValueError(
                f"{len(lost)} labeled images are not in their shard index (e.g. {lost[0]}): wrong shards?"
            )
        self._refs = [members[shard][key] for shard, key in zip(shard_of, key_of, strict=True)]
        if not verify:
            self._refs = [dataclasses.replace(ref, sha1="") for ref in self._refs]
        self._tar_idx = np.array([tar_number[shard] for shard in shard_of], dtype=np.int32)
        self._sample_ids = table.column("sample_id").to_pylist()
        self._keypoints = column_array(table, "keypoints_2d", (17, 3))
        self._crop_box = column_array(table, "crop_bbox_xywh", (4,))
        self._smpl = {
            name: column_array(table, name, (size,))
            for name, size in (("global_orient", 3), ("body_pose", 69), ("betas", 10), ("transl", 3))
        }
        self._focal = column_array(table, "focal_length", ())
        self._principal = column_array(table, "principal_point", (2,))
        self._confidence = column_array(table, "confidence", ())
        self._has_smpl = np.array([smpl_supervised(t) for t in table.column("quality_tier").to_pylist()], np.float32)
        self._files: dict[int, BinaryIO] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._refs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}  # each worker opens its own handles
        return state

    def _member(self, tar: int, ref: MemberRef) -> bytes:
        """The image bytes: a seek and a read in a local tar (kept open), one ranged GET on an object store."""
        if self._pid != os.getpid():
            # A forked DataLoader worker: never share the parent's file positions, nor its HTTP connections (a
            # connection pool copied by fork would hand one process the response to another's request).
            self._files, self._pid = {}, os.getpid()
            self._storage = Storage(self._storage_cfg)
        uri = self._tars[tar]
        parsed = parse_uri(uri)
        if parsed.scheme != "file":
            return check_member(ref, self._storage.read_range(uri, ref.offset, ref.size))
        if tar not in self._files:
            self._files[tar] = open(parsed.key, "rb")  # noqa: SIM115 - kept open for the worker's lifetime
        return read_member_at(self._files[tar], ref)

    def close(self) -> None:
        """Closes the tar files this process opened."""
        for file in self._files.values():
            file.close()
        self._files = {}

    def __getitem__(self, i: int) -> dict[str, Any]:
        ref = self._refs[i]
        data = self._member(int(self._tar_idx[i]), ref)
        pixels = decode_upright(data, max_image_pixels=self._max_pixels)
        box, size = self._crop_box[i], self.crop_size
        crop = square_crop(pixels, box, size)
        f, (cx, cy) = float(self._focal[i]), self._principal[i]
        cam_int = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=np.float32)
        item: dict[str, Any] = {
            "img": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "keypoints_2d": torch.from_numpy(keypoints_in_crop(self._keypoints[i], box, size)),
            "keypoints_44": torch.from_numpy(keypoints_in_crop(coco17_to_hmr44(self._keypoints[i]), box, size)),
            **{name: torch.from_numpy(values[i].copy()) for name, values in self._smpl.items()},
            "cam_int": torch.from_numpy(cam_int),
            "cam_int_crop": torch.from_numpy(crop_transform(box, size) @ cam_int),
            "crop_box_xywh": torch.from_numpy(box.copy()),
            "has_smpl": torch.tensor(self._has_smpl[i]),
            "confidence": torch.tensor(self._confidence[i]),
            "sample_id": self._sample_ids[i],
        }
        return item


def _one_split(
    reader: Storage, shards: str, table: pa.Table, splits: SplitConfig | None, split: str | None
) -> pa.Table:
    """The rows of ``table`` in split ``split`` of ``splits``: groups from the rows' ``near_dup_group``, or from the
    shard set's near-duplicate file for labels without that column (:mod:`pipelines.export.splits`).

    Raises:
        ValueError: one of ``splits`` and ``split`` without the other, or a split ``splits`` does not name.
    """
    if splits is None or not splits.enabled or split is None:
        raise ValueError("splits= and split= go together: SplitConfig(fractions=...) and the name of one split")
    splitter = Splitter(splits)
    if split not in splitter.names:
        raise ValueError(f"split={split!r} is not one of {', '.join(splitter.names)}")
    keys, uris = table.column("image_key").to_pylist(), table.column("source_uri").to_pylist()
    if NEAR_DUP_COLUMN in table.column_names:
        near = table.column(NEAR_DUP_COLUMN).to_pylist()
    else:
        groups = {key: group for part in near_duplicate_groups(reader, shards).values() for key, group in part.items()}
        near = [groups.get(key) for key in keys]
    keep = [
        splitter.split_of(splitter.group_of(key, uri, group)[0]) == split
        for key, uri, group in zip(keys, uris, near, strict=True)
    ]
    return table.filter(pa.array(keep, type=pa.bool_()))
