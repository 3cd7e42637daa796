"""What only the S3 backend does, against the real server (SeaweedFS, tests/s3_server.py): lazy pagination, multipart
uploads, retries of transient errors (injected into the real client), error classification and credentials that
never leak. The behaviour every backend shares is in test_backends.py; faults from a proxy in test_storage_faults.py.
"""

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

import pipelines.storage.s3 as s3_backend
from pipelines.config.storage import StorageConfig
from pipelines.storage import ObjectInfo, Storage, StorageError, join, parse_uri
from pipelines.storage.base import TransientStorageError


def _client_error(code: str, status: int, op: str = "PutObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


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


@pytest.mark.s3
def test_upload_file_over_multipart_threshold_is_multipart(
    s3_storage_config: StorageConfig, s3_bucket: str, tmp_path: Path
) -> None:
    storage = Storage(s3_storage_config)
    src = tmp_path / "big.bin"
    data = os.urandom(9 * 1024 * 1024 + 123)  # > 8 MiB multipart threshold: two parts
    src.write_bytes(data)
    uri = join(s3_bucket, "up", "big.bin")
    storage.upload_file(str(src), uri)
    assert hashlib.sha256(storage.read_bytes(uri)).digest() == hashlib.sha256(data).digest()
    parsed = parse_uri(uri)
    head = storage._remote_backend("s3").client.head_object(Bucket=parsed.bucket, Key=parsed.key)
    assert head["ETag"].strip('"').endswith("-2"), "multipart upload expected"


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
