"""``pipelines.storage`` URIs, pure: parsing, joining and glob patterns, and no GCS import for other schemes."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.storage import ParsedUri, Storage, join, parse_uri
from pipelines.storage.uri import glob_regex, literal_prefix


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("s3://bkt/a/b.tar", ParsedUri("s3", "bkt", "a/b.tar")),
        ("s3://bkt", ParsedUri("s3", "bkt", "")),
        ("gs://bkt/dir/", ParsedUri("gs", "bkt", "dir/")),
        ("GS://bkt/x", ParsedUri("gs", "bkt", "x")),
        ("file:///data/x", ParsedUri("file", "", "/data/x")),
        ("/data/x", ParsedUri("file", "", "/data/x")),
        ("rel/x", ParsedUri("file", "", "rel/x")),
    ],
)
def test_parse_uri(uri: str, parsed: ParsedUri) -> None:
    assert parse_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["http://host/x", "s3://", "gs:///key", "file://host/x"])
def test_parse_uri_rejects(uri: str) -> None:
    with pytest.raises(ValueError, match="://"):
        parse_uri(uri)


@pytest.mark.parametrize(
    ("base", "parts", "joined"),
    [
        ("s3://b", ("k",), "s3://b/k"),
        ("s3://b/", ("/a/", "", "x"), "s3://b/a/x"),
        ("gs://b/dir", ("sub", "f.parquet"), "gs://b/dir/sub/f.parquet"),
        ("/data", ("a", "b"), "/data/a/b"),
        ("/", ("a",), "/a"),
        ("file:///data/", ("a",), "file:///data/a"),
        ("", ("a", "b"), "a/b"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], joined: str) -> None:
    assert join(base, *parts) == joined
    assert Storage.join(base, *parts) == joined


def test_glob_regex_semantics() -> None:
    assert glob_regex("gs://b/*.tar").match("gs://b/x.tar")
    assert not glob_regex("gs://b/*.tar").match("gs://b/d/x.tar")
    assert glob_regex("gs://b/**.tar").match("gs://b/d/e/x.tar")
    assert glob_regex("gs://b/d/**/x").match("gs://b/d/x")
    assert glob_regex("gs://b/[!a]").match("gs://b/c")
    assert not glob_regex("gs://b/[!a]").match("gs://b/a")
    assert literal_prefix("gs://b/shards/part-*.tar") == "gs://b/shards/part-"


def test_google_cloud_is_imported_only_for_gs_uris(tmp_path: Path) -> None:
    code = (
        "import sys; from pipelines.storage import Storage; s = Storage();"
        f"s.write_bytes({str(tmp_path / 'x')!r}, b'1'); s.exists('s3://b/k') if False else None;"
        "print('google.cloud.storage' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
