"""Types shared by the storage backends: listing entries and the two error classes."""

import errno
from dataclasses import dataclass


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
