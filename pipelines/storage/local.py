"""Local filesystem backend: atomic publish by temp file + ``os.replace``, lazy sorted recursive listing."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from pipelines.storage.base import failed, not_found


# Our temp files start with this; listings skip them so a half-written file is never visible as an object.
TEMP_PREFIX = ".storage-tmp-"

# mkstemp creates 0600 files; published files get the usual permissions instead (read once, umask is global).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def _errors(op: str, uri: str) -> Iterator[None]:
    """Maps OS errors: missing paths (or directories, which are not objects) to not-found, others to StorageError."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise not_found(uri) from exc
    except OSError as exc:
        raise failed(op, uri, exc) from exc


def _publish(path: str, fill: Callable[[BinaryIO], object]) -> None:
    """Writes a temp file next to ``path`` with ``fill``, fsyncs it and renames it over ``path`` atomically."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class LocalBackend:
    """Objects are regular files; ``path`` arguments are filesystem paths, ``uri`` the caller's spelling."""

    def read_bytes(self, path: str, uri: str) -> bytes:
        with _errors("read", uri), open(path, "rb") as f:
            return f.read()

    def read_range(self, path: str, uri: str, start: int, length: int) -> bytes:
        with _errors("read", uri), open(path, "rb") as f:
            f.seek(start)
            return f.read(max(length, 0))

    def open_read(self, path: str, uri: str) -> BinaryIO:
        with _errors("open", uri):
            return open(path, "rb")

    def write_bytes(self, path: str, uri: str, data: bytes) -> None:
        with _errors("write", uri):
            _publish(path, lambda f: f.write(data))

    def upload_file(self, local_path: str, path: str, uri: str) -> None:
        with _errors("upload", local_path):
            src = open(local_path, "rb")  # noqa: SIM115 - closed just below; open errors name the source
        with src, _errors("upload", uri):
            _publish(path, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))

    def exists(self, path: str, uri: str) -> bool:
        with _errors("exists", uri):
            return os.path.isfile(path)

    def size(self, path: str, uri: str) -> int:
        with _errors("size", uri):
            if not os.path.isfile(path):
                raise not_found(uri)
            return os.path.getsize(path)

    def delete(self, path: str, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError), _errors("delete", uri):
            os.remove(path)

    def list(self, path_prefix: str) -> Iterator[tuple[str, int]]:
        """Yields ``(path, size)`` of files whose path starts with ``path_prefix``, in lexicographic path order."""
        parent, name_prefix = os.path.split(path_prefix)
        yield from _walk(parent or ".", name_prefix, with_dir=bool(parent))

    def list_level(self, folder: str) -> Iterator[tuple[str, int | None]]:
        """``(path, size)`` of the files directly in ``folder`` and ``(path + "/", None)`` of its sub-folders."""
        try:
            with os.scandir(folder or ".") as it:
                entries = sorted((e for e in it if not e.name.startswith(TEMP_PREFIX)), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            path = os.path.join(folder, entry.name)
            if entry.is_dir():
                yield path + "/", None
            elif entry.is_file():
                with contextlib.suppress(FileNotFoundError):  # deleted since the scan
                    yield path, entry.stat().st_size


def _walk(directory: str, name_prefix: str, *, with_dir: bool) -> Iterator[tuple[str, int]]:
    """Recursive, lazy per directory. Directories sort as ``name/`` so the order equals full-path string order."""
    try:
        with os.scandir(directory) as it:
            entries = [e for e in it if e.name.startswith(name_prefix) and not e.name.startswith(TEMP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return
    entries.sort(key=lambda e: e.name + "/" if e.is_dir() else e.name)
    for entry in entries:
        path = os.path.join(directory, entry.name) if with_dir else entry.name
        if entry.is_dir():
            yield from _walk(path, "", with_dir=True)
        elif entry.is_file():
            with contextlib.suppress(FileNotFoundError):  # deleted since the scan
                yield path, entry.stat().st_size
