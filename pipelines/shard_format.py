"""The shard format: what one sample is, how a shard tar is laid out, and how shards are cut.

A shard is a POSIX (ustar) tar holding, per sample in key order, ``<key>.<ext>`` (the original
image bytes, never re-encoded) then ``<key>.json``. Every header field that could vary between
runs (mtime, owner, permissions) is fixed, so the same samples always give the same tar bytes.
"""

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pipelines.keys import shard_name


_TAR_BLOCK = tarfile.BLOCKSIZE
_FIXED_MTIME = 0


@dataclass(frozen=True)
class ShardSample:
    """One image on its way into a shard (metadata only; bytes are read when the tar is written).

    Attributes:
        key: Sample key (dot-free).
        source_uri: Where the bytes are read from.
        sha1: Hex digest of the bytes, checked again when they are written.
        format: ``jpeg``, ``png`` or ``webp``.
        extension: Tar member extension.
        width: Width in pixels after EXIF orientation.
        height: Height in pixels after EXIF orientation.
        exif_orientation: EXIF orientation tag (1 = upright).
        bytes: Size of the image in bytes.
        relpath: Path relative to the corpus root (the annotation join uses its file name).
        annotated: Whether an annotation file covered this image.
        persons: Person annotations (see :mod:`pipelines.coco_annotations`).
    """

    key: str
    source_uri: str
    sha1: str
    format: str
    extension: str
    width: int
    height: int
    exif_orientation: int
    bytes: int
    relpath: str
    annotated: bool = False
    persons: tuple[dict[str, Any], ...] = field(default=())

    def metadata_json(self) -> bytes:
        """The ``<key>.json`` member: canonical JSON (sorted keys, no spaces), so tars are reproducible."""
        doc: dict[str, Any] = {
            "key": self.key,
            "source_uri": self.source_uri,
            "sha1": self.sha1,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "exif_orientation": self.exif_orientation,
            "bytes": self.bytes,
            "annotated": self.annotated,
        }
        if self.annotated:
            doc["persons"] = list(self.persons)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def cut_into_shards(samples: Iterable[ShardSample], *, max_samples: int, max_bytes: int) -> list[list[ShardSample]]:
    """Sort ``samples`` by key and cut them greedily into runs that respect both caps.

    A single image larger than ``max_bytes`` gets a shard of its own rather than failing.
    """
    parts: list[list[ShardSample]] = [[]]
    part_bytes = 0
    for sample in sorted(samples, key=lambda s: s.key):
        current = parts[-1]
        if current and (len(current) >= max_samples or part_bytes + sample.bytes > max_bytes):
            parts.append([])
            part_bytes = 0
        parts[-1].append(sample)
        part_bytes += sample.bytes
    return [p for p in parts if p]


def shard_id_of_part(bucket: int, part: int, num_buckets: int) -> int:
    """Shard id of the ``part``-th cut of ``bucket``: the bucket itself, then overflow ids ``bucket + k*N``."""
    return bucket + part * num_buckets


@dataclass(frozen=True)
class WrittenMember:
    """Where a sample's image landed inside the tar."""

    sample: ShardSample
    tar_member: str
    tar_offset: int


class ShardTarWriter:
    """Writes samples into a reproducible tar stream and records each image's data offset."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in close())
        self.members: list[WrittenMember] = []

    def add(self, sample: ShardSample, data: bytes) -> None:
        """Append ``<key>.<ext>`` and ``<key>.json`` for one sample."""
        member = f"{sample.key}.{sample.extension}"
        # ustar names of <= 100 characters take exactly one header block, so the data starts right after.
        offset = self._tar.offset + _TAR_BLOCK
        self._add_member(member, data)
        self._add_member(f"{sample.key}.json", sample.metadata_json())
        self.members.append(WrittenMember(sample=sample, tar_member=member, tar_offset=offset))

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = _FIXED_MTIME
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


def index_rows(members: list[WrittenMember], shard_id: int) -> list[dict[str, Any]]:
    """Rows of the shard index (schema :data:`schemas.SHARD_INDEX_SCHEMA`) for the written members."""
    name = shard_name(shard_id)
    return [
        {
            "key": m.sample.key,
            "source_uri": m.sample.source_uri,
            "sha1": m.sample.sha1,
            "format": m.sample.format,
            "width": m.sample.width,
            "height": m.sample.height,
            "exif_orientation": m.sample.exif_orientation,
            "bytes": m.sample.bytes,
            "n_persons": len(m.sample.persons),
            "annotated": m.sample.annotated,
            "shard": name,
            "tar_member": m.tar_member,
            "tar_offset": m.tar_offset,
        }
        for m in members
    ]


def file_sha1(path: str) -> str:
    """Hex sha1 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
