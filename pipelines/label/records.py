"""The typed records of ``dpmesh-label``'s per-shard step that planning, writing and refiltering share.

Torch-free, so ``dpmesh-refilter`` and the driver's planning load no model code.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ShardTask:
    """One shard to label: the unit of work, of commit and of resume.

    Attributes:
        uri: The shard tar.
        name: ``shard-NNNNNN``.
        identity: What the shard is: ``{"tar_bytes": int, "tar_sha1": str | None}`` from the shard set's manifest
            (``tar_sha1`` None when labeled without one). The marker records it, so a changed shard is relabeled.
    """

    uri: str
    name: str
    identity: dict[str, Any]


@dataclass
class ShardReport:
    """The per-shard counts the reader keeps (``images_in = images_ok + images_errored``) and what it read."""

    counts: Counter[str] = field(
        default_factory=lambda: Counter({"images_in": 0, "images_ok": 0, "images_errored": 0, "persons_in": 0})
    )
    tar_bytes: int = 0
    tar_sha1: str = ""
    detector_models: dict[str, str] = field(default_factory=dict)
