"""Behaviour of ``pipelines.storage`` on local paths and on a real S3 server (SeaweedFS, see tests/s3_server.py).

The same tests run on both backends. GCS has no local server here, so only its URI handling is unit-tested.
"""

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

import pipelines.storage.s3 as s3_backend
from pipelines.config.storage import StorageConfig
from pipelines.storage import ObjectInfo, ParsedUri, Storage, StorageError, join, parse_uri
from pipelines.storage.base import TransientStorageError
from pipelines.storage.local import TEMP_PREFIX
from pipelines.storage.uri import glob_regex, literal_prefix


BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, str]:
    """``(storage, root URI)`` for an empty root on each backend."""
    if request.param == "local":
        return Storage(StorageConfig()), str(tmp_path / "root")
    cfg: StorageConfig = request.getfixturevalue("s3_storage_config")
    return Storage(cfg), request.getfixturevalue("s3_bucket")


def _uris(infos: Iterator[ObjectInfo]) -> list[str]:
    return [info.uri for info in infos]


def _client_error(code: str, status: int, op: str = "PutObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


def test_write_read_round_trip(store: tuple[Storage, str]) -> None:
    storage, root = store
    uri = join(root, "a", "b", "obj.bin")
    storage.write_bytes(uri, b"first")
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"
    with storage.open_read(uri) as f:
        assert f.read() == b"second"
    storage.write_bytes(join(root, "empty"), b"")
    assert storage.read_bytes(join(root, "empty")) == b""


def test_atomic_write_leaves_no_temp_file(store: tuple[Storage, str]) -> None:
    storage, root = store
    for i in range(3):
        storage.write_bytes(join(root, f"f{i}"), b"x" * i)
    assert _uris(storage.list(root)) == [join(root, f"f{i}") for i in range(3)]
    if not root.startswith("s3://"):
        assert sorted(os.listdir(root)) == ["f0", "f1", "f2"]


def test_failed_local_write_keeps_old_object_and_no_temp(tmp_path: Path) -> None:
    storage = Storage()
    uri = str(tmp_path / "obj")
    storage.write_bytes(uri, b"old")
    with pytest.raises(TypeError):
        storage.write_bytes(uri, "not bytes")  # type: ignore[arg-type]
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["obj"]
    (tmp_path / f"{TEMP_PREFIX}crashed").write_bytes(b"partial")  # a temp file left by a killed writer
    assert _uris(storage.list(str(tmp_path))) == [uri]


def test_exists_size_delete(store: tuple[Storage, str]) -> None:
    storage, root = store
    uri = join(root, "dir", "obj")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"12345")
    assert storage.exists(uri)
    assert storage.size(uri) == 5
    assert not storage.exists(join(root, "dir")), "directories are not objects"
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # missing is not an error


@pytest.mark.parametrize("op", ["read_bytes", "open_read", "size"])
def test_missing_object_raises_file_not_found_with_uri(store: tuple[Storage, str], op: str) -> None:
    storage, root = store
    uri = join(root, "nope", "missing.bin")
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        getattr(storage, op)(uri)


def test_list_is_recursive_sorted_lazy_and_directory_scoped(store: tuple[Storage, str]) -> None:
    storage, root = store
    keys = ["d/b/2", "d/a", "d/b/1", "d/c/x/y", "d2/z", "top"]
    for key in keys:
        storage.write_bytes(join(root, key), key.encode())
    listing = storage.list(join(root, "d"))
    assert isinstance(listing, Iterator)
    assert list(listing) == [ObjectInfo(join(root, k), len(k)) for k in ["d/a", "d/b/1", "d/b/2", "d/c/x/y"]]
    assert _uris(storage.list(root + "/")) == [join(root, k) for k in sorted(keys)]
    assert list(storage.list(join(root, "nothing-here"))) == []


def test_read_range_reads_the_bytes_at_an_offset(store: tuple[Storage, str]) -> None:
    storage, root = store
    data = bytes(range(256)) * 40
    storage.write_bytes(join(root, "big.bin"), data)
    assert storage.read_range(join(root, "big.bin"), 1000, 300) == data[1000:1300]
    assert storage.read_range(join(root, "big.bin"), len(data) - 5, 100) == data[-5:]  # short at the end
    assert storage.read_range(join(root, "big.bin"), 7, 0) == b""
    with pytest.raises(FileNotFoundError):
        storage.read_range(join(root, "missing.bin"), 0, 10)


def test_one_level_lists_direct_objects_and_subfolders_only(store: tuple[Storage, str]) -> None:
    storage, root = store
    for key in ["d/b/2", "d/a", "d/c/x/y", "d2/z", "d/e"]:
        storage.write_bytes(join(root, key), key.encode())
    assert list(storage.list_top(join(root, "d"))) == [ObjectInfo(join(root, k), len(k)) for k in ["d/a", "d/e"]]
    assert storage.subfolders(join(root, "d")) == (join(root, "d/b") + "/", join(root, "d/c") + "/")
    assert storage.subfolders(join(root, "d/b")) == ()
    assert list(storage.list_top(join(root, "nothing-here"))) == []


