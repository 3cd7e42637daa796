"""dpmesh-label on a flaky object store: shards read from S3 and labels written to S3 through the fault proxy
(tests/fault_proxy.py) give the same Parquet bytes as a run without faults, with no ``read_failed`` row.

Shards are multi-MB tars streamed with ranged resumes, so truncated bodies and the one stall past the read timeout
land in the middle of a shard. A fault that persists must fail the run (the runner retries the work item), never
write a marker: the next run then labels that shard. The model is the numpy stand-in (tests/fakes/fake_dpmesh.py):
what is tested is the storage path around it.
"""

from pathlib import Path

import pytest

from pipelines.config import LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run
from pipelines.shard.job import run as shard
from pipelines.storage import Storage, StorageError, join
from tests.fakes.corpus import make_images, write_coco, write_corpus
from tests.fakes.digests import digests
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fault_proxy import FAULT_KINDS, FaultPlan, FaultProxy, proxied_storage_overrides, wait_for


FAULT_RATE = 0.25


def _label_config(proxy: FaultProxy, shards: str, output: str, *extra: str) -> LabelJobConfig:
    overrides = [f"input.shards={shards}", f"output={output}", "log_level=WARNING", "progress_interval_s=0"]
    return compose_config("dpmesh_label", [*overrides, *proxied_storage_overrides(proxy), *extra], LabelJobConfig)


@pytest.fixture
def s3_shards(fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path) -> str:
    """Annotated shards of about 0.8 MB each on S3 (PNG images, so a truncated body lands mid-shard)."""
    images = make_images(12, seed=8, width=640, height=480, persons=(1, 2), formats=("PNG",))
    write_corpus(str(tmp_path / "images"), images)
    write_coco(str(tmp_path / "coco.json"), images)
    overrides = [
        f"input.images={tmp_path / 'images'}",
        f"input.annotations={tmp_path / 'coco.json'}",
        f"output={s3_bucket}/shards",
        "shard.max_samples=2",
        "log_level=WARNING",
        *proxied_storage_overrides(fault_proxy),
    ]
    shard(compose_config("dpmesh_shard", overrides, ShardJobConfig))
    return f"{s3_bucket}/shards"


@pytest.mark.s3
def test_labels_through_a_flaky_store_are_byte_identical(
    fault_proxy: FaultProxy, s3_shards: str, s3_bucket: str
) -> None:
    clean_cfg = _label_config(fault_proxy, s3_shards, f"{s3_bucket}/clean")
    clean = run(clean_cfg, handler=FakeDPMeshHandler(clean_cfg.model))
    fault_proxy.set_plan(FaultPlan(rate=FAULT_RATE, seed=11, stall_s=3.0, max_stalls=1))
    faulty_cfg = _label_config(fault_proxy, s3_shards, f"{s3_bucket}/faulty")
    faulty = run(faulty_cfg, handler=FakeDPMeshHandler(faulty_cfg.model))
    assert wait_for(lambda: all(fault_proxy.injected[k] >= 1 for k in FAULT_KINDS)), fault_proxy.injected
    fault_proxy.with_rate(0.0)

    assert faulty["counts"] == clean["counts"]
    assert faulty["reconciled"]
    assert "read_failed" not in faulty["errors_by_reason"], "a transient fault became an error row"
    storage = Storage(clean_cfg.storage)
    clean_files = digests(f"{s3_bucket}/clean", "**.parquet", storage=storage)
    assert clean_files
    assert digests(f"{s3_bucket}/faulty", "**.parquet", storage=storage) == clean_files


@pytest.mark.slow  # ~16 s; the shard job's persisting-fault test covers the rule in the default run
@pytest.mark.s3
def test_a_persisting_fault_fails_the_run_and_writes_no_marker(
    fault_proxy: FaultProxy, s3_shards: str, s3_bucket: str
) -> None:
    output = f"{s3_bucket}/down"
    storage = Storage(_label_config(fault_proxy, s3_shards, output).storage)
    # Planning reads the manifest and lists markers; then every shard GET fails for good.
    fault_proxy.set_plan(FaultPlan(rate=1.0, kinds=("503",), methods=frozenset({"GET"}), path_suffixes=(".tar",)))
    failing = _label_config(fault_proxy, s3_shards, output, "storage.max_attempts=2")  # give up soon
    with pytest.raises(Exception, match="transient error persisted") as failure:
        run(failing, handler=FakeDPMeshHandler(failing.model))
    assert isinstance(failure.value, StorageError) or "TransientStorageError" in str(failure.value)
    fault_proxy.with_rate(0.0)
    assert list(storage.list(join(output, "_done"))) == [], "no shard may be marked done after a storage fault"
    resumed_cfg = _label_config(fault_proxy, s3_shards, output)
    resumed = run(resumed_cfg, handler=FakeDPMeshHandler(resumed_cfg.model))
    assert resumed["shards"]["labeled_this_run"] == resumed["shards"]["total"]
    assert resumed["reconciled"]
