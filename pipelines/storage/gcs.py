"""GCS backend (google-cloud-storage), imported only when a ``gs://`` URI is used.

Credentials come only from google-auth's default chain (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud, metadata server).
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar, cast

import requests
from google.api_core import exceptions as gexc
from google.cloud import storage as gcs

from pipelines.storage.base import LazyClientBackend, failed, not_found
from pipelines.storage.retry import call_with_retry


T = TypeVar("T")

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
)


def is_transient(exc: BaseException) -> bool:
    """True for the allow-list of retryable GCS errors: 429, 5xx, connection resets, timeouts."""
    return isinstance(exc, _TRANSIENT_ERRORS)


class GcsBackend(LazyClientBackend):
    """GCS operations on ``(bucket, key)``; ``uri`` is used in errors and log lines."""

    def _make_client(self) -> Any:
        return gcs.Client(project=self._cfg.gcs_project)

    def _blob(self, bucket: str, key: str) -> Any:
        return self.client.bucket(bucket).blob(key)

    def _call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(fn, cfg=self._cfg, is_transient=is_transient, op=op, uri=uri)
        except gexc.NotFound as exc:
            raise not_found(uri) from exc
        except (gexc.GoogleAPIError, requests.exceptions.RequestException) as exc:
            raise failed(op, uri, exc) from exc

    def read_bytes(self, bucket: str, key: str, uri: str) -> bytes:
        data: bytes = self._call("read", uri, lambda: self._blob(bucket, key).download_as_bytes())
        return data

    def open_read(self, bucket: str, key: str, uri: str) -> BinaryIO:
        blob = self._call("open", uri, lambda: self.client.bucket(bucket).get_blob(key))
        if blob is None:
            raise not_found(uri)
        return cast(BinaryIO, blob.open("rb"))

    def write_bytes(self, bucket: str, key: str, uri: str, data: bytes) -> None:
        self._call("write", uri, lambda: self._blob(bucket, key).upload_from_string(data))

    def upload_file(self, local_path: str, bucket: str, key: str, uri: str) -> None:
        self._call("upload", uri, lambda: self._blob(bucket, key).upload_from_filename(local_path))

    def size(self, bucket: str, key: str, uri: str) -> int:
        blob = self._call("size", uri, lambda: self.client.bucket(bucket).get_blob(key))
        if blob is None:
            raise not_found(uri)
        return int(blob.size)

    def exists(self, bucket: str, key: str, uri: str) -> bool:
        return bool(self._call("exists", uri, lambda: self._blob(bucket, key).exists()))

    def delete(self, bucket: str, key: str, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", uri, lambda: self._blob(bucket, key).delete())

    def list(self, bucket: str, prefix: str, uri: str) -> Iterator[tuple[str, int]]:
        """Yields ``(key, size)`` in key order; the client's iterator fetches one page at a time."""
        blobs = self._call("list", uri, lambda: iter(self.client.list_blobs(bucket, prefix=prefix)))
        for blob in blobs:
            if not blob.name.endswith("/"):
                yield blob.name, int(blob.size)
