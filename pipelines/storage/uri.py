"""URI parsing, joining and glob matching, identical for local paths, ``s3://`` and ``gs://``."""

import re
from dataclasses import dataclass
from functools import lru_cache


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE_SCHEMES = ("s3", "gs")
WILDCARD_CHARS = "*?["


@dataclass(frozen=True)
class ParsedUri:
    """A URI split into parts.

    Attributes:
        scheme: ``"file"`` for local paths (plain or ``file://``), else ``"s3"`` or ``"gs"``.
        bucket: Bucket name; ``""`` for local paths.
        key: Object key without a leading slash for buckets; the filesystem path for local paths.
    """

    scheme: str
    bucket: str
    key: str


def parse_uri(uri: str) -> ParsedUri:
    """Splits ``uri`` into scheme, bucket and key.

    Args:
        uri: ``s3://bucket/key``, ``gs://bucket/key``, ``file:///abs/path`` or a plain path.

    Raises:
        ValueError: For an unsupported scheme, a missing bucket, or a ``file://`` URI with a host.
    """
    match = _SCHEME_RE.match(uri)
    if match is None:
        return ParsedUri("file", "", uri)
    scheme, rest = match.group(1).lower(), uri[match.end() :]
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"{uri!r}: file URIs must be absolute with no host, e.g. file:///data/x")
        return ParsedUri("file", "", rest)
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(f"{uri!r}: unsupported scheme {scheme!r}; use a local path, s3://, gs:// or file://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: no bucket name; expected {scheme}://bucket/key")
    return ParsedUri(scheme, bucket, key)


def join(base: str, *parts: str) -> str:
    """Joins path parts onto ``base`` with ``/``, for every scheme (``join("s3://b", "a/", "x")`` = ``s3://b/a/x``).

    Empty parts are skipped; slashes between parts are collapsed; ``base`` keeps its scheme and a leading ``/``.
    """
    out = base
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        if not out:
            out = part
        elif out.endswith("/"):
            out += part
        else:
            out = f"{out}/{part}"
    return out


def as_directory(uri: str) -> str:
    """Returns ``uri`` with exactly one trailing ``/`` unless it is a bucket root or empty."""
    parsed = parse_uri(uri)
    if parsed.scheme != "file" and not parsed.key:
        return uri
    return uri if not uri or uri.endswith("/") else uri + "/"


def literal_prefix(pattern: str) -> str:
    """Returns the longest leading part of ``pattern`` that contains no wildcard character."""
    cut = min((i for i, c in enumerate(pattern) if c in WILDCARD_CHARS), default=len(pattern))
    return pattern[:cut]


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compiles a glob to a regex: ``**`` crosses ``/``, ``*`` and ``?`` do not, ``[...]`` is a class.

    ``**/`` also matches zero directories, so ``a/**/x`` matches ``a/x``.
    """
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body[0] == "!":
                body = "^" + body[1:]
            elif body[0] == "^":
                body = "\\" + body
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)
