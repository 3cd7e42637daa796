"""Streamed reads that survive transient faults by resuming at the byte where the stream broke.

A shard tar is read for minutes as one HTTP response body; a connection reset, a read timeout or a truncated
body in the middle of it must not fail the shard, and re-reading from byte 0 would waste what already arrived
(and could not be done behind ``tarfile``'s back anyway). ``open_resumable`` hides the breaks: it tracks the
position, and when a read fails with a transient error, or the body ends before the object's size (a truncated
body, which is a fault, not EOF), it closes the broken stream, backs off and asks ``open_at`` for a new one at
the current position (a ranged GET, ``Range: bytes=<offset>-``). The backend-specific parts stay with the
backend: ``open_at`` (which also checks that the object did not change between requests) and ``is_transient``.

Attempts are counted per stall, not per object: any byte of progress resets the count, so a multi-GB read through
a flaky network finishes as long as it keeps moving, while a store that stays broken for ``cfg.max_attempts``
consecutive attempts raises ``TransientStorageError`` (the store is failing, the object is fine; see
``pipelines.storage.base``). Non-transient errors pass through unchanged on their first occurrence.
"""

import io
import logging
import time
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from pipelines.config.storage import StorageConfig
from pipelines.storage.base import StorageError, transient_failed
from pipelines.storage.retry import backoff_delay


logger = logging.getLogger(__name__)

BUFFER_SIZE = 1 << 20  # bytes of the reader's buffer: what small reads (tarfile's 10 KiB) are served from
# Most bytes asked of the stream in one call. A call that fails loses what it had read so far (the SDKs collect
# a read(n) before returning it), so a whole-object read is done in pieces that each count as progress.
MAX_READ = 8 << 20


class TruncatedBodyError(IOError):
    """A response body ended before the object's size: the connection closed early. Always transient."""


class _ResumableRaw(io.RawIOBase):
    """The raw layer of ``open_resumable``: position tracking, reopen on transient faults, bounded stalls."""

    def __init__(
        self,
        open_at: Callable[[int], Any],
        size: int | None,
        uri: str,
        cfg: StorageConfig,
        is_transient: Callable[[BaseException], bool],
    ) -> None:
        self._open_at = open_at
        self._size = size
        self._uri = uri
        self._cfg = cfg
        self._is_transient = is_transient
        self._stream: Any = None
        self._open_error: BaseException | None = None
        self._pos = 0

    def open_first(self) -> None:
        """Calls ``open_at(0)`` now, so a missing or forbidden object fails at open and ``close`` always has the
        stream to close; a transient error here counts as the first failed attempt of the first read."""
        try:
            self._stream = self._open_at(0)
        except Exception as exc:
            if not self._is_transient(exc):
                raise
            self._open_error = exc

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """Bytes delivered so far (the offset the next read starts at)."""
        return self._pos

    def readinto(self, buffer: Any) -> int:
        """Fills ``buffer`` with at least one byte, resuming as often as transient faults require; 0 at the end."""
        view = memoryview(buffer).cast("B")
        want = min(len(view), MAX_READ)
        if self._size is not None:
            want = min(want, self._size - self._pos)
        if want <= 0:
            return 0
        data = self._read_with_resume(want)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest of the object, read in ``MAX_READ`` pieces (the default would read 8 KiB at a time)."""
        chunks = []
        while True:
            want = MAX_READ if self._size is None else min(MAX_READ, self._size - self._pos)
            if want <= 0:
                break
            data = self._read_with_resume(want)
            if not data:
                break
            self._pos += len(data)
            chunks.append(data)
        return b"".join(chunks)

    def _read_with_resume(self, want: int) -> bytes:
        """Up to ``want`` bytes from the current position; b"" only at the real end (or at EOF of unknown size)."""
        failures = 0
        if self._open_error is not None:  # the first stream could not be opened: that was attempt 1
            failures, self._open_error = self._back_off(failures, self._open_error), None
        while True:
            try:
                if self._stream is None:
                    self._stream = self._open_at(self._pos)
                data: bytes = self._stream.read(want)
            except Exception as exc:
                if not self._is_transient(exc):
                    raise
                cause: BaseException = exc
            else:
                if len(data) > want:
                    raise StorageError(f"storage read failed for {self._uri}: stream returned more bytes than asked")
                if data or self._size is None:
                    return data
                cause = TruncatedBodyError(f"body ended at byte {self._pos} of {self._size}")
            self._drop_stream()
            failures = self._back_off(failures, cause)

    def _back_off(self, failures: int, cause: BaseException) -> int:
        """Counts one more failed attempt; raises once ``max_attempts`` failed in a row, else sleeps."""
        failures += 1
        if failures >= self._cfg.max_attempts:
            raise transient_failed("read", self._uri, failures, cause) from cause
        delay = backoff_delay(self._cfg, failures - 1)
        logger.warning(
            "storage read %s: transient %s at byte %d (attempt %d/%d), resuming in %.2f s: %s",
            self._uri,
            type(cause).__name__,
            self._pos,
            failures,
            self._cfg.max_attempts,
            delay,
            cause,
        )
        time.sleep(delay)
        return failures

    def _drop_stream(self) -> None:
        """Closes the current stream, ignoring errors: it is broken already and will not be read again."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # closing a reset connection may raise; the replacement is what matters
                logger.debug("closing a broken stream of %s: %s", self._uri, exc)

    def close(self) -> None:
        if not self.closed:
            self._drop_stream()
        super().close()


def open_resumable(
    open_at: Callable[[int], Any],
    *,
    size: int | None,
    uri: str,
    cfg: StorageConfig,
    is_transient: Callable[[BaseException], bool],
) -> BinaryIO:
    """A buffered binary reader over an object that reopens its stream after transient faults.

    Args:
        open_at: ``open_at(offset)`` returns a fresh raw stream (``.read(n) -> bytes``, ``.close()``) positioned
            at byte ``offset`` of the object, e.g. a ranged GET ``Range: bytes=<offset>-``. It raises for errors
            (transient ones are retried) and should check that the object is still the one first opened.
            The first call, ``open_at(0)``, is made here: a non-transient error from it is raised by
            ``open_resumable`` itself, a transient one is retried by the first read.
        size: The object's size in bytes, from the first response. With it, a body that ends early is a
            transient truncation and is resumed; ``None`` means a body's end is trusted as the object's end.
        uri: The object, for messages and log lines.
        cfg: ``max_attempts`` (consecutive failed attempts without progress), ``backoff_base_s``, ``backoff_max_s``.
        is_transient: True for errors worth resuming after (the backend's allow-list).

    Returns:
        An ``io.BufferedReader`` (usable by ``tarfile`` mode ``r|``); closing it closes the current stream.

    Raises:
        Exception: A non-transient error of ``open_at(0)``, unchanged.

    Its reads raise:
        TransientStorageError: ``cfg.max_attempts`` consecutive attempts failed with no byte of progress.
        Exception: The first non-transient error, unchanged.
    """
    raw = _ResumableRaw(open_at, size, uri, cfg, is_transient)
    raw.open_first()
    return cast(BinaryIO, io.BufferedReader(raw, buffer_size=BUFFER_SIZE))
