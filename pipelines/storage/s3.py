"""S3 backend (boto3), also for S3-compatible servers through ``StorageConfig.s3_endpoint_url``.

Credentials come only from boto3's default chain (environment, shared profiles, instance or task role).
"""

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar, cast

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from pipelines.config.storage import StorageConfig
from pipelines.storage.base import LazyClientBackend, ObjectNotFoundError, failed, not_found
from pipelines.storage.retry import call_with_retry


T = TypeVar("T")

# Beam runs several threads per worker and s3transfer up to max_concurrency more; botocore's default pool is 10.
MAX_POOL_CONNECTIONS = 32
MIB = 1 << 20
TRANSFER_CONFIG = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "502",
        "503",
        "504",
    }
)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ResponseStreamingError,
    IncompleteReadError,
    ConnectionResetError,
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})


def make_s3_client(cfg: StorageConfig) -> Any:
    """Creates a thread-safe boto3 S3 client from ``cfg``; credentials from boto3's default chain only."""
    config = Config(
        retries={"max_attempts": cfg.max_attempts, "mode": cfg.retry_mode.value},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        s3={"addressing_style": cfg.s3_addressing_style.value},
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
    )
    session = boto3.session.Session()  # sessions are not thread-safe, clients are: one session per client
    return session.client("s3", endpoint_url=cfg.s3_endpoint_url, region_name=cfg.s3_region, config=config)


def _client_error(exc: BaseException) -> ClientError | None:
    """Finds the ClientError in ``exc``'s chain (s3transfer re-raises it as S3UploadFailedError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_transient(exc: BaseException) -> bool:
    """True for the allow-list of retryable S3 errors: throttling, 5xx, connection resets, timeouts."""
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    error = _client_error(exc)
    if error is None:
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.response.get("Error", {}).get("Code") in _TRANSIENT_CODES or status in _TRANSIENT_STATUS


def _is_missing(exc: BaseException) -> bool:
    error = _client_error(exc)
    if error is None:
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.response.get("Error", {}).get("Code") in _MISSING_CODES or status == 404


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw binary file, so it can be buffered and read by tarfile ``r|``."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Backend(LazyClientBackend):
    """S3 operations on ``(bucket, key)``; ``uri`` is used in errors and log lines."""

    def _make_client(self) -> Any:
        return make_s3_client(self._cfg)

    def _call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        """Runs ``fn`` with retries; maps missing objects to ObjectNotFoundError and AWS errors to StorageError."""
        try:
            return call_with_retry(fn, cfg=self._cfg, is_transient=is_transient, op=op, uri=uri)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            if _is_missing(exc):
                raise not_found(uri) from exc
            raise failed(op, uri, exc) from exc

    def read_bytes(self, bucket: str, key: str, uri: str) -> bytes:
        data: bytes = self._call("read", uri, lambda: self.client.get_object(Bucket=bucket, Key=key)["Body"].read())
        return data

    def open_read(self, bucket: str, key: str, uri: str) -> BinaryIO:
        response = self._call("open", uri, lambda: self.client.get_object(Bucket=bucket, Key=key))
        return cast(BinaryIO, io.BufferedReader(_BodyReader(response["Body"]), buffer_size=MIB))

    def write_bytes(self, bucket: str, key: str, uri: str, data: bytes) -> None:
        self._call("write", uri, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data))

    def upload_file(self, local_path: str, bucket: str, key: str, uri: str) -> None:
        upload = self.client.upload_file
        self._call("upload", uri, lambda: upload(local_path, bucket, key, Config=TRANSFER_CONFIG))

    def size(self, bucket: str, key: str, uri: str) -> int:
        head = self._call("size", uri, lambda: self.client.head_object(Bucket=bucket, Key=key))
        return int(head["ContentLength"])

    def exists(self, bucket: str, key: str, uri: str) -> bool:
        try:
            self.size(bucket, key, uri)
        except ObjectNotFoundError:
            return False
        return True

    def delete(self, bucket: str, key: str, uri: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self._call("delete", uri, lambda: self.client.delete_object(Bucket=bucket, Key=key))

    def list(self, bucket: str, prefix: str, uri: str) -> Iterator[tuple[str, int]]:
        """Yields ``(key, size)`` page by page in key order; ``dir/`` marker objects are skipped."""
        request: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self._call("list", uri, lambda: self.client.list_objects_v2(**request))
            for obj in page.get("Contents", ()):
                if not obj["Key"].endswith("/"):
                    yield obj["Key"], int(obj["Size"])
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]
