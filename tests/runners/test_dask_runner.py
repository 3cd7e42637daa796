"""Both jobs on Beam's DaskRunner (dask.distributed), compared byte for byte with DirectRunner runs.

``dask_cluster`` (tests/services.py) is a real ``dask scheduler`` with two ``dask worker`` processes;
one test lets the DaskRunner start its own LocalCluster instead. What Beam's DaskRunner does and does not do, and
why the shard graph is shaped the way it is, is in README "Dask".
"""

import re
import shutil
from pathlib import Path

import distributed
import pytest

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.shard.job import run as shard
from tests.fakes.corpus import Corpus
from tests.fakes.digests import label_digests, shard_set_digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.services import DaskCluster


MAX_SAMPLES = 8  # the shared corpus in 4 shards


def _shard_config(corpus: Corpus, output: Path, *runner: str) -> ShardJobConfig:
    overrides = [f"input.images={corpus.images}", f"input.annotations={corpus.annotations}", f"output={output}"]
    return compose_config(
        "dpmesh_shard", [*overrides, f"shard.max_samples={MAX_SAMPLES}", "log_level=WARNING", *runner], ShardJobConfig
    )


@pytest.fixture(scope="module")
def direct_shards(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The DirectRunner run every Dask run is compared with."""
    output = tmp_path_factory.mktemp("direct") / "shards"
    return output, shard(_shard_config(corpus, output))


def _tasks_run_by_workers(address: str) -> int:
    """How many tasks the cluster's workers have executed so far."""
    with distributed.Client(address, timeout=30) as client:
        counts = client.run(lambda dask_worker: dask_worker.state.executed_count)
    return sum(counts.values())


def test_shard_on_a_dask_cluster_gives_the_direct_runners_bytes(
    dask_cluster: DaskCluster, corpus: Corpus, direct_shards: tuple[Path, dict], tmp_path: Path
) -> None:
    reference, expected = direct_shards
    assert expected["counts"]["files_in"] == corpus.n_files
    assert expected["counts"]["errors_by_reason"]
    assert expected["counts"]["duplicate_groups"] == 1
    assert expected["counts"]["shards"] > 1
    before = _tasks_run_by_workers(dask_cluster.address)
    output = tmp_path / "shards"
    manifest = shard(_shard_config(corpus, output, "runner=dask", f"runner.address={dask_cluster.address}"))
    assert manifest["counts"] == expected["counts"]
    assert shard_set_digests(output) == shard_set_digests(reference)
    assert _tasks_run_by_workers(dask_cluster.address) > before  # the work ran on the cluster's workers
    # The job connected as a client named after its unique job name (distributed names it Client-<name>-<uuid>).
    log = dask_cluster.scheduler_log.read_text()
    assert re.search(r"Receive client connection: Client-dpmesh-shard-\d{8}-\d{6}-[0-9a-f]{6}-", log)


# Its dashboard moves to a free port when 8787 is taken (by another LocalCluster on this machine): not our concern.
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_shard_on_the_runners_own_local_cluster_gives_the_same_bytes(
    corpus: Corpus, direct_shards: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DPMESH_DASK_ADDRESS", raising=False)  # runner.address would default to it
    output = tmp_path / "shards"
    cfg = _shard_config(corpus, output, "runner=dask")
    assert cfg.runner.address is None  # so the DaskRunner starts a LocalCluster for the run
    shard(cfg)
    assert shard_set_digests(output) == shard_set_digests(direct_shards[0])


# --- dpmesh-label on the same cluster -------------------------------------------------------------------------------


def _label_config(shards: Path, output: Path, *runner: str) -> LabelJobConfig:
    overrides = [f"input.shards={shards}", f"output={output}", "log_level=WARNING", "progress_interval_s=0"]
    return compose_config("dpmesh_label", [*overrides, *runner], LabelJobConfig)


def test_label_on_a_dask_cluster_gives_the_direct_runners_bytes(
    dask_cluster: DaskCluster, direct_shards: tuple[Path, dict], tmp_path: Path
) -> None:
    shards, manifest = direct_shards
    n_shards = len(manifest["shards"])
    direct_cfg = _label_config(shards, tmp_path / "direct")
    expected = label(direct_cfg, handler=FakeDPMeshHandler(direct_cfg.model))  # the pipeline is under test
    assert expected["reconciled"]
    assert expected["counts"]["persons_in"] > 0
    # One dask partition per shard: the DaskRunner ignores Reshuffle, so this is what spreads shards over workers.
    dask_run = ("runner=dask", f"runner.address={dask_cluster.address}", f"runner.partitions={n_shards}")
    dask_cfg = _label_config(shards, tmp_path / "dask", *dask_run)
    summary = label(dask_cfg, handler=FakeDPMeshHandler(dask_cfg.model))
    assert summary["reconciled"]
    assert summary["counts"] == expected["counts"]
    assert summary["shards"]["done"] == summary["shards"]["total"] == n_shards
    ours = label_digests(tmp_path / "dask")
    assert {name.split("/")[0] for name in ours} >= {"annotations", "rejected"}
    assert ours == label_digests(tmp_path / "direct")


def test_an_append_on_a_dask_cluster_gives_the_direct_runners_bytes(
    dask_cluster: DaskCluster, corpus: Corpus, tmp_path: Path
) -> None:
    """mode=append (the listing in column batches, the comparison by key partition, the near-duplicate search of the
    new samples and of the kept groups) on the cluster's worker processes, against the same append run direct."""
    images = tmp_path / "images"
    shutil.copytree(corpus.images, images)
    files = sorted(p for p in images.rglob("*.jpg") if p.is_file() and "broken" not in p.parts)  # good images
    later = {p: p.read_bytes() for p in files[::4]}  # new in generation 1
    for path in later:
        path.unlink()
    base = [f"input.images={images}", f"shard.max_samples={MAX_SAMPLES}", "log_level=WARNING"]
    direct, on_dask = tmp_path / "direct", tmp_path / "dask"
    first = shard(compose_config("dpmesh_shard", [*base, f"output={direct}"], ShardJobConfig))
    shutil.copytree(direct, on_dask)
    for path, data in later.items():
        path.write_bytes(data)
    sharded = [p for p in files if p not in later and p.stat().st_size not in {len(d) for d in later.values()}]
    sharded[0].unlink()  # removed
    sharded[1].write_bytes(next(iter(later.values())))  # changed: another image's bytes (another size)
    append = [*base, "mode=append", "input.record_removals=true"]
    expected = shard(compose_config("dpmesh_shard", [*append, f"output={direct}"], ShardJobConfig))
    dask_run = ("runner=dask", f"runner.address={dask_cluster.address}")
    manifest = shard(compose_config("dpmesh_shard", [*append, f"output={on_dask}", *dask_run], ShardJobConfig))
    assert manifest["counts"] == expected["counts"]
    # New: the files added, and the files generation 0 reported (listed and reported again).
    assert expected["counts"]["new"] == len(later) + first["counts"]["files_errored"]
    assert expected["counts"]["changed"] == 1
    assert expected["generations"][-1]["retired"] == {"superseded": 1, "removed": 1}
    assert expected["near_duplicates"]["groups"] >= 1, "the changed file now copies a new one: they group"
    patterns = ("*.tar", "*.parquet", "_generations/*/*.parquet")
    assert shard_set_digests(on_dask, *patterns) == shard_set_digests(direct, *patterns)
