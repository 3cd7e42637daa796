"""Reading a shard tar: its samples in tar order (:func:`iter_shard_samples`, labeling's stream), or image bytes by
the index's ``tar_offset`` (no tar scan), decoded upright, encoded as JPEG.

Job-agnostic (``dpmesh-label`` streams shards; ``dpmesh-export``, ``dpmesh-report`` and the PyTorch dataset read
members by offset; any job reading images of a shard can).

The shard index records, per sample, where its image member's data starts in the tar (``tar_offset``) and its size
(``bytes``), plus its sha1. Reading a member is then one seek and one read (:func:`read_member_at`, the PyTorch
dataset's random access), or, for a job that needs most members of a shard, one forward pass over the tar stream
that skips what it does not need (:func:`iter_members`): no tar headers are parsed either way. Every member read is
checked against the index's sha1, so a shard rebuilt since its index cannot silently feed another image.
"""

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from pipelines.common.image_decode import decode_rgb
from pipelines.storage import StorageError


_SKIP_CHUNK = 1 << 20


class MemberError(Exception):
    """A member's bytes are not what the shard index says (short read or sha1 mismatch)."""


@dataclass(frozen=True)
class MemberRef:
    """Where one image lives in its shard tar, from the shard index.

    Attributes:
        key: The sample key. offset: Byte offset of the member's data in the tar. size: Its length in bytes.
        sha1: Hex sha1 of the bytes (empty to skip the check).
    """

    key: str
    offset: int
    size: int
    sha1: str = ""

    @classmethod
    def from_index_row(cls, row: dict[str, Any]) -> "MemberRef":
        return cls(row["key"], int(row["tar_offset"]), int(row["bytes"]), row.get("sha1") or "")


def check_member(ref: MemberRef, data: bytes) -> bytes:
    """``data`` if it is the member the index describes (length and sha1).

    Raises:
        MemberError: otherwise.
    """
    if len(data) != ref.size:
        raise MemberError(f"{ref.key}: read {len(data)} of {ref.size} bytes at offset {ref.offset} (truncated tar?)")
    if ref.sha1 and hashlib.sha1(data).hexdigest() != ref.sha1:
        raise MemberError(f"{ref.key}: bytes at offset {ref.offset} do not match the index sha1 (shard changed?)")
    return data


def read_member_at(file: BinaryIO, ref: MemberRef) -> bytes:
    """The member's bytes from a seekable tar file: one seek, one read."""
    file.seek(ref.offset)
    return check_member(ref, file.read(ref.size))


def iter_members(stream: BinaryIO, refs: Iterable[MemberRef]) -> Iterator[tuple[MemberRef, bytes]]:
    """The members ``refs`` from a forward-only tar stream, in offset order, in one pass (object-store streams).

    Bytes are yielded as read: check each with :func:`check_member` (a changed member spoils only itself).

    Raises:
        MemberError: the tar ends before a member (a truncated shard): nothing after it can be read.
    """
    position = 0
    seekable = stream.seekable()
    for ref in sorted(refs, key=lambda r: r.offset):
        if ref.offset < position:
            raise MemberError(f"{ref.key}: overlapping members in the shard index at offset {ref.offset}")
        if seekable:  # a local file: jump (a seek past the end reads nothing, caught below as a short member)
            stream.seek(ref.offset)
            position = ref.offset
        while position < ref.offset:  # a stream: skip, in bounded chunks, what is not wanted
            skipped = stream.read(min(_SKIP_CHUNK, ref.offset - position))
            if not skipped:
                raise MemberError(f"{ref.key}: the tar ends before offset {ref.offset}")
            position += len(skipped)
        data = stream.read(ref.size)
        position += len(data)
        if len(data) != ref.size:
            raise MemberError(f"{ref.key}: the tar ends inside the member at offset {ref.offset}")
        yield ref, data


def decode_upright(data: bytes, *, max_image_pixels: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB with the EXIF orientation applied: the frame every label is in."""
    return decode_rgb(data, max_image_pixels=max_image_pixels)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """``pixels`` ``(H, W, 3)`` uint8 as a baseline JPEG without EXIF (readers that ignore EXIF see it upright)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


IMAGE_EXTENSIONS = ("jpg", "png", "webp")


class ShardReadError(Exception):
    """The shard tar could not be read to its end; ``samples_read`` samples came out before that."""

    def __init__(self, message: str, samples_read: int) -> None:
        super().__init__(message)
        self.samples_read = samples_read


@dataclass(frozen=True)
class ShardSampleData:
    """One sample of a shard: its key and members by extension (``jpg``/``png``/``webp`` and ``json``)."""

    key: str
    members: dict[str, bytes]

    def image_bytes(self) -> bytes | None:
        return next((self.members[e] for e in IMAGE_EXTENSIONS if e in self.members), None)


def iter_shard_samples(fileobj: BinaryIO) -> Iterator[ShardSampleData]:
    """Stream the samples of a WebDataset tar (members grouped by key, in tar order).

    Raises:
        ShardReadError: if the tar is corrupt or truncated; samples before the damage are yielded first.
        StorageError: if the storage read failed (a fault, not damaged content), unchanged.
    """
    current: ShardSampleData | None = None
    count = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                # WebDataset's split: the key is the name up to the first dot of its last segment, folders
                # included (a member in a folder has a key with a separator, which the key grammar refuses)
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted else b""
                if len(data) != member.size:  # stream mode returns short reads on truncated data
                    raise tarfile.ReadError(f"{member.name}: {len(data)} of {member.size} bytes")
                if current is None or current.key != key:
                    if current is not None:
                        count += 1
                        yield current
                    current = ShardSampleData(key=key, members={})
                current.members[ext] = data
    except StorageError:
        raise  # the store failed, not the tar: the caller must not mistake it for damaged content
    except (tarfile.TarError, EOFError, OSError) as exc:
        if current is not None:
            yield current  # its members may be incomplete; the caller checks what it needs
        raise ShardReadError(f"shard tar unreadable after {count} samples: {exc}", count) from exc
    if current is not None:
        yield current


def sample_metadata(sample: ShardSampleData) -> dict[str, Any]:
    """The sample's JSON document.

    Raises:
        ValueError: if the JSON member is missing or malformed.
    """
    if "json" not in sample.members:
        raise ValueError("sample has no .json member")
    meta = json.loads(sample.members["json"])
    if not isinstance(meta, dict):
        raise ValueError("sample JSON is not an object")
    return meta
