"""Names that come from data, and the one way to turn them into paths.

Keys, sample ids, metric and tier names arrive from inputs a user does not control (a hand-made shard index, a
label Parquet, a ground-truth or evaluation JSON). Every tool that builds a file name, an object key or a tar
member name from such a value goes through this module:

* **One key grammar.** A sample key is 1-96 characters of ``[A-Za-z0-9_-]`` (what ``dpmesh-shard`` makes:
  dot-free, so WebDataset's split of a member name at its first dot is unambiguous, and free of separators, so a key
  is always one path segment). A ``sample_id`` is ``<key>_p<person index>``. ``dpmesh-label`` turns any other key in
  a tar or index into an ``invalid_key`` error row, so no later tool meets one in labels it made.
* **One safe join.** :func:`safe_join` appends untrusted names, each of which must be one plain segment (no
  separator, no ``.``/``..``, no NUL or other control character, not empty), to a trusted base, for local paths and
  object stores alike; on local disk the result must also resolve (symbolic links followed) inside the base.
* **Tar members.** :func:`safe_member_name` admits ``<one segment>`` names only: what a ``tar -x`` of an export
  writes stays in the folder it is unpacked in.
* **Outputs never overlap inputs.** :func:`check_output_location` refuses, at launch, an ``output=`` that is, holds or
  lies inside one of the job's inputs, or that is an existing file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pipelines.config import ConfigError
from pipelines.storage import Storage
from pipelines.storage.uri import join, literal_prefix, parse_uri


KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,96}")  # use fullmatch: `$` would admit a trailing newline
KEY_GRAMMAR = "1-96 characters of [A-Za-z0-9_-] (no dots, no separators)"
SAMPLE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,96}_p[0-9]{1,6}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeName(ValueError):  # noqa: N818 (a name, refused: reads as the error it is)
    """A name from data that cannot be used as a path segment (it names the value and the rule)."""


def is_valid_key(key: object) -> bool:
    """Whether ``key`` is a sample key of the one grammar (:data:`KEY_PATTERN`)."""
    return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


def validate_key(key: str) -> str:
    """``key`` if it is a valid sample key.

    Raises:
        UnsafeName: naming the key and the grammar.
    """
    if not is_valid_key(key):
        raise UnsafeName(f"invalid sample key {key!r}: keys are {KEY_GRAMMAR}")
    return key


def validate_sample_id(sample_id: str) -> str:
    """``sample_id`` if it is ``<key>_p<person index>``.

    Raises:
        UnsafeName: naming the value.
    """
    if not isinstance(sample_id, str) or SAMPLE_ID_PATTERN.fullmatch(sample_id) is None:
        raise UnsafeName(f"invalid sample_id {sample_id!r}: expected <key>_p<person index>, keys being {KEY_GRAMMAR}")
    return sample_id


def check_segment(name: str, what: str = "name") -> str:
    """``name`` if it is one plain path segment, else :class:`UnsafeName` naming ``what`` and the value."""
    if not isinstance(name, str) or not name:
        raise UnsafeName(f"{what} {name!r} is empty or not text")
    if "/" in name or "\\" in name:
        raise UnsafeName(f"{what} {name!r} holds a path separator")
    if name in (".", ".."):
        raise UnsafeName(f"{what} {name!r} names a folder, not a file")
    if _CONTROL.search(name):
        raise UnsafeName(f"{what} {name!r} holds a control character")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise UnsafeName(f"{what} {name[:40]!r}... is longer than 255 bytes")
    return name


def safe_join(base: str, *names: str, what: str = "name") -> str:
    """``base`` joined with ``names``, each of which must be one plain segment (see :func:`check_segment`).

    ``base`` is trusted (a configured folder or URI); ``names`` come from data. On local disk the joined path must
    also resolve inside ``base`` once symbolic links are followed (a link planted in an output folder cannot
    redirect a write).

    Raises:
        UnsafeName: a name that is not one segment, or a local path resolving outside ``base``.
    """
    for name in names:
        check_segment(name, what)
    joined = join(base, *names)
    if parse_uri(base).scheme == "file":
        root = os.path.realpath(parse_uri(base).key or ".")
        target = os.path.realpath(parse_uri(joined).key)
        if os.path.commonpath([root, target]) != root:
            raise UnsafeName(f"{what} {'/'.join(names)!r} resolves outside {base!r}")
    return joined


def safe_member_name(name: str) -> str:
    """``name`` if it is a safe tar member name (one plain segment), else :class:`UnsafeName`."""
    return check_segment(name, "tar member name")


def _location(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, folder path with one trailing /)`` of a URI or glob's literal folder, for comparison."""
    literal = literal_prefix(uri)
    if literal != uri:  # a glob: what it can match lies under its literal folder
        literal = literal.rsplit("/", 1)[0] if "/" in literal else ""
    parsed = parse_uri(literal)
    key = parsed.key
    if parsed.scheme == "file":
        key = os.path.realpath(key or ".")
    return parsed.scheme, parsed.bucket, key.rstrip("/") + "/"


def check_output_location(
    storage: Storage, output: str, inputs: Mapping[str, str | None], key: str = "output"
) -> None:
    """Refuses an ``output`` that equals, contains or lies inside one of ``inputs``, or that is an existing file.

    A job writes and deletes under its output: one that overlaps an input could replace the source shards or
    labels it reads. Inputs are given by config key (``{"input.shards": uri}``) so the refusal names the key.

    Raises:
        ConfigError: one line naming both keys.
    """
    if storage.exists(output.rstrip("/")):
        raise ConfigError(f"{key}={output!r} is an existing file: give a folder (new or one of this job's outputs)")
    out = _location(output)
    for input_key, uri in inputs.items():
        if not uri:
            continue
        source = _location(uri)
        if out[:2] != source[:2]:
            continue
        if out[2] == source[2]:
            relation = "is"
        elif source[2].startswith(out[2]):
            relation = "contains"
        elif out[2].startswith(source[2]):
            relation = "lies inside"
        else:
            continue
        raise ConfigError(
            f"{key}={output!r} {relation} {input_key}={uri!r}: outputs never overlap inputs; write to another folder"
        )
