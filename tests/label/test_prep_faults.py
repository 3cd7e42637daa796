"""A preparation thread that raises mid-shard fails the shard's work item: the error reaches the caller, the shard
commits nothing (no marker, no rows), and the other shards are labeled as usual."""

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run
from pipelines.label.read import ShardReader
from pipelines.shard.job import run as shard
from tests.fakes.corpus import make_images, write_coco, write_corpus
from tests.fakes.fake_dpmesh import FakeDPMeshHandler


class PrepFaultError(RuntimeError):
    pass


def test_a_preparation_thread_that_raises_fails_the_shard_instead_of_being_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(6, seed=5, width=320, height=240, persons=(1, 2))
    write_corpus(str(tmp_path / "images"), images)
    write_coco(str(tmp_path / "coco.json"), images)
    shards = tmp_path / "shards"
    manifest = shard(
        compose_config(
            "dpmesh_shard",
            [f"input.images={tmp_path / 'images'}", f"input.annotations={tmp_path / 'coco.json'}",
             f"output={shards}", "shard.max_samples=3", "log_level=WARNING"],
            ShardJobConfig,
        )
    )  # fmt: skip
    name = manifest["shards"][0]["shard"]
    with tarfile.open(shards / f"{name}.tar") as tar:
        keys = list(dict.fromkeys(m.name.partition(".")[0] for m in tar.getmembers()))
    victim = keys[1]  # mid-shard: one sample before it, one after

    prepare = ShardReader._prepare

    def failing(self: ShardReader, task: Any, sample: Any, *args: Any) -> Any:
        if sample.key == victim:
            raise PrepFaultError(f"preparation failed on {sample.key}")
        return prepare(self, task, sample, *args)

    monkeypatch.setattr(ShardReader, "_prepare", failing)
    output = tmp_path / "labels"
    cfg = compose_config(
        "dpmesh_label",
        [f"input.shards={shards}", f"output={output}", "overwrite=true", "log_level=WARNING",
         "input.crop_mode=fast", "input.prep_threads=2", "progress_interval_s=0"],
        LabelJobConfig,
    )  # fmt: skip
    with pytest.raises(Exception, match=f"preparation failed on {victim}"):
        run(cfg, handler=FakeDPMeshHandler(cfg.model))
    # Nothing of the failed shard is committed: no marker, no rows.
    assert not (output / "_done" / f"{name}.json").exists()
    assert not list(output.glob(f"*/{name}.parquet"))
    for marker in (output / "_done").glob("shard-*.json"):  # a shard labeled before the failure is whole
        counts = json.loads(marker.read_text())["counts"]
        assert counts["persons_in"] > 0
