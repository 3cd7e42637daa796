"""What ``mode=append`` learns of the shard set at launch: the generation it writes, where its numbering starts,
which shards hold live samples, and the manifest's generation entries.

Read once, on the driver, from the set's ``_manifest.json`` and its generations' retired files: per held shard only
its name and the keys retired from it travel to the workers, which read the shards' index files themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipelines.common.shard_set import (
    MANIFEST_NAME,
    NEAR_DUPLICATES_NAME,
    manifest_generations,
    retired_keys_by_shard,
)
from pipelines.config import ConfigError, ShardJobConfig, config_to_dict
from pipelines.shard.perceptual_hash import HASH_NAME
from pipelines.storage import ObjectNotFoundError, Storage, join


@dataclass(frozen=True)
class HeldShard:
    """A shard of an earlier generation with live samples: its name and the keys later generations retired."""

    shard: str
    retired: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SetState:
    """The shard set a run starts from.

    Attributes:
        generation: The generation this run writes (0: a new set).
        first_shard: Its first shard number (after every shard number the set has used).
        previous: The set's manifest before this run (None for a new set).
        held: The earlier generations' shards with samples, with what was retired from each.
        live_before: Live samples of the set before this run.
        regroup: The set's near-duplicate groups cannot be built on (another threshold, or its groups file is
            gone): the append searches every sample again.
    """

    generation: int = 0
    first_shard: int = 0
    previous: dict[str, Any] | None = None
    held: tuple[HeldShard, ...] = field(default=())
    live_before: int = 0
    regroup: bool = False

    @property
    def appending(self) -> bool:
        return self.previous is not None


def read_set_state(storage: Storage, cfg: ShardJobConfig) -> SetState:
    """The state of the finished set at ``cfg.output`` that ``mode=append`` grows.

    Raises:
        ConfigError: no finished set there, or one made with other shard settings.
    """
    try:
        manifest = json.loads(storage.read_bytes(join(cfg.output, MANIFEST_NAME)))
    except ObjectNotFoundError:
        raise ConfigError(
            f"mode=append grows a finished shard set, and output={cfg.output!r} holds none ({MANIFEST_NAME} is "
            "missing); shard it first without mode=append"
        ) from None
    recorded = (manifest.get("config") or {}).get("shard") or {}
    ours = config_to_dict(cfg)["shard"]
    differs = sorted(k for k in ours if k in recorded and recorded[k] != ours[k])
    if differs:
        name = differs[0]
        raise ConfigError(
            f"shard.{name}={ours[name]!r} differs from the set's {recorded[name]!r} (recorded in {MANIFEST_NAME}): "
            "an appended generation is sharded like the set; pass the set's shard settings"
        )
    near = manifest.get("near_duplicates") or {}
    if near.get("hash") != HASH_NAME:
        raise ConfigError(
            f"the set at output={cfg.output!r} was sharded with perceptual hash {near.get('hash') or 'none'}, this "
            f"version computes {HASH_NAME}: their near-duplicates cannot be compared; shard the corpus again into a "
            "new output (without mode=append)"
        )
    # Groups made at the same threshold are built on (README "Growing a corpus"); at another, every sample is searched.
    regroup = near.get("threshold") != cfg.near_duplicates.threshold or (
        bool(near.get("samples")) and not storage.exists(join(cfg.output, NEAR_DUPLICATES_NAME))
    )
    generations = manifest_generations(manifest)
    retired = retired_keys_by_shard(storage, cfg.output, manifest)
    numbers = [int(s["shard"].rsplit("-", 1)[-1]) for s in manifest.get("shards", [])]
    first = max([g.get("end_shard", 0) for g in generations] + [n + 1 for n in numbers] + [0])
    held = tuple(HeldShard(s["shard"], retired.get(s["shard"], frozenset())) for s in manifest.get("shards", []))
    live = (manifest.get("live") or {}).get("samples", manifest.get("counts", {}).get("images_sharded", 0))
    return SetState(
        generation=len(generations),
        first_shard=first,
        previous=manifest,
        held=held,
        live_before=int(live),
        regroup=regroup,
    )
