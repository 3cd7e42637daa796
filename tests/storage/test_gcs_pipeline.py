"""dpmesh-shard and dpmesh-label on ``gs://`` against the GCS emulator (tests/gcs_server.py).

Each job runs twice on the same ``gs://`` input: once writing to ``gs://``, once writing to a local folder. The
outputs must be the same bytes, so whatever the GCS backend does on the way (resumable uploads, ranged streamed
reads, listings) changes nothing. The emulator is reached through ``storage.gcs_endpoint_url`` alone, which is also
how the Beam workers of the multi-processing run find it.
"""

import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.config.storage import StorageConfig
from pipelines.label.job import run as label
from pipelines.shard.job import run as shard
from pipelines.storage import Storage
from tests.fakes.corpus import Corpus
from tests.fakes.digests import digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.gcs_server import GcsServerInfo, delete_bucket, gcs_client


pytestmark = pytest.mark.gcs


MAX_SAMPLES = 8  # the shared corpus in 4 shards


def _gcs(server: GcsServerInfo) -> list[str]:
    """Overrides that send ``gs://`` to the emulator; nothing in the environment is needed, not even a project."""
    return ["storage=gcs", f"storage.gcs_endpoint_url={server.endpoint_url}"]


def _names(storage: Storage, root: str) -> list[str]:
    """Every object below ``root``, by path relative to it."""
    return [o.uri[len(root.rstrip("/")) + 1 :] for o in storage.list(root)]


@pytest.fixture(scope="module")
def bucket(gcs_server: GcsServerInfo) -> Iterator[str]:
    """One bucket for the module: the label test reads the shards the shard test wrote."""
    name = f"pipe-{uuid.uuid4().hex[:12]}"
    gcs_client(gcs_server).create_bucket(name)
    yield f"gs://{name}"
    delete_bucket(gcs_server, name)


@pytest.fixture(scope="module")
def gcs_corpus(corpus: Corpus, gcs_server: GcsServerInfo, bucket: str) -> dict[str, str]:
    """The shared corpus (images of three formats, broken files, a duplicate), uploaded to ``gs://<bucket>``."""
    storage = Storage(StorageConfig(gcs_endpoint_url=gcs_server.endpoint_url))
    for path in sorted(p for p in Path(corpus.images).rglob("*") if p.is_file()):
        storage.upload_file(str(path), f"{bucket}/corpus/{path.relative_to(corpus.images)}")
    storage.upload_file(corpus.annotations, f"{bucket}/coco.json")
    return {"images": f"{bucket}/corpus", "annotations": f"{bucket}/coco.json"}


@pytest.fixture(scope="module")
def gcs_shards(gcs_corpus: dict[str, str], gcs_server: GcsServerInfo, bucket: str) -> tuple[str, dict[str, Any]]:
    """dpmesh-shard from ``gs://`` to ``gs://``, on two multi-processing workers that know only the config."""
    output = f"{bucket}/shards"
    manifest = shard(
        compose_config(
            "dpmesh_shard",
            [
                f"input.images={gcs_corpus['images']}",
                f"input.annotations={gcs_corpus['annotations']}",
                f"output={output}",
                f"shard.max_samples={MAX_SAMPLES}",
                "log_level=WARNING",
                "runner.running_mode=multi_processing",
                "runner.num_workers=2",
                *_gcs(gcs_server),
            ],
            ShardJobConfig,
        )
    )
    return output, manifest


def test_shard_gcs_to_gcs_equals_gcs_to_local(
    gcs_shards: tuple[str, dict[str, Any]],
    gcs_corpus: dict[str, str],
    corpus: Corpus,
    gcs_server: GcsServerInfo,
    tmp_path: Path,
) -> None:
    output, manifest = gcs_shards
    assert manifest["counts"]["reconciled"]
    assert manifest["counts"]["images_sharded"] == corpus.n_images + corpus.n_duplicates
    assert sum(manifest["counts"]["errors_by_reason"].values()) == corpus.n_broken
    local = str(tmp_path / "shards")
    cfg = compose_config(
        "dpmesh_shard",
        [
            f"input.images={gcs_corpus['images']}",
            f"input.annotations={gcs_corpus['annotations']}",
            f"output={local}",
            f"shard.max_samples={MAX_SAMPLES}",
            "log_level=WARNING",
            *_gcs(gcs_server),
        ],
        ShardJobConfig,
    )
    shard(cfg)
    storage = Storage(cfg.storage)
    remote = digests(output, "*.*", storage=storage)
    # a tar and an index per shard, and the set's own files
    assert len([name for name in remote if name.startswith("shard-")]) == 2 * len(manifest["shards"])
    assert {"_errors.parquet", "_manifest.json", "_intent.json"} <= set(remote)
    written = {name: digest for name, digest in remote.items() if name != "_manifest.json"}
    assert written == {k: v for k, v in digests(local, "*.*", storage=storage).items() if k != "_manifest.json"}
    manifests = [json.loads(storage.read_bytes(f"{root}/_manifest.json")) for root in (output, local)]
    for m in manifests:
        m["config"].pop("output")
    assert manifests[0] == manifests[1]
    first = manifest["shards"][0]
    with tarfile.open(fileobj=storage.open_read(f"{output}/{first['shard']}.tar"), mode="r|") as tar:
        assert len([m.name for m in tar]) == 2 * first["samples"]


def test_label_gcs_shards_to_gcs_equals_gcs_to_local(
    gcs_shards: tuple[str, dict[str, Any]], gcs_server: GcsServerInfo, bucket: str, tmp_path: Path
) -> None:
    shards, _ = gcs_shards
    common = [f"input.shards={shards}", "log_level=WARNING", "progress_interval_s=0", *_gcs(gcs_server)]
    remote = f"{bucket}/labels"
    remote_cfg = compose_config("dpmesh_label", [*common, f"output={remote}"], LabelJobConfig)
    summary = label(remote_cfg, handler=FakeDPMeshHandler(remote_cfg.model))  # the storage path is under test
    assert summary["reconciled"]
    assert summary["shards"]["done"] == summary["shards"]["total"] > 0
    assert summary["counts"]["persons_in"] > 0
    local = str(tmp_path / "labels")
    cfg = compose_config("dpmesh_label", [*common, f"output={local}"], LabelJobConfig)
    label(cfg, handler=FakeDPMeshHandler(cfg.model))
    storage = Storage(cfg.storage)
    parquet = digests(remote, "*/*.parquet", storage=storage)
    assert parquet, "labels, rejections and errors are written per shard"
    assert parquet == digests(local, "*/*.parquet", storage=storage)
    assert _names(storage, remote) == _names(storage, local), "the same markers, summary and progress files"
    assert json.loads(storage.read_bytes(f"{remote}/_summary.json"))["reconciled"]
