"""The shard format: what one sample is, and how a shard tar is laid out.

A shard is a POSIX (ustar) tar holding, per sample in key order, ``<key>.<ext>`` (the original image bytes,
never re-encoded) then ``<key>.json``. Every header field that could vary between runs (mtime, owner,
permissions) is fixed, so the same samples always give the same tar bytes. The writer hashes the tar as it
writes it, so no second pass over the tar is needed for its sha1.
"""

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pipelines.shard.perceptual_hash import to_bytes


_TAR_BLOCK = tarfile.BLOCKSIZE  # 512 bytes
_TAR_RECORD = tarfile.RECORDSIZE  # 10240 bytes: tar files are padded to a whole record, as tarfile does
_FIXED_MTIME = 0


@dataclass(frozen=True)
class ShardSample:
    """One image checked and ready for its shard (metadata; the bytes travel beside it).

    Attributes:
        key: Sample key (dot-free).
        source_uri: Where the bytes were read from.
        sha1: Hex digest of the bytes.
        format: ``jpeg``, ``png`` or ``webp``.
        extension: Tar member extension.
        width: Width in pixels after EXIF orientation.
        height: Height in pixels after EXIF orientation.
        exif_orientation: EXIF orientation tag (1 = upright).
        bytes: Size of the image in bytes.
        relpath: Path relative to the corpus root.
        annotated: Whether an annotation file covered this image.
        persons: Person annotations (see :mod:`pipelines.shard.coco`).
        phash: 128-bit perceptual hash (:mod:`pipelines.shard.perceptual_hash`), None when the pixels could not be
            decoded. Indexed only: the tar's ``<key>.json`` leaves it out, so tars stay what they were.
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
    phash: int | None = None

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


@dataclass(frozen=True)
class WrittenMember:
    """Where a sample's image landed inside the tar."""

    sample: ShardSample
    tar_member: str
    tar_offset: int


class ShardTarWriter:
    """Writes samples as a reproducible ustar stream into ``sink``, hashing every byte it writes.

    Attributes:
        members: The samples written so far, with their image data offsets.
        size: Bytes written so far (the tar's size once closed).
    """

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._sha1 = hashlib.sha1()
        self.size = 0
        self.members: list[WrittenMember] = []

    def add(self, sample: ShardSample, data: bytes) -> None:
        """Append ``<key>.<ext>`` and ``<key>.json`` for one sample."""
        member = f"{sample.key}.{sample.extension}"
        # ustar names of <= 100 characters take exactly one header block, so the data starts right after.
        offset = self.size + _TAR_BLOCK
        self._add_member(member, data)
        self._add_member(f"{sample.key}.json", sample.metadata_json())
        self.members.append(WrittenMember(sample=sample, tar_member=member, tar_offset=offset))

    def _add_member(self, name: str, data: bytes) -> None:
        remainder = len(data) % _TAR_BLOCK
        self._write(ustar_header(name, len(data)))
        self._write(data)
        if remainder:
            self._write(b"\0" * (_TAR_BLOCK - remainder))

    def _write(self, chunk: bytes) -> None:
        self._sink.write(chunk)
        self._sha1.update(chunk)
        self.size += len(chunk)

    def close(self) -> str:
        """Writes the end-of-archive blocks and record padding (as :mod:`tarfile` does); returns the tar's sha1."""
        self._write(b"\0" * (2 * _TAR_BLOCK))
        remainder = self.size % _TAR_RECORD
        if remainder:
            self._write(b"\0" * (_TAR_RECORD - remainder))
        return self._sha1.hexdigest()


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file ``name`` of ``size`` bytes, with the fixed fields of every shard
    member (mode 0444, uid/gid 0, no owner names, mtime 0): byte for byte what ``tarfile`` writes for them, built
    directly because ``TarInfo.tobuf`` costs more than hashing a 100 kB image.

    Raises:
        ValueError: a name longer than 100 bytes (keys are at most 96 characters plus the extension).
    """
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    head = encoded.ljust(100, b"\0") + _FIXED_MODE_IDS + b"%011o\0" % size + _FIXED_MTIME_FIELD
    tail = b"0" + _EMPTY_LINKNAME + _USTAR_TAIL
    checksum = sum(head) + sum(tail) + 8 * 0x20  # the checksum field counts as 8 spaces
    return head + b"%06o\0 " % checksum + tail


_FIXED_MODE_IDS = b"0000444\0" + b"0000000\0" + b"0000000\0"  # mode, uid, gid (octal, NUL-terminated)
_FIXED_MTIME_FIELD = b"%011o\0" % _FIXED_MTIME
_EMPTY_LINKNAME = b"\0" * 100
# magic "ustar\0" and version "00", then empty uname and gname (32 each), devmajor and devminor (8 each: tarfile
# leaves them empty for regular files), prefix (155) and the padding to 512 bytes.
_USTAR_TAIL = b"ustar\x0000" + b"\0" * (64 + 16 + 155 + 12)


def index_rows(members: list[WrittenMember], shard: str) -> list[dict[str, Any]]:
    """Rows of the shard index (schema :data:`schemas.SHARD_INDEX_SCHEMA`) for the written members."""
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
            "shard": shard,
            "tar_member": m.tar_member,
            "tar_offset": m.tar_offset,
            "phash": None if m.sample.phash is None else to_bytes(m.sample.phash),
        }
        for m in members
    ]
