"""What only the GCS backend of ``pipelines.storage`` does, against a real GCS API server: the GCS emulator started
by the ``gcs_server`` fixture (tests/gcs_server.py), reached through ``StorageConfig.gcs_endpoint_url`` only.

The behaviour every backend shares runs on gs:// too, in test_backends.py. Where the emulator does
less than GCS (no pagination, no generation preconditions), the client side is checked on the requests it sends, or
faults are injected into the real client; the module docstring of tests/gcs_server.py lists those gaps.
"""

import dataclasses
import hashlib
import io
import math
import os
import tarfile
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage as gcs

import pipelines.storage.gcs as gcs_backend
from pipelines.config.storage import StorageConfig
from pipelines.storage import ObjectInfo, Storage, StorageError, join
from pipelines.storage.base import TransientStorageError
from tests.gcs_server import GcsServerInfo, gcs_client


pytestmark = pytest.mark.gcs

MIB = 1 << 20


@pytest.fixture
def store(gcs_storage_config: StorageConfig, gcs_bucket: str) -> tuple[Storage, str]:
    """``(storage, gs://bucket)`` for an empty bucket on the emulator."""
    return Storage(gcs_storage_config), gcs_bucket


@pytest.fixture
def fast_retry(gcs_storage_config: StorageConfig) -> StorageConfig:
    return dataclasses.replace(gcs_storage_config, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)


