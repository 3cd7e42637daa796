"""``Storage``: one object for every read and write, dispatching on the URI scheme."""

import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

from pipelines.config.storage import StorageConfig
from pipelines.storage.base import ObjectInfo
from pipelines.storage.local import LocalBackend
from pipelines.storage.uri import as_directory, glob_regex, join, literal_prefix, parse_uri


_FILE_SCHEME = "file://"


class Storage:
    """Reads, writes and lists local paths, ``s3://`` and ``gs://`` URIs with one API.

    Writes are atomic: a reader sees the old object, the new one, or nothing, never a partial one (local: temp
    file + ``os.replace``; object stores: a single PUT or a completed multipart upload). Missing objects raise
    ``FileNotFoundError`` (``ObjectNotFoundError``); other failures raise ``StorageError``. Transient errors are
    retried (see ``pipelines.storage.retry``) and streamed reads resume where they broke; a transient fault that
    outlasts ``cfg.max_attempts`` raises ``TransientStorageError`` (``StorageError.transient`` is True), which jobs
    must let fail the work item rather than record as bad input. Clients are created on first use, shared by
    threads, and dropped when pickled, so a ``Storage`` can be shipped to Beam workers.

    Args:
        cfg: Endpoints, region, addressing style and retry bounds. Holds no credentials.
    """

    join = staticmethod(join)

    def __init__(self, cfg: StorageConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else StorageConfig()
        self._local = LocalBackend()
        self._remote: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Storage({self.cfg!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cfg"])  # type: ignore[misc]

    def _remote_backend(self, scheme: str) -> Any:
        """The S3 or GCS backend, imported and created on first use (gs:// never imports google otherwise)."""
        with self._lock:
            if scheme not in self._remote:
                if scheme == "s3":
                    from pipelines.storage.s3 import S3Backend

                    self._remote[scheme] = S3Backend(self.cfg)
                else:
                    from pipelines.storage.gcs import GcsBackend

                    self._remote[scheme] = GcsBackend(self.cfg)
            return self._remote[scheme]

    def _dispatch(self, uri: str) -> tuple[Any, tuple[str, ...]]:
        """Returns the backend and the leading arguments for it: ``(path, uri)`` or ``(bucket, key, uri)``."""
        parsed = parse_uri(uri)
        if parsed.scheme == "file":
            return self._local, (parsed.key, uri)
        return self._remote_backend(parsed.scheme), (parsed.bucket, parsed.key, uri)

    def read_bytes(self, uri: str) -> bytes:
        """Returns the whole object."""
        backend, args = self._dispatch(uri)
        data: bytes = backend.read_bytes(*args)
        return data

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes of the object from byte ``start`` (one ranged request on object stores): random access
        into a large object, e.g. one image of a shard tar at its index's ``tar_offset``. Fewer bytes only where
        the object ends."""
        backend, args = self._dispatch(uri)
        data: bytes = backend.read_range(*args, start, length)
        return data

    def open_read(self, uri: str) -> BinaryIO:
        """Opens the object for streaming reads (a buffered binary file; usable by ``tarfile`` mode ``r|``).

        On object stores the reader resumes with a ranged request after a transient fault mid-stream.
        """
        backend, args = self._dispatch(uri)
        stream: BinaryIO = backend.open_read(*args)
        return stream

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Writes ``data`` as the object at ``uri``, atomically replacing any previous one."""
        backend, args = self._dispatch(uri)
        backend.write_bytes(*args, data)

    def upload_file(self, local_path: str, uri: str) -> None:
        """Copies a local file to ``uri`` atomically (S3: managed transfer, multipart above 8 MiB)."""
        backend, args = self._dispatch(uri)
        backend.upload_file(local_path, *args)

    def exists(self, uri: str) -> bool:
        """True if an object (not a directory) exists at ``uri``."""
        backend, args = self._dispatch(uri)
        return bool(backend.exists(*args))

    def size(self, uri: str) -> int:
        """Size of the object in bytes."""
        backend, args = self._dispatch(uri)
        return int(backend.size(*args))

    def delete(self, uri: str) -> None:
        """Deletes the object; a missing object is not an error."""
        backend, args = self._dispatch(uri)
        backend.delete(*args)

    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """Lists objects under the directory ``prefix_uri``, recursively, lazily, in key order.

        ``prefix_uri`` is a directory: ``list("s3://b/out")`` yields ``s3://b/out/...`` but never ``s3://b/out2``.
        A missing local directory yields nothing; a missing bucket raises ``FileNotFoundError``.
        """
        return self._list_raw(as_directory(prefix_uri))

    def glob(self, pattern_uri: str) -> Iterator[ObjectInfo]:
        """Lists objects matching ``pattern_uri``: ``*``, ``?`` and ``[...]`` stay within one path segment, ``**``
        crosses ``/``. Lists only below the longest wildcard-free prefix."""
        regex = glob_regex(pattern_uri)
        return (info for info in self._list_raw(literal_prefix(pattern_uri)) if regex.match(info.uri))

    def list_top(self, folder_uri: str) -> Iterator[ObjectInfo]:
        """The objects directly in the folder ``folder_uri`` (not in its sub-folders), lazily, in key order."""
        return (ObjectInfo(uri, size) for uri, size in self._list_level(folder_uri) if size is not None)

    def subfolders(self, folder_uri: str) -> tuple[str, ...]:
        """The sub-folders of ``folder_uri`` (URIs ending in ``/``), sorted. On object stores a folder is a common
        key prefix: one delimiter listing of this level, never a listing of everything below it."""
        return tuple(sorted(uri for uri, size in self._list_level(folder_uri) if size is None))

    def _list_level(self, folder_uri: str) -> Iterator[tuple[str, int | None]]:
        """``(uri, size)`` of the objects directly in ``folder_uri`` and ``(uri, None)`` of its sub-folders."""
        folder_uri = as_directory(folder_uri)
        parsed = parse_uri(folder_uri)
        if parsed.scheme == "file":
            head = _FILE_SCHEME if folder_uri.startswith(_FILE_SCHEME) else ""
            for path, size in self._local.list_level(parsed.key):
                yield head + path, size
            return
        backend = self._remote_backend(parsed.scheme)
        root = f"{parsed.scheme}://{parsed.bucket}/"
        for key, size in backend.list_level(parsed.bucket, parsed.key, folder_uri):
            yield root + key, size

    def _list_raw(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """Objects whose URI starts with ``prefix_uri`` (a plain string prefix), as the caller spelled the scheme."""
        parsed = parse_uri(prefix_uri)
        if parsed.scheme == "file":
            head = _FILE_SCHEME if prefix_uri.startswith(_FILE_SCHEME) else ""
            for path, size in self._local.list(parsed.key):
                yield ObjectInfo(head + path, size)
            return
        backend = self._remote_backend(parsed.scheme)
        root = f"{parsed.scheme}://{parsed.bucket}/"
        for key, size in backend.list(parsed.bucket, parsed.key, prefix_uri):
            yield ObjectInfo(root + key, size)
