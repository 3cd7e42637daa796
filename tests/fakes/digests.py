"""The tests' one way to say "the same bytes": sha1 of every file (or object) of an output, by relative path.

A local folder is read straight from the disk, every file included (temporaries too), not through the storage layer
under test; ``gs://`` and ``s3://`` outputs are read through a :class:`~pipelines.storage.Storage`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from pipelines.storage import Storage


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path segment, ``**`` crosses ``/``."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts) + r"\Z")


def _files(root: str, storage: Storage) -> dict[str, Callable[[], bytes]]:
    """Every file below ``root`` by relative path, with a reader of its bytes."""
    if "://" not in root:
        folder = Path(root)
        return {p.relative_to(folder).as_posix(): p.read_bytes for p in folder.rglob("*") if p.is_file()}
    prefix = root.rstrip("/") + "/"
    return {info.uri[len(prefix) :]: functools.partial(storage.read_bytes, info.uri) for info in storage.list(prefix)}


def digests(root: str | Path, *patterns: str, storage: Storage | None = None) -> dict[str, str]:
    """sha1 of every file below ``root`` whose relative path matches one of ``patterns`` (all files if none), by
    that path, sorted. ``storage`` reads object-store roots (its config names the endpoint)."""
    regexes = [_pattern_regex(p) for p in patterns or ("**",)]
    found = _files(str(root), storage or Storage())
    return {
        name: hashlib.sha1(found[name]()).hexdigest() for name in sorted(found) if any(r.match(name) for r in regexes)
    }


def shard_set_digests(output: str | Path, *patterns: str, storage: Storage | None = None) -> dict[str, str]:
    """:func:`digests` of a ``dpmesh-shard`` output (``patterns``: the tars and indexes if none), the manifest's
    digest taken without what two equal runs may differ in: the output path it records and the run time."""
    found = digests(output, *(patterns or ("*.tar", "*.parquet")), storage=storage)
    manifest = json.loads((storage or Storage()).read_bytes(f"{str(output).rstrip('/')}/_manifest.json"))
    manifest["config"].pop("output")
    manifest.pop("elapsed_s", None)
    found["_manifest.json"] = hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return found


def identities(paths: Iterable[Path]) -> dict[str, tuple[int, int, str]]:
    """(inode, size, sha1) of each file, by path: the jobs write by temporary file and rename, so a file rewritten
    since, even with the same bytes, has another inode."""
    return {str(p): (p.stat().st_ino, p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest()) for p in paths}


def label_digests(output: str | Path, storage: Storage | None = None) -> dict[str, str]:
    """:func:`digests` of the per-shard Parquet files of a ``dpmesh-label`` or ``dpmesh-refilter`` output
    (annotations, rejected, errors): the rows, without the summary and progress files that record the run."""
    return digests(output, "*/shard-*.parquet", storage=storage)
