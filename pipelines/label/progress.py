"""Progress of a ``dpmesh-label`` run, read from the per-shard ``_done/`` markers while it works.

Markers live in storage, so the driver sees progress the same way whatever the runner: a local run logs shards
done and persons/s while it works. (The run's summary is :mod:`pipelines.label.finish`.)
"""

import logging
import threading
import time
from types import TracebackType

from pipelines.common.label_set import fetch_markers, listed_markers
from pipelines.storage import Storage


logger = logging.getLogger(__name__)


class ProgressReporter:
    """Logs ``shards done / total`` and persons/s every ``interval_s`` while a run is in flight."""

    def __init__(self, storage: Storage, output: str, pending: list[str], interval_s: float) -> None:
        self._storage = storage
        self._output = output
        self._pending = set(pending)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dpmesh-progress", daemon=True)
        self._started = time.monotonic()
        self._persons_by_shard: dict[str, int] = {}  # markers already read: each is read once, not every poll

    def __enter__(self) -> "ProgressReporter":
        if self._interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def poll(self) -> None:
        """Reads the markers written since the last poll and logs the progress line (the thread's one step)."""
        try:
            self._read_new_markers(self._persons_by_shard)
        except Exception as exc:  # progress is best effort; the run itself reports real failures
            logger.debug("progress poll failed: %s", exc)
            return
        persons = sum(self._persons_by_shard.values())
        rate = persons / max(time.monotonic() - self._started, 1e-9)
        logger.info(
            "progress: %d/%d shards done, %d persons, %.1f persons/s",
            len(self._persons_by_shard), len(self._pending), persons, rate,
        )  # fmt: skip

    def _read_new_markers(self, persons_by_shard: dict[str, int]) -> None:
        """Reads only the markers of pending shards not seen yet (this run's: never from the index)."""
        listed = listed_markers(self._storage, self._output)
        new = [uri for shard, uri in listed.items() if shard in self._pending and shard not in persons_by_shard]
        for shard, marker in fetch_markers(self._storage, new).items():
            persons_by_shard[shard] = marker["counts"]["persons_in"]
