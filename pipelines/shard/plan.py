"""Planning shards from the listing alone: how many, and which files go in which, before any byte is read.

The listing knows every file's size (object stores and folders report it; manifest entries are stat'ed), so
the bucket count follows from the corpus's count and bytes, and each bucket is cut into shards by those sizes.
The plan is a pure function of the listing and the config: a rerun over the same corpus plans the same
shards with the same files, which is what lets a killed run resume shard by shard.
"""

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import ShardConfig
from pipelines.shard.keys import make_key, shard_name, stable_bucket
from pipelines.shard.listing import SourceFile


@dataclass(frozen=True)
class PlannedFile:
    """One listed entry on its way into a planned shard (metadata only: no bytes).

    Attributes:
        key: Sample key (dot-free), from the relative path.
        source: The listing entry (uri, relpath, listed size in bytes, listing problem).
        annotated: Whether an annotation file covers this image.
        persons: Person annotations (JSON-ready dicts, see :mod:`pipelines.shard.coco`).
        annotation_problems: ``(annotation id, message)`` of persons of this image that could not be used.
        duplicate_of: ``(key, uri)`` of the file with the same bytes that is kept instead, when
            ``shard.drop_duplicates`` drops this one.
    """

    key: str
    source: SourceFile
    annotated: bool = False
    persons: tuple[dict[str, Any], ...] = field(default=())
    annotation_problems: tuple[tuple[Any, str], ...] = field(default=())
    duplicate_of: tuple[str, str] | None = None

    @property
    def planned_bytes(self) -> int:
        """Bytes this file counts for when shards are cut: its listed size (0 for problems and unknown sizes)."""
        return 0 if self.source.problem else self.source.size or 0


@dataclass(frozen=True)
class PlannedBatch:
    """Listed files (not yet annotated) of one comparison partition (``mode=append``), moved as one element, column
    by column: tuples of strings pickle many times faster than as many records (see :mod:`pipelines.shard.compare`).
    A file's uri is ``uri_root`` + its relative path when that holds for the whole batch (a folder or prefix
    listing), else ``uris`` lists them.
    """

    partition: int
    keys: tuple[str, ...]
    relpaths: tuple[str, ...]
    sizes: tuple[int | None, ...]
    problems: tuple[tuple[str, str] | None, ...]
    uri_root: str = ""
    uris: tuple[str, ...] = ()

    @classmethod
    def of(cls, partition: int, files: list[tuple[str, SourceFile]]) -> "PlannedBatch":
        """The batch of listed ``(key, source)`` files."""
        sources = [source for _, source in files]
        first = sources[0] if sources else None
        root = first.uri[: len(first.uri) - len(first.relpath)] if first else ""
        rooted = all(s.uri == root + s.relpath for s in sources)
        return cls(
            partition,
            tuple(key for key, _ in files),
            tuple(s.relpath for s in sources),
            tuple(s.size for s in sources),
            tuple(s.problem for s in sources),
            uri_root=root if rooted else "",
            uris=() if rooted else tuple(s.uri for s in sources),
        )

    def uri(self, j: int) -> str:
        """The ``j``-th file's uri."""
        return self.uris[j] if self.uris else self.uri_root + self.relpaths[j]

    def file(self, j: int) -> PlannedFile:
        """The ``j``-th file of the batch."""
        return PlannedFile(self.keys[j], SourceFile(self.uri(j), self.relpaths[j], self.sizes[j], self.problems[j]))


def planned_file(source: SourceFile) -> PlannedFile:
    """The plan entry of a listed file (no annotations yet)."""
    return PlannedFile(key=make_key(source.relpath), source=source)


@dataclass(frozen=True)
class PlannedShard:
    """One shard of the plan: its number, name and files in key order.

    ``identity`` is a digest of the files it covers (key and listed size) and of the bucket count: a shard
    written by an earlier run with the same identity is finished; any other is redone.
    """

    shard_id: int
    name: str
    files: tuple[PlannedFile, ...]
    identity: str


def count_and_bytes(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """Combine ``(count, bytes)`` pairs."""
    count = total = 0
    for c, b in pairs:
        count += c
        total += b
    return count, total


def num_buckets(totals: tuple[int, int], cfg: ShardConfig) -> int:
    """How many digest buckets (planned shards) a corpus of ``(count, bytes)`` gets.

    Sized so an average shard sits at ``fill_target`` of both caps; the key digest then spreads samples
    evenly, and the rare bucket that still exceeds a cap spills into an overflow shard.
    """
    count, total = totals
    by_count = count / (cfg.max_samples * cfg.fill_target)
    by_bytes = total / (cfg.max_bytes * cfg.fill_target)
    return max(1, math.ceil(max(by_count, by_bytes)))


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a sample key: a sha1 digest, identical on every machine and run."""
    return stable_bucket(key, buckets)


def plan_bucket(
    bucket: int,
    buckets: int,
    files: Iterable[PlannedFile],
    cfg: ShardConfig,
    first_shard: int = 0,
    identity_extra: str = "",
) -> list[PlannedShard]:
    """Sort a bucket's files by key and cut them, by listed size, into shards within both caps.

    The first cut is shard ``first_shard + bucket``, overflow cuts are ``first_shard + bucket + k * buckets``
    (``first_shard``: 0 for a new set, the next free number for an appended generation). A single file larger than
    ``max_bytes`` gets a shard of its own rather than failing. ``identity_extra`` is whatever else decides a shard's
    content (the benchmark list's digest), folded into its identity when not empty.
    """
    parts: list[list[PlannedFile]] = [[]]
    part_bytes = 0
    for f in sorted(files, key=lambda f: f.key):
        current = parts[-1]
        if current and (len(current) >= cfg.max_samples or part_bytes + f.planned_bytes > cfg.max_bytes):
            parts.append([])
            part_bytes = 0
        parts[-1].append(f)
        part_bytes += f.planned_bytes
    shards = []
    for index, part in enumerate(p for p in parts if p):
        shard_id = first_shard + bucket + index * buckets
        shards.append(
            PlannedShard(shard_id, shard_name(shard_id), tuple(part), _identity(buckets, part, identity_extra))
        )
    return shards


def _identity(buckets: int, files: list[PlannedFile], extra_identity: str = "") -> str:
    """What a finished shard must match to be kept by a rerun: its files, their sizes, persons and drops."""
    digest = hashlib.sha1(f"buckets={buckets}".encode())
    if extra_identity:  # absent by default, so shards of sets made before it keep their identity
        digest.update(f"\n{extra_identity}".encode())
    for f in files:
        extra = json.dumps([f.persons, f.annotation_problems, f.duplicate_of, f.source.problem], sort_keys=True)
        digest.update(f"\n{f.key}\t{f.planned_bytes}\t{extra}".encode())
    return digest.hexdigest()
