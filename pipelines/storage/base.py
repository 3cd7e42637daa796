"""Types shared by the storage backends: listing entries, the error classes, the lazy client.

Errors come in three kinds, so callers can tell a failing store from a problem with the content:

* ``ObjectNotFoundError`` (a ``FileNotFoundError``): the object or its bucket does not exist.
* ``TransientStorageError`` (a ``StorageError`` with ``transient = True``): the store kept failing with errors
  that are normally temporary (throttling, 5xx, resets, timeouts, truncated bodies) until the retries ran out.
  Nothing is wrong with the object; a job must fail the work item (raise) so the runner retries it later, and
  never turn this into a per-element error row.
* ``StorageError`` (``transient = False``): anything else (access denied, bad request, an object that changed
  while it was read); retrying will not help.
"""

import errno
import threading
from dataclasses import dataclass
from typing import Any

from pipelines.config.storage import StorageConfig


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object (never a directory).

    Attributes:
        uri: Full URI of the object, in the same form (scheme or plain path) as the listed prefix.
        size: Size in bytes.
    """

    uri: str
    size: int


class StorageError(OSError):
    """A storage operation failed for a reason other than a missing object; the message names both.

    Attributes:
        transient: True only for ``TransientStorageError``: the failure is the store's, not the object's.
    """

    transient: bool = False


class TransientStorageError(StorageError):
    """Retries on transient errors (throttling, 5xx, resets, timeouts, truncated bodies) ran out.

    The message names the operation, the URI, the number of attempts and the last cause. Fail the work item
    (let the exception propagate) so the runner retries it; do not record it as bad input.
    """

    transient = True


class ObjectNotFoundError(FileNotFoundError):
    """The object (or its bucket) does not exist; ``filename`` is the URI."""


def not_found(uri: str) -> ObjectNotFoundError:
    """Builds the error for a missing object, with the URI in its message and in ``filename``."""
    return ObjectNotFoundError(errno.ENOENT, "No such object", uri)


def failed(op: str, uri: str, exc: BaseException) -> StorageError:
    """Builds the error for a failed operation, naming the operation, the URI and the cause."""
    return StorageError(f"storage {op} failed for {uri}: {type(exc).__name__}: {exc}")


def transient_failed(op: str, uri: str, attempts: int, exc: BaseException) -> TransientStorageError:
    """Builds the error for a transient fault that persisted through ``attempts`` attempts, naming the cause."""
    return TransientStorageError(
        f"storage {op} failed for {uri}: transient error persisted after {attempts} attempts: "
        f"{type(exc).__name__}: {exc}"
    )


class LazyClientBackend:
    """A backend whose SDK client is created on first use, once, even with many threads asking at once.

    Creating clients lazily keeps them out of pickles: `Storage` objects travel to Beam workers, sockets do not.
    """

    def __init__(self, cfg: StorageConfig) -> None:
        self._cfg = cfg
        self._client: Any = None
        self._lock = threading.Lock()

    def _make_client(self) -> Any:
        raise NotImplementedError

    @property
    def client(self) -> Any:
        """The SDK client, created on first use (never pickled)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client
