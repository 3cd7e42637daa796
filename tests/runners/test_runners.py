"""Both jobs on Beam's portable runner with an EXTERNAL SDK worker pool (the shape of a cluster deployment:
job service + separate worker processes), reading and writing the real S3 server, compared with in-memory runs."""

import json
from pathlib import Path

import pytest

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.shard.job import run as shard
from pipelines.storage import Storage
from tests.fakes.corpus import make_images, write_coco
from tests.fakes.digests import digests


pytestmark = pytest.mark.s3


def _storage_overrides(endpoint: str) -> list[str]:
    return [
        "storage=s3",
        f"storage.s3_endpoint_url={endpoint}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
    ]


@pytest.mark.slow  # ~40 s: starts an SDK worker pool; portable LOOPBACK and multi-process stay in the default run
def test_shard_and_label_on_an_external_worker_pool_match_in_memory_runs(
    s3_bucket: str, s3_server, beam_job_endpoint: str, beam_worker_pool: str, tmp_path: Path
) -> None:
    s3 = _storage_overrides(s3_server.endpoint_url)
    external = [
        "runner=portable",
        f"runner.job_endpoint={beam_job_endpoint}",
        "runner.environment_type=EXTERNAL",
        f"runner.environment_config={beam_worker_pool}",
        "log_level=WARNING",
    ]
    storage = Storage(compose_config("dpmesh_shard", ["input.images=x", "output=y", *s3], ShardJobConfig).storage)
    images = make_images(6, seed=5, width=160, height=120, persons=(1, 2))
    for image in images:
        storage.write_bytes(f"{s3_bucket}/corpus/{image.file_name}", image.data)
    write_coco(str(tmp_path / "coco.json"), images)
    coco = f"{s3_bucket}/coco.json"
    storage.write_bytes(coco, (tmp_path / "coco.json").read_bytes())

    def shard_cfg(output: str, *runner: str) -> ShardJobConfig:
        inputs = [f"input.images={s3_bucket}/corpus", f"input.annotations={coco}", "shard.max_samples=4"]
        return compose_config("dpmesh_shard", [*inputs, f"output={s3_bucket}/{output}", *s3, *runner], ShardJobConfig)

    reference = shard(shard_cfg("shards_ref", "log_level=WARNING"))
    manifest = shard(shard_cfg("shards", *external))
    assert manifest["counts"]["reconciled"]
    assert manifest["counts"]["images_sharded"] == len(images)
    names = ("shard-*", "**/shard-*")
    assert digests(f"{s3_bucket}/shards", *names, storage=storage) == digests(
        f"{s3_bucket}/shards_ref", *names, storage=storage
    )
    assert [s["shard"] for s in manifest["shards"]] == [s["shard"] for s in reference["shards"]]

    def label_cfg(output: str, *runner: str) -> LabelJobConfig:
        overrides = [f"input.shards={s3_bucket}/shards", f"output={s3_bucket}/{output}", "progress_interval_s=0"]
        return compose_config("dpmesh_label", [*overrides, *s3, *runner], LabelJobConfig)

    label(label_cfg("labels_ref", "log_level=WARNING"))
    summary = label(label_cfg("labels", *external))
    assert summary["reconciled"]
    assert summary["shards"]["done"] == summary["shards"]["total"] == len(manifest["shards"])
    for folder in ("annotations", "rejected", "errors"):
        ours = digests(f"{s3_bucket}/labels/{folder}", *names, storage=storage)
        assert ours
        assert ours == digests(f"{s3_bucket}/labels_ref/{folder}", *names, storage=storage)
    assert json.loads(storage.read_bytes(f"{s3_bucket}/labels/_summary.json"))["reconciled"]