@dataclasses.dataclass(frozen=True)
class Sent:
    """One HTTP request the GCS client sent (header names in lower case)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Records every request of every GCS client (they all go through google-auth's AuthorizedSession)."""
    log: list[Sent] = []
    real = AuthorizedSession.request

    def request(self: Any, method: str, url: str, data: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        parsed = urllib.parse.urlsplit(url)
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        log.append(Sent(method, parsed.path, urllib.parse.parse_qs(parsed.query), lowered))
        return real(self, method, url, data, headers, **kwargs)

    monkeypatch.setattr(AuthorizedSession, "request", request)
    return log


def _uris(infos: Iterator[ObjectInfo]) -> list[str]:
    return [info.uri for info in infos]


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _fail_first(calls: list[dict[str, Any]], errors: list[BaseException]) -> Callable[[Any], Any]:
    """Wraps a Blob method: records each call's kwargs, raises ``errors`` in turn first, then calls through."""

    def wrap(real: Any) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            if errors:
                raise errors.pop(0)
            return real(self, *args, **kwargs)

        return method

    return wrap


_REAL_BLOB = {name: getattr(gcs.Blob, name) for name in ("download_as_bytes", "upload_from_string")}


def _patch_blob(monkeypatch: pytest.MonkeyPatch, name: str, wrap: Callable[[Any], Any]) -> None:
    """Replaces ``gcs.Blob.<name>`` by ``wrap`` of the real method (not of an earlier patch)."""
    monkeypatch.setattr(gcs.Blob, name, wrap(_REAL_BLOB[name]))


# ---------------------------------------------------------------- the Storage API on gs://


def test_list_is_in_full_key_order_without_folder_objects(store: tuple[Storage, str]) -> None:
    storage, root = store
    keys = ["d/b/2", "d/a", "d/b/1", "d/c/x/y", "d2/z", "top", "d-x", "d/"]  # "d/": a console "folder" object
    for key in keys:
        storage.write_bytes(join(root, key) + ("/" if key.endswith("/") else ""), key.encode())
    assert list(storage.list(join(root, "d"))) == [
        ObjectInfo(join(root, k), len(k)) for k in ["d/a", "d/b/1", "d/b/2", "d/c/x/y"]
    ]
    # Full key string order, as GCS lists ("d-x" < "d/a" since '-' < '/'), folder objects left out.
    expected = ["d-x", "d/a", "d/b/1", "d/b/2", "d/c/x/y", "d2/z", "top"]
    assert _uris(storage.list(root + "/")) == [join(root, k) for k in expected]
    assert list(storage.list(join(root, "nothing-here"))) == []


def test_upload_file_is_resumable_in_chunks(store: tuple[Storage, str], tmp_path: Path, sent: list[Sent]) -> None:
    storage, root = store
    src = tmp_path / "big.bin"
    data = os.urandom(gcs_backend.UPLOAD_CHUNK_SIZE + MIB + 123)  # two requests of a resumable upload
    src.write_bytes(data)
    uri = join(root, "up", "big.bin")
    storage.upload_file(str(src), uri)
    assert storage.size(uri) == len(data)
    assert hashlib.sha256(storage.read_bytes(uri)).digest() == hashlib.sha256(data).digest()
    chunks = [s for s in sent if s.method == "PUT" and "upload_id" in s.query]
    assert [c.headers["content-range"].split("/")[0] for c in chunks] == [
        f"bytes 0-{gcs_backend.UPLOAD_CHUNK_SIZE - 1}",
        f"bytes {gcs_backend.UPLOAD_CHUNK_SIZE}-{len(data) - 1}",
    ]
    storage.write_bytes(join(root, "small"), b"x" * 1000)
    assert sent[-1].query["uploadType"] == ["multipart"], "small objects go in one request"
    with pytest.raises(FileNotFoundError):
        storage.upload_file(str(tmp_path / "absent"), join(root, "x"))


def test_open_read_streams_a_multi_mb_tar_in_ranged_chunks(
    store: tuple[Storage, str], sent: list[Sent], gcs_server: GcsServerInfo
) -> None:
    storage, root = store
    members = {f"{i:04d}.bin": os.urandom(MIB + 1000 * i) for i in range(18)}  # about 18 MiB
    data = _tar(members)
    uri = join(root, "shard-00000.tar")
    storage.write_bytes(uri, data)
    generation = str(gcs_client(gcs_server).bucket(root.removeprefix("gs://")).get_blob("shard-00000.tar").generation)
    del sent[:]
    seen = {}
    with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:  # 10 KiB reads, like dpmesh-label
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            seen[member.name] = extracted.read()
    assert seen == members
    gets = [s for s in sent if s.method == "GET" and s.query.get("alt") == ["media"]]
    assert len(gets) == math.ceil(len(data) / gcs_backend.READ_CHUNK_SIZE)
    step = gcs_backend.READ_CHUNK_SIZE
    assert [g.headers["range"] for g in gets] == [
        f"bytes={start}-{min(start + step, len(data)) - 1}" for start in range(0, len(data), step)
    ]
    assert all(g.query["ifGenerationMatch"] == [generation] for g in gets), "every GET is pinned to one generation"


def test_endpoint_override_is_anonymous_and_needs_no_environment(
    store: tuple[Storage, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, root = store
    # A credentials file that would fail loudly if google-auth's default chain were consulted.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/credentials.json")
    storage.write_bytes(join(root, "k"), b"v")
    assert storage.read_bytes(join(root, "k")) == b"v"
    assert isinstance(storage._remote_backend("gs").client._credentials, AnonymousCredentials)


# ---------------------------------------------------------------- faults (injected into the real client)


def test_stream_resumes_at_the_failed_offset(
    monkeypatch: pytest.MonkeyPatch, fast_retry: StorageConfig, gcs_bucket: str
) -> None:
    storage = Storage(fast_retry)
    data = os.urandom(2 * gcs_backend.READ_CHUNK_SIZE + 5000)
    uri = join(gcs_bucket, "flaky.bin")
    storage.write_bytes(uri, data)
    calls: list[dict[str, Any]] = []
    with storage.open_read(uri) as f:
        head = f.read(gcs_backend.READ_CHUNK_SIZE + 10)  # the second chunk is being read when the faults start
        errors: list[BaseException] = [requests.exceptions.ConnectionError("reset"), gexc.ServiceUnavailable("busy")]
        _patch_blob(monkeypatch, "download_as_bytes", _fail_first(calls, errors))
        rest = f.read()
    assert head + rest == data
    starts = [c["start"] for c in calls]
    assert starts == [2 * gcs_backend.READ_CHUNK_SIZE] * 3, "two failures, then the same range again, not byte 0"


def test_stream_errors_are_classified(
    monkeypatch: pytest.MonkeyPatch, fast_retry: StorageConfig, gcs_bucket: str
) -> None:
    storage = Storage(fast_retry)
    uri = join(gcs_bucket, "obj")
    storage.write_bytes(uri, b"x" * 100)
    calls: list[dict[str, Any]] = []
    _patch_blob(monkeypatch, "download_as_bytes", _fail_first(calls, [gexc.ServiceUnavailable("busy")] * 10))
    with storage.open_read(uri) as f, pytest.raises(TransientStorageError, match="after 3 attempts"):
        f.read()
    assert len(calls) == fast_retry.max_attempts
    # GCS answers 412 to a GET pinned to a generation that is no longer current (the emulator never does).
    _patch_blob(monkeypatch, "download_as_bytes", _fail_first(calls, [gexc.PreconditionFailed("changed")]))
    with storage.open_read(uri) as f, pytest.raises(StorageError, match="changed while it was read") as info:
        f.read()
    assert not info.value.transient
    _patch_blob(monkeypatch, "download_as_bytes", _fail_first(calls, [gexc.NotFound("deleted meanwhile")]))
    with storage.open_read(uri) as f, pytest.raises(FileNotFoundError, match="obj"):
        f.read()


def test_transient_errors_are_retried_and_bounded(
    monkeypatch: pytest.MonkeyPatch, fast_retry: StorageConfig, gcs_bucket: str
) -> None:
    storage = Storage(fast_retry)
    calls: list[dict[str, Any]] = []
    _patch_blob(monkeypatch, "upload_from_string", _fail_first(calls, [gexc.TooManyRequests("slow down")] * 2))
    storage.write_bytes(join(gcs_bucket, "k"), b"v")
    assert len(calls) == 3
    assert storage.read_bytes(join(gcs_bucket, "k")) == b"v"
    calls.clear()
    _patch_blob(monkeypatch, "upload_from_string", _fail_first(calls, [gexc.InternalServerError("boom")] * 10))
    with pytest.raises(TransientStorageError, match=r"write.*InternalServerError"):
        storage.write_bytes(join(gcs_bucket, "k"), b"w")
    assert len(calls) == fast_retry.max_attempts


def test_non_transient_errors_are_raised_at_once(
    monkeypatch: pytest.MonkeyPatch, fast_retry: StorageConfig, gcs_bucket: str
) -> None:
    storage = Storage(fast_retry)
    uri = join(gcs_bucket, "k")
    calls: list[dict[str, Any]] = []
    _patch_blob(monkeypatch, "upload_from_string", _fail_first(calls, [gexc.Forbidden("no access")]))
    with pytest.raises(StorageError, match="no access") as info:
        storage.write_bytes(uri, b"v")
    assert uri in str(info.value)
    assert not info.value.transient
    assert len(calls) == 1


def test_list_follows_page_tokens_lazily_and_retries_a_page(
    monkeypatch: pytest.MonkeyPatch, fast_retry: StorageConfig, gcs_bucket: str
) -> None:
    # The emulator answers every listing in one page; GCS pages by 1000. Serve the emulator's real listing in
    # pages of 2 with page tokens, as GCS would, and fail one page request once.
    storage = Storage(fast_retry)
    keys = [f"p/{i:02d}" for i in range(5)]
    for key in keys:
        storage.write_bytes(join(gcs_bucket, key), b".")
    client = storage._remote_backend("gs").client
    real_list = client.list_blobs
    tokens: list[str | None] = []
    failures = [gexc.ServiceUnavailable("busy")]

    class Paged:
        def __init__(self, blobs: list[Any], token: str | None) -> None:
            start = int(token or 0)
            self.pages = iter([blobs[start : start + 2]])
            self.next_page_token = str(start + 2) if start + 2 < len(blobs) else None

    def list_blobs(bucket: str, *, prefix: str, page_token: str | None, **kwargs: Any) -> Paged:
        tokens.append(page_token)
        if page_token == "2" and failures:
            raise failures.pop()
        return Paged(list(real_list(bucket, prefix=prefix, **kwargs)), page_token)

    monkeypatch.setattr(client, "list_blobs", list_blobs)
    listing = storage.list(join(gcs_bucket, "p"))
    assert next(listing).uri == join(gcs_bucket, keys[0])
    assert tokens == [None], "the first object must come from the first page alone"
    assert _uris(listing) == [join(gcs_bucket, k) for k in keys[1:]]
    assert tokens == [None, "2", "2", "4"], "a failed page is asked for again with its own token"


def test_transient_classification() -> None:
    for exc in [
        gexc.TooManyRequests("x"),
        gexc.ServiceUnavailable("x"),
        gexc.InternalServerError("x"),
        requests.exceptions.ConnectionError("x"),
        requests.exceptions.ReadTimeout("x"),
        requests.exceptions.ChunkedEncodingError("x"),
    ]:
        assert gcs_backend.is_transient(exc), exc
    for exc in [gexc.Forbidden("x"), gexc.NotFound("x"), gexc.PreconditionFailed("x"), ValueError("bug")]:
        assert not gcs_backend.is_transient(exc), exc
