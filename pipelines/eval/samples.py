"""A bounded, mergeable uniform sample of a stream (`BottomK`), and the stable hash that draws it.

Each item carries a 64-bit hash of its identity (`stable_hash64` of the person's ``sample_id``); the sample is the
``capacity`` items with the smallest hashes (ties broken by the item's ``order``). Whatever the order items arrive
in and however partial samples are merged, the result is the same set: the bottom-k of the whole stream, which is a
uniform random sample without replacement (the hash is a fixed pseudo-random function of the identity). While the
stream holds at most ``capacity`` items the sample is the whole stream (``exact``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipelines.common.label_stats import row_priority


def stable_hash64(text: str) -> int:
    """A 64-bit hash of ``text``, identical on every machine and run (never Python's salted ``hash()``): the one
    the label statistics' gallery sample draws with (`pipelines.common.label_stats.row_priority`)."""
    return row_priority(text)


def hashes_of(texts: Iterable[object]) -> np.ndarray:
    """`(N,)` uint64 `stable_hash64` of ``str(t)`` for each of ``texts``."""
    return np.fromiter((stable_hash64(str(t)) for t in texts), dtype=np.uint64)


class BottomK:
    """At most ``capacity`` items of a stream: those with the smallest ``(hash, order)``.

    Offered items are buffered and cut back to ``capacity`` once the buffer holds as many again (so a stream offered
    in many small batches is sorted a few times, not once per batch): memory is at most twice the capacity.

    Attributes:
        capacity: the bound. seen: items offered so far (the stream's size).
        hashes: `(k,)` uint64, sorted with ``order`` as the tie-break. order: `(k,)` int64.
        columns: name -> `(k, ...)` array of the items' values, aligned with ``hashes``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        self._buffered = 0
        self._sorted = True  # _parts is one sorted, cut-back part (or none)

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    @property
    def exact(self) -> bool:
        """True while the sample holds every item offered."""
        return self.seen <= self.capacity

    @property
    def hashes(self) -> np.ndarray:
        return self._compacted()[0]

    @property
    def order(self) -> np.ndarray:
        return self._compacted()[1]

    @property
    def columns(self) -> dict[str, np.ndarray]:
        return self._compacted()[2]

    def add(self, hashes: np.ndarray, order: np.ndarray, **columns: np.ndarray) -> None:
        """Offers items (``hashes`` `(n,)`, ``order`` `(n,)`, each column `(n, ...)`)."""
        n = len(hashes)
        self.seen += n
        if n == 0:
            return
        self._parts.append((np.asarray(hashes, np.uint64), np.asarray(order, np.int64), dict(columns)))
        self._buffered += n
        self._sorted = False
        if self._buffered > 2 * self.capacity:
            self._compacted()

    def merge(self, other: BottomK) -> BottomK:
        """A new sample of both streams (the smaller capacity bounds it); neither is changed."""
        out = BottomK(min(self.capacity, other.capacity))
        out.seen = self.seen + other.seen
        out._parts = [p for part in (self, other) if len(part._compacted()[0]) for p in part._parts]
        out._buffered = sum(len(p[0]) for p in out._parts)
        out._sorted = False
        out._compacted()
        return out

    def _compacted(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The sample, its buffer cut back to the ``capacity`` smallest ``(hash, order)``, sorted."""
        if len(self._parts) == 1 and self._sorted:
            return self._parts[0]
        if not self._parts:
            return np.empty(0, np.uint64), np.empty(0, np.int64), {}
        hashes = np.concatenate([p[0] for p in self._parts])
        order = np.concatenate([p[1] for p in self._parts])
        keep = np.lexsort((order, hashes))[: self.capacity]
        names = self._parts[0][2].keys()
        columns = {k: np.concatenate([p[2][k] for p in self._parts])[keep] for k in names}
        self._parts = [(hashes[keep], order[keep], columns)]
        self._buffered = len(keep)
        self._sorted = True
        return self._parts[0]

    def in_order(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(order, columns)`` sorted by ``order``: the items as the stream listed them."""
        _, order, columns = self._compacted()
        by_order = np.argsort(order, kind="stable")
        return order[by_order], {k: v[by_order] for k, v in columns.items()}
