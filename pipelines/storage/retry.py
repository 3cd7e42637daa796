"""Bounded retries for transient object-store errors.

Policy (style anchor G13, tier 3):

* Only an explicit allow-list is retried: throttling (S3 ``SlowDown``/``Throttling``/``RequestLimitExceeded``,
  GCS 429), server errors (500/502/503/504, ``InternalError``, ``ServiceUnavailable``), connection resets and read
  timeouts. Everything else (``AccessDenied``, ``NoSuchBucket``, bad requests, missing objects, our own bugs) is
  raised on the first occurrence: retrying cannot fix it and would only delay the failure by minutes.
* Delays use exponential backoff with *full jitter* (``uniform(0, min(max, base * 2**n))``), which spreads the
  retries of many Beam workers that were throttled at the same moment instead of having them retry in lockstep
  (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
* There are two layers on purpose. botocore retries each HTTP request (``retries={"mode": "adaptive"}`` also
  rate-limits the client after throttling), but it cannot retry what fails after the response headers arrived,
  such as a connection reset while a GET body is streamed, nor errors that s3transfer re-wraps. Our loop retries
  the whole operation (request + body read, or a full managed upload). Operations are idempotent (GET, HEAD, PUT of
  the full object, DELETE), so repeating them is safe.
* Streamed reads are not repeated from the start: ``pipelines.storage.resumable`` reopens a broken stream with a
  ranged GET at the byte where it broke, and a reader that keeps making progress never runs out of attempts.
* When the attempts run out on a transient error, ``TransientStorageError`` (``StorageError.transient`` is True) is
  raised, chained to the last error. It means "the store is failing", never "this object is bad": jobs let it
  propagate so Beam retries the work item (safe: outputs are deterministic and published atomically), and they
  do not write it down as an error row. A non-transient error is raised on its first occurrence, unchanged, for
  the backend to map to ``ObjectNotFoundError`` or ``StorageError``.
"""

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines.config.storage import StorageConfig
from pipelines.storage.base import transient_failed


logger = logging.getLogger(__name__)

T = TypeVar("T")


def backoff_delay(cfg: StorageConfig, attempt: int) -> float:
    """Full-jitter delay in seconds before retry number ``attempt`` (0-based)."""
    cap = min(cfg.backoff_max_s, cfg.backoff_base_s * (2**attempt))
    return random.uniform(0.0, cap)


def call_with_retry(
    fn: Callable[[], T], *, cfg: StorageConfig, is_transient: Callable[[BaseException], bool], op: str, uri: str
) -> T:
    """Calls ``fn`` and retries it while it raises an allow-listed transient error.

    Args:
        fn: The whole operation, safe to repeat.
        cfg: Source of ``max_attempts``, ``backoff_base_s`` and ``backoff_max_s``.
        is_transient: Returns True for errors worth retrying.
        op: Operation name for the log line.
        uri: URI for the log line.

    Returns:
        What ``fn`` returns.

    Raises:
        TransientStorageError: ``max_attempts`` attempts all failed with transient errors (chained to the last).
        Exception: The first non-transient error, unchanged.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt + 1 >= cfg.max_attempts:
                raise transient_failed(op, uri, cfg.max_attempts, exc) from exc
            delay = backoff_delay(cfg, attempt)
            logger.warning(
                "storage %s %s: transient %s (attempt %d/%d), retrying in %.2f s: %s",
                op,
                uri,
                type(exc).__name__,
                attempt + 1,
                cfg.max_attempts,
                delay,
                exc,
            )
            time.sleep(delay)
            attempt += 1
