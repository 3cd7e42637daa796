"""Sample keys and shard assignment: stable, dot-free, and pure functions of their inputs.

WebDataset splits a tar member name at the first dot of its base name into key and extension,
so keys must never contain a dot. Keys must also never depend on Python's per-process salted
``hash()``: a rerun on another machine has to put every image in the same shard.
"""

import hashlib
import re

from pipelines.common.safe_paths import KEY_PATTERN, validate_key


__all__ = ["KEY_PATTERN", "make_key", "shard_name", "stable_bucket", "validate_key"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SLUG_CHARS = 48
_DIGEST_CHARS = 12


def make_key(relpath: str) -> str:
    """The sample key of an input file, from its path relative to the corpus root.

    ``cats/Tabby.01.jpg`` becomes ``cats_Tabby_01-<12 hex>``: a readable slug of the path without its
    extension (last 48 characters), then a digest of the full relative path, so two paths that slug
    alike (``a/b.jpg`` and ``a_b.jpg``) still get different keys.
    """
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    slug = _UNSAFE.sub("_", stem).strip("_")[-_SLUG_CHARS:].lstrip("_-") or "x"
    # surrogateescape: a file name that is not UTF-8 (listed by Python with escaped bytes) still gets its own key.
    digest = hashlib.sha1(relpath.encode("utf-8", "surrogateescape")).hexdigest()[:_DIGEST_CHARS]
    return f"{slug}-{digest}"


def stable_bucket(key: str, num_buckets: int) -> int:
    """The bucket of ``key`` among ``num_buckets``: a sha1 digest, identical on every machine and run."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % num_buckets


def shard_name(shard_id: int) -> str:
    """``shard-000042`` for shard 42."""
    return f"shard-{shard_id:06d}"
