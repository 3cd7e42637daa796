"""Types shared by the storage backends: listing entries, the two error classes, the lazy client."""

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
    """A storage operation failed for a reason other than a missing object; the message names both."""


class ObjectNotFoundError(FileNotFoundError):
    """The object (or its bucket) does not exist; ``filename`` is the URI."""


def not_found(uri: str) -> ObjectNotFoundError:
    """Builds the error for a missing object, with the URI in its message and in ``filename``."""
    return ObjectNotFoundError(errno.ENOENT, "No such object", uri)


def failed(op: str, uri: str, exc: BaseException) -> StorageError:
    """Builds the error for a failed operation, naming the operation, the URI and the cause."""
    return StorageError(f"storage {op} failed for {uri}: {type(exc).__name__}: {exc}")


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
