"""dpmesh-shard on a flaky object store: input images read from S3 and shards written to S3 through the fault proxy
(tests/fault_proxy.py) give the same bytes as a run without faults, and every fault kind really happened.

Transient faults must never become error rows (``read_failed``) or a crash: retries and resumed reads absorb them.
The manifest is compared without ``config.output`` (the two runs write to different prefixes); it holds no
timestamps, and every other object must be byte-identical.
"""

import json
from pathlib import Path

import pytest

from pipelines.config import ShardJobConfig, compose_config
from pipelines.shard.job import run
from pipelines.storage import Storage, join
from tests.fakes.corpus import broken_files, make_images, write_corpus
from tests.fault_proxy import FAULT_KINDS, FaultPlan, FaultProxy, proxied_storage_overrides, wait_for


N_IMAGES = 16
FAULT_RATE = 0.2


def _config(proxy: FaultProxy, *overrides: str) -> ShardJobConfig:
    """Storage through the proxy: 2 s timeouts (one stall of 3 s), 6 attempts, fast backoff, no rate limiting."""
    storage = proxied_storage_overrides(proxy)
    return compose_config(
        "dpmesh_shard", ["shard.max_samples=4", "log_level=WARNING", *storage, *overrides], ShardJobConfig
    )


def _outputs(storage: Storage, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` by relative name; the manifest without the output path it records."""
    objects = {o.uri[len(prefix) + 1 :]: storage.read_bytes(o.uri) for o in storage.list(prefix)}
    manifest = json.loads(objects["_manifest.json"])
    manifest["config"].pop("output")
    objects["_manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return objects


@pytest.mark.s3
def test_shards_through_a_flaky_store_are_byte_identical(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    images = make_images(N_IMAGES, seed=3, width=320, height=240, formats=("JPEG", "PNG"))
    write_corpus(str(tmp_path / "corpus"), images, extra=broken_files(images[0].data))
    clean_cfg = _config(fault_proxy, f"input.images={s3_bucket}/corpus", f"output={s3_bucket}/clean")
    storage = Storage(clean_cfg.storage)
    for path in sorted((tmp_path / "corpus").rglob("*")):
        if path.is_file():
            storage.write_bytes(
                join(s3_bucket, "corpus", str(path.relative_to(tmp_path / "corpus"))), path.read_bytes()
            )

    clean = run(clean_cfg)
    fault_proxy.set_plan(FaultPlan(rate=FAULT_RATE, seed=7, stall_s=3.0, max_stalls=1))
    faulty = run(_config(fault_proxy, f"input.images={s3_bucket}/corpus", f"output={s3_bucket}/faulty"))
    assert wait_for(lambda: all(fault_proxy.injected[k] >= 1 for k in FAULT_KINDS)), fault_proxy.injected
    fault_proxy.with_rate(0.0)

    assert faulty["counts"] == clean["counts"]
    assert clean["counts"]["reconciled"]
    assert "read_failed" not in faulty["counts"]["errors_by_reason"], "a transient fault became an error row"
    clean_objects, faulty_objects = _outputs(storage, f"{s3_bucket}/clean"), _outputs(storage, f"{s3_bucket}/faulty")
    assert sorted(faulty_objects) == sorted(clean_objects)
    assert [name for name in clean_objects if faulty_objects[name] != clean_objects[name]] == []
    assert any(name.endswith(".tar") for name in clean_objects)


@pytest.mark.s3
def test_a_persisting_fault_fails_the_run_instead_of_becoming_read_failed_rows(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    images = make_images(4, seed=4, width=160, height=120)
    write_corpus(str(tmp_path / "corpus"), images)
    cfg = _config(fault_proxy, f"input.images={s3_bucket}/corpus", f"output={s3_bucket}/out", "storage.max_attempts=2")
    storage = Storage(cfg.storage)
    for path in sorted((tmp_path / "corpus").rglob("*.jpg")):
        storage.write_bytes(join(s3_bucket, "corpus", path.name), path.read_bytes())
    # Listing works; every image GET fails for good.
    fault_proxy.set_plan(FaultPlan(rate=1.0, kinds=("503",), methods=frozenset({"GET"}), path_suffixes=(".jpg",)))
    with pytest.raises(Exception, match="transient error persisted"):
        run(cfg)
    fault_proxy.with_rate(0.0)
    assert not storage.exists(join(s3_bucket, "out", "_manifest.json")), "a failed run must not look complete"
