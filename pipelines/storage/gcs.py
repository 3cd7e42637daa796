"""GCS backend (google-cloud-storage), imported only when a ``gs://`` URI is used.

Credentials come only from google-auth's default chain (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud, metadata server),
except with ``StorageConfig.gcs_endpoint_url`` set (an emulator or a GCS-compatible server): then requests are
anonymous and no credentials are looked up at all.

Objects are read as stored (``raw_download``): an object uploaded with ``Content-Encoding: gzip`` is not
decompressed on the way, so reads match ``size()`` and ranged reads are byte offsets of the stored object, as on S3.

Faults: every operation runs in our retry loop (``pipelines.storage.retry``) on top of the client's own retries;
``open_read`` streams the object as ranged GETs pinned to one generation and resumes at the byte where a transient
fault broke it (``pipelines.storage.resumable``). When the retries on a transient fault run out,
``TransientStorageError`` is raised for every operation.
"""

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs
from google.cloud.storage.exceptions import DataCorruption

from pipelines.config.storage import StorageConfig
from pipelines.storage.base import LazyClientBackend, StorageError, failed, not_found
from pipelines.storage.resumable import open_resumable
from pipelines.storage.retry import call_with_retry


T = TypeVar("T")

MIB = 1 << 20
# Bytes per ranged GET of a streamed read: what one open reader holds in memory, and at most what a retry fetches
# again. Each GET costs a round trip (tens of ms on GCS), so smaller chunks would cut single-stream throughput.
READ_CHUNK_SIZE = 16 * MIB
# Bytes per request of a resumable upload (a multiple of 256 KiB, as GCS requires). Objects up to 8 MiB go in one
# multipart request instead. Bounds the memory of an upload; the client's default is 100 MiB.
UPLOAD_CHUNK_SIZE = 8 * MIB

_TRANSIENT_ERRORS = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    ConnectionResetError,
    DataCorruption,  # checksum mismatch of a whole-object download: the bytes were damaged on the way
)


def is_transient(exc: BaseException) -> bool:
    """True for the allow-list of retryable GCS errors: 429, 5xx, connection resets, timeouts, damaged bodies."""
    return isinstance(exc, _TRANSIENT_ERRORS)


def make_gcs_client(cfg: StorageConfig) -> Any:
    """A GCS client from ``cfg``: Google with default credentials, or ``cfg.gcs_endpoint_url`` anonymously."""
    if cfg.gcs_endpoint_url is None:
        return gcs.Client(project=cfg.gcs_project)
    # Explicit anonymous credentials: google-auth's default chain is never consulted (no metadata-server probe,
    # no real token sent to a test server), and workers need no STORAGE_EMULATOR_HOST in their environment.
    return gcs.Client(
        project=cfg.gcs_project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": cfg.gcs_endpoint_url},
    )