def test_local_list_order_is_full_path_string_order(tmp_path: Path) -> None:
    # "a-c" < "a/b" as strings ('-' < '/'): a plain directory walk would yield a/b first. (SeaweedFS lists in
    # directory-walk order here, unlike AWS, so this case is only pinned for local paths.)
    storage = Storage()
    for key in ["a/b", "a-c", "a0", "a/a/x"]:
        storage.write_bytes(str(tmp_path / key), b"")
    assert _uris(storage.list(str(tmp_path))) == [str(tmp_path / k) for k in ["a-c", "a/a/x", "a/b", "a0"]]


def test_local_list_keeps_file_scheme(tmp_path: Path) -> None:
    storage = Storage()
    storage.write_bytes(f"file://{tmp_path}/x/y", b"1")
    assert _uris(storage.list(f"file://{tmp_path}")) == [f"file://{tmp_path}/x/y"]
    assert storage.read_bytes(str(tmp_path / "x" / "y")) == b"1"


@pytest.mark.s3
def test_s3_list_paginates_lazily_over_1100_keys(s3_storage_config: StorageConfig, s3_bucket: str) -> None:
    storage = Storage(s3_storage_config)
    keys = [f"many/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: storage.write_bytes(join(s3_bucket, k), b"."), keys))
    calls: list[str] = []
    storage._remote_backend("s3").client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **_: calls.append("list")
    )
    listing = storage.list(join(s3_bucket, "many"))
    assert next(listing) == ObjectInfo(join(s3_bucket, keys[0]), 1)
    assert len(calls) == 1, "the first object must come from the first page alone"
    rest = list(listing)
    assert [o.uri for o in rest] == [join(s3_bucket, k) for k in keys[1:]]
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("a/*.tar", ["a/x.tar"]),
        ("a/**.tar", ["a/b/c/z.tar", "a/b/y.tar", "a/x.tar"]),
        ("a/**/*.tar", ["a/b/c/z.tar", "a/b/y.tar", "a/x.tar"]),
        ("a/*/y.tar", ["a/b/y.tar"]),
        ("a/?.t*", ["a/x.tar", "a/x.txt"]),
        ("a/[wx].tar", ["a/x.tar"]),
        ("a/x.tar", ["a/x.tar"]),
    ],
)
def test_glob(store: tuple[Storage, str], pattern: str, expected: list[str]) -> None:
    storage, root = store
    for key in ["a/x.tar", "a/x.txt", "a/b/y.tar", "a/b/c/z.tar", "ab/x.tar"]:
        storage.write_bytes(join(root, key), b"")
    assert _uris(storage.glob(join(root, pattern))) == [join(root, k) for k in expected]


def test_upload_file_over_multipart_threshold(store: tuple[Storage, str], tmp_path: Path) -> None:
    storage, root = store
    src = tmp_path / "big.bin"
    data = os.urandom(9 * 1024 * 1024 + 123)  # > 8 MiB multipart threshold: two parts on S3
    src.write_bytes(data)
    uri = join(root, "up", "big.bin")
    storage.upload_file(str(src), uri)
    assert storage.size(uri) == len(data)
    assert hashlib.sha256(storage.read_bytes(uri)).digest() == hashlib.sha256(data).digest()
    if uri.startswith("s3://"):
        parsed = parse_uri(uri)
        head = storage._remote_backend("s3").client.head_object(Bucket=parsed.bucket, Key=parsed.key)
        assert head["ETag"].strip('"').endswith("-2"), "multipart upload expected"
    with pytest.raises(FileNotFoundError):
        storage.upload_file(str(tmp_path / "absent"), join(root, "x"))


