"""The inputs most job tests start from, made by the real jobs: annotated images sharded by ``dpmesh-shard``, then
labeled by ``dpmesh-label`` (the tiny model, or a handler such as the numpy stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.shard.job import run as shard
from tests.fakes.corpus import SyntheticImage, write_annotated


def shard_annotated(root: Path, images: list[SyntheticImage], *overrides: str) -> Path:
    """Writes ``images`` to ``root/images`` with their COCO file ``root/coco.json``, shards them into
    ``root/shards`` (``overrides``: more ``dpmesh-shard`` keys) and returns that folder."""
    corpus = write_annotated(str(root), images)
    shards = root / "shards"
    keys = [f"input.images={corpus.images}", f"input.annotations={corpus.annotations}", f"output={shards}"]
    shard(compose_config("dpmesh_shard", [*keys, "log_level=WARNING", *overrides], ShardJobConfig))
    return shards


def label_shards(shards: Path, output: Path, *overrides: str, handler: Any = None) -> dict[str, Any]:
    """``dpmesh-label`` of ``shards`` into ``output``; ``handler`` (a factory taking the model config, e.g.
    ``FakeDPMeshHandler``) replaces the model; returns the run's summary."""
    keys = [f"input.shards={shards}", f"output={output}", "log_level=WARNING", "progress_interval_s=0", *overrides]
    cfg = compose_config("dpmesh_label", keys, LabelJobConfig)
    return label(cfg, handler=handler(cfg.model) if handler is not None else None)
