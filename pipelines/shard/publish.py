"""Writing a shard tar straight to its final name, published atomically, and cleaning up after killed runs.

Local outputs: the tar is written to a temporary name in the output folder itself (same file system), fsynced
and renamed over the final name, so it is never copied and a reader never sees half a tar. Object stores: the
tar is written to a local temporary file and uploaded in one managed transfer (multipart for large tars),
which is atomic on S3 and GCS. Temporary names start with the storage layer's prefix, which listings skip;
a killed run's leftovers are removed at the next launch (:func:`remove_stale_temporaries`).
"""

import contextlib
import os
import tempfile
from typing import Any

from pipelines.storage import Storage, parse_uri
from pipelines.storage.local import TEMP_PREFIX


_LOCAL_TEMP_DIR_PREFIX = "dpmesh-shard-"
# Published files get the usual permissions (mkstemp makes 0600 files); the umask is read once.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


class TarSink:
    """A binary sink for one shard tar: ``write`` chunks, then ``publish`` (atomic) or ``discard``."""

    def __init__(self, storage: Storage, uri: str) -> None:
        self._storage = storage
        self._uri = uri
        parsed = parse_uri(uri)
        self._local_target = parsed.key if parsed.scheme == "file" else None
        if self._local_target is not None:
            folder = os.path.dirname(self._local_target) or "."
            os.makedirs(folder, exist_ok=True)
            name = os.path.basename(self._local_target)
            fd, self._tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name}-", dir=folder)
        else:
            fd, self._tmp = tempfile.mkstemp(prefix=f"{name_of(uri)}-", dir=_local_temp_dir())
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> int:
        return self._file.write(chunk)

    def publish(self) -> None:
        """Make the tar visible under its final name, durably (local: fsync before the rename)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._local_target is not None:
                os.chmod(self._tmp, _FILE_MODE)
                os.replace(self._tmp, self._local_target)
            else:
                self._storage.upload_file(self._tmp, self._uri)
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the temporary file (a no-op after :meth:`publish` renamed it)."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp)

    def __enter__(self) -> "TarSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()


def name_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _local_temp_dir() -> str:
    """This process's folder under the system temp folder for tars bound for an object store."""
    path = os.path.join(tempfile.gettempdir(), f"{_LOCAL_TEMP_DIR_PREFIX}{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    return path


def remove_stale_temporaries(output: str, folders: tuple[str, ...] = ("", "_shards")) -> int:
    """Delete what killed runs left: temporary files in a local ``output`` (and its ``folders``), and the
    per-process temp folders of processes that no longer run. Returns how many entries were removed.

    Only one run may write to an output at a time (as for every job here), so any temporary file there is stale.
    """
    removed = 0
    parsed = parse_uri(output)
    if parsed.scheme == "file":
        for sub in folders:
            folder = os.path.join(parsed.key, sub)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(entry.path)
                            removed += 1
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as it:
        for entry in it:
            pid = entry.name.removeprefix(_LOCAL_TEMP_DIR_PREFIX)
            if entry.name.startswith(_LOCAL_TEMP_DIR_PREFIX) and pid.isdigit() and not _alive(int(pid)):
                for name in os.listdir(entry.path):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(entry.path, name))
                        removed += 1
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, not ours to clean
        return True
    return True