def test_open_read_streams_into_tarfile(store: tuple[Storage, str]) -> None:
    storage, root = store
    members = {f"{i:04d}.txt": os.urandom(3000 + i) for i in range(20)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    uri = join(root, "shard-00000.tar")
    storage.write_bytes(uri, buf.getvalue())
    seen = {}
    with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            seen[member.name] = extracted.read()
    assert seen == members


def test_pickled_storage_works_after_use(store: tuple[Storage, str]) -> None:
    storage, root = store
    uri = join(root, "p")
    storage.write_bytes(uri, b"before")  # creates the client
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read_bytes(uri) == b"before"
    clone.write_bytes(uri, b"after")
    assert storage.read_bytes(uri) == b"after"


# ---------------------------------------------------------------- retries (real server, injected failures)


def _patch_client(monkeypatch: pytest.MonkeyPatch, method: str, wrap: Callable[[Any], Any]) -> None:
    """Makes the Storage's client factory return a real client whose ``method`` is wrapped by ``wrap``."""
    real_factory = s3_backend.make_s3_client

    def factory(cfg: StorageConfig) -> Any:
        client = real_factory(cfg)
        setattr(client, method, wrap(getattr(client, method)))
        return client

    monkeypatch.setattr(s3_backend, "make_s3_client", factory)


def _failing(errors: list[Exception], calls: list[int]) -> Callable[[Any], Any]:
    def wrap(real: Any) -> Any:
        def method(**kwargs: Any) -> Any:
            calls.append(1)
            if errors:
                raise errors.pop(0)
            return real(**kwargs)

        return method

    return wrap


@pytest.fixture
def fast_retry_config(s3_storage_config: StorageConfig) -> StorageConfig:
    return dataclasses.replace(s3_storage_config, max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.mark.s3
def test_transient_errors_are_retried(
    monkeypatch: pytest.MonkeyPatch, fast_retry_config: StorageConfig, s3_bucket: str
) -> None:
    calls: list[int] = []
    _patch_client(monkeypatch, "put_object", _failing([_client_error("SlowDown", 503)] * 2, calls))
    storage = Storage(fast_retry_config)
    storage.write_bytes(join(s3_bucket, "k"), b"v")
    assert len(calls) == 3
    assert storage.read_bytes(join(s3_bucket, "k")) == b"v"


@pytest.mark.s3
def test_retries_are_bounded(
    monkeypatch: pytest.MonkeyPatch, fast_retry_config: StorageConfig, s3_bucket: str
) -> None:
    calls: list[int] = []
    _patch_client(monkeypatch, "put_object", _failing([_client_error("InternalError", 500)] * 10, calls))
    with pytest.raises(
        TransientStorageError, match=r"write.*transient error persisted after 4 attempts.*InternalError"
    ):
        Storage(fast_retry_config).write_bytes(join(s3_bucket, "k"), b"v")
    assert len(calls) == fast_retry_config.max_attempts


@pytest.mark.s3
def test_non_transient_errors_are_raised_at_once(
    monkeypatch: pytest.MonkeyPatch, fast_retry_config: StorageConfig, s3_bucket: str
) -> None:
    calls: list[int] = []
    _patch_client(monkeypatch, "put_object", _failing([_client_error("AccessDenied", 403)], calls))
    storage = Storage(fast_retry_config)
    uri = join(s3_bucket, "k")
    with pytest.raises(StorageError, match="AccessDenied") as info:
        storage.write_bytes(uri, b"v")
    assert uri in str(info.value)
    assert not info.value.transient, "a content or permission problem, not a failing store"
    assert len(calls) == 1
    # A real NoSuchBucket from the server: one request, no retry, reported as a missing object.
    requests: list[int] = []
    storage._remote_backend("s3").client.meta.events.register(
        "before-call.s3.GetObject", lambda **_: requests.append(1)
    )
    with pytest.raises(FileNotFoundError, match="no-such-bucket-"):
        storage.read_bytes("s3://no-such-bucket-4b1d/k")
    assert len(requests) == 1


def test_transient_classification() -> None:
    assert s3_backend.is_transient(_client_error("SlowDown", 503))
    assert s3_backend.is_transient(_client_error("RequestLimitExceeded", 400))
    assert s3_backend.is_transient(ConnectionClosedError(endpoint_url="http://x"))
    assert s3_backend.is_transient(ReadTimeoutError(endpoint_url="http://x"))
    wrapped = S3UploadFailedError("upload failed")  # s3transfer re-raises inside `except ClientError`
    wrapped.__context__ = _client_error("Throttling", 400)
    assert s3_backend.is_transient(wrapped)
    for code, status in [("AccessDenied", 403), ("NoSuchBucket", 404), ("NoSuchKey", 404), ("InvalidRequest", 400)]:
        assert not s3_backend.is_transient(_client_error(code, status))
    assert not s3_backend.is_transient(ValueError("bug"))


@pytest.mark.s3
def test_credentials_never_in_repr_or_logs(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fast_retry_config: StorageConfig,
    s3_bucket: str,
    s3_env: Any,
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, botocore's request logging included
    _patch_client(monkeypatch, "put_object", _failing([_client_error("SlowDown", 503)], []))
    storage = Storage(fast_retry_config)
    storage.write_bytes(join(s3_bucket, "k"), b"v")  # logs one retry warning
    storage.read_bytes(join(s3_bucket, "k"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(join(s3_bucket, "missing"))
    assert any("retrying" in r.getMessage() for r in caplog.records)
    texts = [repr(storage), str(storage.cfg), *(r.getMessage() for r in caplog.records)]
    assert not [t for t in texts if s3_env.secret_key in t]
    ours = [repr(storage), *(r.getMessage() for r in caplog.records if r.name.startswith("pipelines"))]
    assert not [t for t in ours if s3_env.access_key in t]


@pytest.mark.s3
def test_wrong_credentials_fail_at_once_without_leaking(
    monkeypatch: pytest.MonkeyPatch, s3_storage_config: StorageConfig, s3_bucket: str
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(StorageError) as info:
        Storage(s3_storage_config).read_bytes(join(s3_bucket, "k"))
    assert "read" in str(info.value)
    assert s3_bucket in str(info.value)
    assert "wrong-secret-value" not in str(info.value)


# ---------------------------------------------------------------- URIs (pure; GCS has no local server, so this is
# all that is tested for gs://)


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
