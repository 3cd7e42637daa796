"""A bounded, mergeable uniform sample of a stream (`BottomK`), and the stable hash that draws it.

Each item carries a 64-bit hash of its identity (`stable_hash64` of the person's ``sample_id``); the sample is the
``capacity`` items with the smallest hashes (ties broken by the item's ``order``). Whatever the order items arrive
in and however partial samples are merged, the result is the same set: the bottom-k of the whole stream, which is a
uniform random sample without replacement (the hash is a fixed pseudo-random function of the identity). While the
stream holds at most ``capacity`` items the sample is the whole stream (``exact``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipelines.common.label_stats import row_priority


def stable_hash64(text: str) -> int:
    """A 64-bit hash of ``text``, identical on every machine and run (never Python's salted ``hash()``): the one
    the label statistics' gallery sample draws with (`pipelines.common.label_stats.row_priority`)."""
    return row_priority(text)


def hashes_of(texts: Iterable[object]) -> np.ndarray:
    """`(N,)` uint64 `stable_hash64` of ``str(t)`` for each of ``texts``."""
    return np.fromiter((stable_hash64(str(t)) for t in texts), dtype=np.uint64)


@dataclass
class BottomK:
    """At most ``capacity`` items of a stream: those with the smallest ``(hash, order)``.

    Attributes:
        capacity: the bound.
        hashes: `(k,)` uint64, sorted with ``order`` as the tie-break. order: `(k,)` int64.
        columns: name -> `(k, ...)` array of the items' values, aligned with ``hashes``.
        seen: items offered so far (the stream's size).
    """

    capacity: int
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    order: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    seen: int = 0

    @property
    def exact(self) -> bool:
        """True while the sample holds every item offered."""
        return self.seen <= self.capacity

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    def add(self, hashes: np.ndarray, order: np.ndarray, **columns: np.ndarray) -> None:
        """Offers items (``hashes`` `(n,)`, ``order`` `(n,)`, each column `(n, ...)`)."""
        self.seen += len(hashes)
        kept = self.columns
        self._keep(
            np.concatenate([self.hashes, np.asarray(hashes, np.uint64)]),
            np.concatenate([self.order, np.asarray(order, np.int64)]),
            {k: np.concatenate([kept[k], v]) if k in kept else np.asarray(v) for k, v in columns.items()},
        )

    def merge(self, other: BottomK) -> BottomK:
        """A new sample of both streams (the smaller capacity bounds it)."""
        out = BottomK(min(self.capacity, other.capacity), seen=self.seen + other.seen)
        names = set(self.columns) | set(other.columns)
        out._keep(
            np.concatenate([self.hashes, other.hashes]),
            np.concatenate([self.order, other.order]),
            {k: np.concatenate([part.columns[k] for part in (self, other) if k in part.columns]) for k in names},
        )
        return out

    def _keep(self, hashes: np.ndarray, order: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        keep = np.lexsort((order, hashes))[: self.capacity]
        self.hashes, self.order = hashes[keep], order[keep]
        self.columns = {k: v[keep] for k, v in columns.items()}

    def in_order(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(order, columns)`` sorted by ``order``: the items as the stream listed them."""
        by_order = np.argsort(self.order, kind="stable")
        return self.order[by_order], {k: v[by_order] for k, v in self.columns.items()}