class _RangedReader:
    """One generation of an object from byte ``offset`` on, as ranged GETs of ``READ_CHUNK_SIZE`` bytes.

    The raw stream ``open_resumable`` asks for: ``read(n)`` and ``close()``. Transient errors are raised unchanged
    so ``open_resumable`` can resume at its own position; everything else is mapped to our error types here, since
    ``open_resumable`` passes non-transient errors through as they are.

    Every GET carries ``ifGenerationMatch``: if the object is replaced while it is read, GCS answers 412 and the
    read fails instead of mixing bytes of two versions.
    """

    def __init__(
        self, blob: Any, *, offset: int, size: int, generation: int | None, uri: str, timeout: tuple[float, float]
    ) -> None:
        self._blob = blob
        self._pos = offset
        self._size = size
        self._generation = generation
        self._uri = uri
        self._timeout = timeout
        self._buffer = b""
        self._used = 0  # bytes of ``_buffer`` already returned (an index, so a read copies only what it returns)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fetches a new chunk only when the previous one is used up; b"" at the end.

        Never more than one chunk per call, however large ``n``: a short read is fine for ``open_resumable``, and it
        keeps each GET (and what a fault throws away) at ``READ_CHUNK_SIZE``.
        """
        if self._used == len(self._buffer) and self._pos < self._size:
            end = min(self._size, self._pos + READ_CHUNK_SIZE)  # exclusive
            self._buffer, self._used = self._fetch(self._pos, end), 0
        data = self._buffer[self._used : self._used + n]
        self._used += len(data)
        self._pos += len(data)
        return data

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            data: bytes = self._blob.download_as_bytes(
                start=start,
                end=end - 1,  # inclusive in the API
                raw_download=True,
                checksum=None,  # the server knows only the whole object's checksum
                if_generation_match=self._generation,
                retry=None,  # one retry layer for streams: open_resumable's, which counts stalls, not requests
                timeout=self._timeout,
            )
        except gexc.PreconditionFailed as exc:
            raise StorageError(
                f"storage read failed for {self._uri}: the object changed while it was read "
                f"(generation {self._generation} is no longer current)"
            ) from exc
        except Exception as exc:
            if is_transient(exc):
                raise
            if isinstance(exc, gexc.NotFound):
                raise not_found(self._uri) from exc
            raise failed("read", self._uri, exc) from exc
        return data

    def close(self) -> None:
        self._buffer, self._used = b"", 0


class GcsBackend(LazyClientBackend):
    """GCS operations on ``(bucket, key)``; ``uri`` is used in errors and log lines."""

    def _make_client(self) -> Any:
        return make_gcs_client(self._cfg)

    @property
    def _timeout(self) -> tuple[float, float]:
        """``(connect, read)`` seconds for every request."""
        return (self._cfg.connect_timeout_s, self._cfg.read_timeout_s)

    def _blob(self, bucket: str, key: str, **kwargs: Any) -> Any:
        return self.client.bucket(bucket).blob(key, **kwargs)

    def _call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        """Runs ``fn`` with retries; maps missing objects to ObjectNotFoundError and GCS errors to StorageError."""
        try:
            return call_with_retry(fn, cfg=self._cfg, is_transient=is_transient, op=op, uri=uri)
        except gexc.NotFound as exc:
            raise not_found(uri) from exc
        except (gexc.GoogleAPIError, requests.exceptions.RequestException) as exc:
            raise failed(op, uri, exc) from exc

    def _metadata(self, bucket: str, key: str, uri: str, op: str) -> Any:
        """The object's metadata (size, generation); ObjectNotFoundError if it or its bucket is missing."""
        blob = self._call(op, uri, lambda: self.client.bucket(bucket).get_blob(key, timeout=self._timeout))
        if blob is None:
            raise not_found(uri)
        return blob

    def read_bytes(self, bucket: str, key: str, uri: str) -> bytes:
        """The whole object in one GET, checked against its stored checksum; a failed GET is retried whole.

        Meant for small objects (images, JSON, indexes); shards and weights are streamed with ``open_read``.
        """
        data: bytes = self._call(
            "read",
            uri,
            lambda: self._blob(bucket, key).download_as_bytes(raw_download=True, timeout=self._timeout),
        )
        return data

    def read_range(self, bucket: str, key: str, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` in one ranged GET, retried whole on a transient fault."""
        if length <= 0:
            return b""
        blob = self._blob(bucket, key)
        end = start + length - 1  # inclusive, as the HTTP Range header
        data: bytes = self._call(
            "read_range",
            uri,
            lambda: blob.download_as_bytes(start=start, end=end, raw_download=True, timeout=self._timeout),
        )
        return data

    def open_read(self, bucket: str, key: str, uri: str) -> BinaryIO:
        """A buffered stream of the object's current generation that resumes after transient faults.

        One metadata GET for size and generation, then ranged GETs pinned to that generation (see `_RangedReader`).
        """
        meta = self._metadata(bucket, key, uri, "open")
        size, generation = int(meta.size), meta.generation  # generation: None only on servers without one
        # A fresh blob, not the one from the metadata GET: its URL is built by the client (the object name
        # quoted), where the server's mediaLink may not be (the emulator's is not).
        blob = self._blob(bucket, key)

        def open_at(offset: int) -> _RangedReader:
            return _RangedReader(blob, offset=offset, size=size, generation=generation, uri=uri, timeout=self._timeout)

        return open_resumable(open_at, size=size, uri=uri, cfg=self._cfg, is_transient=is_transient)

    def write_bytes(self, bucket: str, key: str, uri: str, data: bytes) -> None:
        """One object in one piece: GCS publishes it only when the upload completes (atomic overwrite)."""
        blob = self._blob(bucket, key, chunk_size=UPLOAD_CHUNK_SIZE)
        self._call("write", uri, lambda: blob.upload_from_string(data, timeout=self._timeout))

    def upload_file(self, local_path: str, bucket: str, key: str, uri: str) -> None:
        """A local file as one object; above 8 MiB a resumable upload in ``UPLOAD_CHUNK_SIZE`` requests.

        A missing local file raises FileNotFoundError (from ``open``, not retried, not a storage failure).
        """
        blob = self._blob(bucket, key, chunk_size=UPLOAD_CHUNK_SIZE)
        self._call("upload", uri, lambda: blob.upload_from_filename(local_path, timeout=self._timeout))

    def size(self, bucket: str, key: str, uri: str) -> int:
        return int(self._metadata(bucket, key, uri, "size").size)

    def exists(self, bucket: str, key: str, uri: str) -> bool:
        return bool(self._call("exists", uri, lambda: self._blob(bucket, key).exists(timeout=self._timeout)))

    def delete(self, bucket: str, key: str, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", uri, lambda: self._blob(bucket, key).delete(timeout=self._timeout))

    def list(self, bucket: str, prefix: str, uri: str) -> Iterator[tuple[str, int]]:
        """Yields ``(key, size)`` in key order, fetching one page when the previous one is used up.

        Each page is its own request with its own retries, resumed from the last page token: a page that fails
        midway is fetched again, never skipped (the client's own iterator cannot be resumed after an error).
        """
        token: str | None = None
        while True:
            # partial binds the token now: every retry of this call asks for the same page.
            items, token = self._call("list", uri, functools.partial(self._page, bucket, prefix, token))
            for name, size in items:
                if not name.endswith("/"):  # "folder" placeholder objects made by consoles and tools
                    yield name, size
            if not token:
                return

    def list_level(self, bucket: str, prefix: str, uri: str) -> Iterator[tuple[str, int | None]]:
        """One level below ``prefix`` (a folder, ending in ``/``): ``(key, size)`` of the objects directly in it and
        ``(sub_prefix, None)`` of its sub-folders (``delimiter="/"``), page by page with resumable retries."""
        token: str | None = None
        while True:
            page = functools.partial(self._level_page, bucket, prefix, token)  # binds the token: retries ask the same
            (items, prefixes), token = self._call("list", uri, page)
            for name, size in items:
                if not name.endswith("/"):
                    yield name, size
            for sub_prefix in prefixes:
                yield sub_prefix, None
            if not token:
                return

    def _page(self, bucket: str, prefix: str, token: str | None) -> tuple[tuple[tuple[str, int], ...], str | None]:
        """One page of a listing and the token of the next one (None after the last)."""
        iterator = self.client.list_blobs(bucket, prefix=prefix, page_token=token, timeout=self._timeout)
        page = next(iterator.pages)
        items = tuple((blob.name, int(blob.size)) for blob in page)
        return items, iterator.next_page_token

    def _level_page(
        self, bucket: str, prefix: str, token: str | None
    ) -> tuple[tuple[tuple[tuple[str, int], ...], tuple[str, ...]], str | None]:
        """One page of a one-level listing: its objects, its sub-prefixes (the API sends them per page, beside
        the objects), and the token of the next page."""
        iterator = self.client.list_blobs(
            bucket, prefix=prefix, delimiter="/", page_token=token, timeout=self._timeout
        )
        page = next(iterator.pages)
        items = tuple((blob.name, int(blob.size)) for blob in page)
        return (items, tuple(sorted(page.prefixes))), iterator.next_page_token
