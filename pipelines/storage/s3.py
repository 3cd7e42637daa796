"""S3 backend (boto3), also for S3-compatible servers through ``StorageConfig.s3_endpoint_url``.

Credentials come only from boto3's default chain (environment, shared profiles, instance or task role).

Faults are handled in two layers (see ``pipelines.storage.retry``): botocore retries each request, our loop the whole
operation; streamed reads (``open_read``, ``read_bytes``) resume with ranged GETs at the byte where a body broke
(``pipelines.storage.resumable``), and check with the ETag that every range comes from the same object. When the
retries on a transient fault run out, ``TransientStorageError`` is raised for every operation.
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

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
from pipelines.storage.base import (
    LazyClientBackend,
    ObjectNotFoundError,
    StorageError,
    failed,
    not_found,
)
from pipelines.storage.resumable import open_resumable
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
        # total_max_attempts counts the first try, as StorageConfig.max_attempts does (botocore's max_attempts not)
        retries={"total_max_attempts": cfg.max_attempts, "mode": cfg.retry_mode.value},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        s3={"addressing_style": cfg.s3_addressing_style.value},
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
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


def _map_error(op: str, uri: str, exc: Exception) -> Exception:
    """The exception to raise for a non-transient SDK error: ``ObjectNotFoundError`` or ``StorageError``."""
    if _is_missing(exc):
        return not_found(uri)
    return failed(op, uri, exc)


class _RangeStream:
    """One GetObject body for the resumable reader: non-transient errors mapped, transient ones left raw."""

    def __init__(self, body: Any, uri: str) -> None:
        self._body = body
        self._uri = uri

    def read(self, n: int) -> bytes:
        try:
            data: bytes = self._body.read(n)
        except (BotoCoreError, ClientError) as exc:
            if is_transient(exc):
                raise  # resumed by the reader
            raise failed("read", self._uri, exc) from exc
        return data

    def close(self) -> None:
        self._body.close()


class S3Backend(LazyClientBackend):
    """S3 operations on ``(bucket, key)``; ``uri`` is used in errors and log lines."""

    def _make_client(self) -> Any:
        return make_s3_client(self._cfg)

    def _call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        """Runs ``fn`` with retries; maps missing objects to ObjectNotFoundError and AWS errors to StorageError."""
        try:
            return call_with_retry(fn, cfg=self._cfg, is_transient=is_transient, op=op, uri=uri)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise _map_error(op, uri, exc) from exc

    def read_bytes(self, bucket: str, key: str, uri: str) -> bytes:
        """The whole object; a body that breaks is resumed where it broke, not fetched again from byte 0."""
        with self.open_read(bucket, key, uri, op="read") as stream:
            return stream.read()

    def read_range(self, bucket: str, key: str, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` in one ranged GET; a body cut short is fetched again (it raises
        ``IncompleteReadError``, a transient error). Fewer bytes only where the object ends."""
        if length <= 0:
            return b""
        request = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{start + length - 1}"}
        data: bytes = self._call("read_range", uri, lambda: self.client.get_object(**request)["Body"].read())
        return data

    def open_read(self, bucket: str, key: str, uri: str, op: str = "open") -> BinaryIO:
        """A buffered reader over the object that survives transient faults (see ``pipelines.storage.resumable``).

        The first GetObject runs here (a missing object raises at once); its size and ETag pin the object, and
        every resumed range must carry the same ETag, else ``StorageError`` (the object changed mid-read).
        """
        first = self._call(op, uri, lambda: self.client.get_object(Bucket=bucket, Key=key))
        etag = first.get("ETag")
        unread = [first["Body"]]

        def open_at(offset: int) -> _RangeStream:
            if offset == 0 and unread:  # the reader's first call: the body of the GET above
                return _RangeStream(unread.pop(), uri)
            try:
                response = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-")
            except (ClientError, BotoCoreError) as exc:
                if is_transient(exc):
                    raise  # the reader backs off and calls again
                raise _map_error("read", uri, exc) from exc
            stream = _RangeStream(response["Body"], uri)
            problem = _resume_problem(response, offset, etag)
            if problem:
                stream.close()
                raise StorageError(f"storage read failed for {uri}: {problem}")
            return stream

        return open_resumable(
            open_at, size=int(first["ContentLength"]), uri=uri, cfg=self._cfg, is_transient=is_transient
        )

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

    def list_level(self, bucket: str, prefix: str, uri: str) -> Iterator[tuple[str, int | None]]:
        """One level below ``prefix`` (a folder, ending in ``/``): ``(key, size)`` of the objects directly in it and
        ``(sub_prefix, None)`` of its sub-folders, page by page (``Delimiter="/"``: the server groups each
        sub-folder's keys into one common prefix, so the cost is one request per 1,000 entries of this level)."""
        request: dict[str, str] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
        while True:
            page = self._call("list", uri, lambda: self.client.list_objects_v2(**request))
            for obj in page.get("Contents", ()):
                if not obj["Key"].endswith("/"):
                    yield obj["Key"], int(obj["Size"])
            for common in page.get("CommonPrefixes", ()):
                yield common["Prefix"], None
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]


def _resume_problem(response: dict[str, Any], offset: int, etag: str | None) -> str:
    """Why a ranged response cannot continue a read at ``offset`` of the object with ``etag`` ("" if it can)."""
    if etag is not None and response.get("ETag") != etag:
        return f"the object changed while it was read (ETag {etag} became {response.get('ETag')})"
    content_range = str(response.get("ContentRange", ""))
    if not content_range.startswith(f"bytes {offset}-"):
        return f"asked for bytes from {offset}, the server sent range {content_range!r}"
    return ""
