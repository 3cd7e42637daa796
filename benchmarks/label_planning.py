"""Driver-side planning of ``dpmesh-label`` at scale: listing shards and reading their markers on a real S3 server.

Starts SeaweedFS (``weed mini``, as the tests do), writes a shard set of ``--shards`` placeholder tars with its
``_manifest.json`` and a label output holding a ``_done`` marker for every shard (the resume case: every marker must
be read), then in one run times:
  sequential - the markers read one GET at a time (what planning did before: the limit to beat),
  plan_cold  - ``pipelines.label.plan.plan_shards`` with no marker index (markers read by a thread pool),
  plan       - ``plan_shards`` with the index a finished run leaves (listing + manifest + one index GET),
and prints seconds and the speed-up. The last line is machine-readable:
``shards=<n> plan_s=<a> plan_cold_s=<c> sequential_s=<b> speedup=<b/a>``.

Usage: python benchmarks/label_planning.py [--shards 20000]
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.common.label_set import fetch_markers, listed_markers, write_index
from pipelines.config import LabelJobConfig, compose_config, config_hash
from pipelines.label.job import run_info
from pipelines.label.plan import plan_shards
from pipelines.storage import Storage, join
from tests.s3_server import SeaweedS3Server, s3_client


BUCKET = "bench"


def populate(storage: Storage, shards: int, cfg: LabelJobConfig) -> None:
    """Placeholder tars, the manifest listing them, and a marker per shard carrying its identity and (empty) counts,
    as every marker does."""
    entries = [{"shard": f"shard-{i:06d}", "tar_bytes": 10, "tar_sha1": f"{i:040x}"} for i in range(shards)]
    info = run_info(cfg)

    def write(entry: dict) -> None:
        name = entry["shard"]
        storage.write_bytes(join(cfg.input.shards, f"{name}.tar"), b"0123456789")
        identity = {k: entry[k] for k in ("tar_bytes", "tar_sha1")}
        marker = {"shard": name, "shard_identity": identity, "counts": {"images_in": 0, "persons_in": 0}, **info}
        storage.write_bytes(join(cfg.output, "_done", f"{name}.json"), json.dumps(marker).encode())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(write, entries))
    storage.write_bytes(join(cfg.input.shards, "_manifest.json"), json.dumps({"shards": entries}).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, SeaweedS3Server(Path(tmp)) as server:
        info = server.info
        os.environ.update(AWS_ACCESS_KEY_ID=info.access_key, AWS_SECRET_ACCESS_KEY=info.secret_key)
        s3_client(info).create_bucket(Bucket=BUCKET)
        cfg = compose_config(
            "dpmesh_label",
            [
                f"input.shards=s3://{BUCKET}/shards",
                f"output=s3://{BUCKET}/labels",
                "storage=s3",
                f"storage.s3_endpoint_url={info.endpoint_url}",
                "storage.s3_region=us-east-1",
                "storage.s3_addressing_style=path",
                "log_level=WARNING",
            ],
            LabelJobConfig,
        )
        storage = Storage(cfg.storage)
        started = time.perf_counter()
        populate(storage, args.shards, cfg)
        print(f"wrote {2 * args.shards + 1} objects in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        markers = [storage.read_bytes(o.uri) for o in storage.list(join(cfg.output, "_done"))]
        sequential_s = time.perf_counter() - started
        assert len(markers) == args.shards

        started = time.perf_counter()
        cold = plan_shards(cfg, storage)
        cold_s = time.perf_counter() - started

        # What a finished run's summary step leaves: the marker index.
        write_index(storage, cfg.output, fetch_markers(storage, list(listed_markers(storage, cfg.output).values())))
        started = time.perf_counter()
        plan = plan_shards(cfg, storage)
        plan_s = time.perf_counter() - started
        for planned in (cold, plan):
            assert len(planned.shards) == args.shards
            assert not planned.pending, "every shard is done: none to relabel"
        assert config_hash(cfg) == json.loads(markers[0])["config_hash"]

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"sequential marker reads: {sequential_s:.2f} s ({args.shards / sequential_s:.0f} markers/s)")
    print(f"plan_shards without a marker index (list + manifest + parallel marker GETs): {cold_s:.2f} s")
    print(f"plan_shards with the marker index (list + manifest + index): {plan_s:.2f} s")
    print(
        f"shards={args.shards} plan_s={plan_s:.2f} plan_cold_s={cold_s:.2f} sequential_s={sequential_s:.2f} "
        f"speedup={sequential_s / plan_s:.2f}"
    )


if __name__ == "__main__":
    main()
