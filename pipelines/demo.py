"""``make demo``: shard the bundled sample corpus with the embedded defaults and show what came out.

Runs on the local runner with local storage into ``./demo_output``; rerunning overwrites it.
"""

import logging
import os
import sys
from pathlib import Path

from pipelines.config import ShardJobConfig, compose_config
from pipelines.shard_images import configure_logging, format_summary, run


SAMPLE_CORPUS = Path(__file__).parent / "sample_corpus"
DEMO_OUTPUT = Path(os.environ.get("DPMESH_DEMO_OUTPUT", "demo_output")).resolve()


def shard_sample_corpus() -> dict:
    """Shards the sample corpus into ``demo_output/shards`` and returns the manifest."""
    cfg = compose_config(
        "dpmesh_shard",
        [
            f"input.images={SAMPLE_CORPUS / 'images'}",
            f"input.annotations={SAMPLE_CORPUS / 'person_keypoints.json'}",
            f"output={DEMO_OUTPUT / 'shards'}",
            "shard.max_samples=4",
            "overwrite=true",
            "log_level=WARNING",
        ],
        ShardJobConfig,
    )
    return run(cfg)


def main() -> None:
    configure_logging("WARNING")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    print(f"Sharding the sample corpus {SAMPLE_CORPUS} ...", flush=True)
    manifest = shard_sample_corpus()
    shards = DEMO_OUTPUT / "shards"
    print(format_summary(manifest, str(shards)))
    first = manifest["shards"][0]["shard"]
    print(
        "\nWhat the shards hold:\n"
        f"  tar -tf {shards / first}.tar | head\n"
        f'  python -c "import pyarrow.parquet as pq; '
        f"print(pq.read_table('{shards / first}.parquet').to_pylist()[:2])\"\n"
        f"  python -c \"import webdataset as wds; print(next(iter(wds.WebDataset('{shards / first}.tar', "
        "shardshuffle=False).decode('pil')))['json'])\"\n"
        f"  the manifest: {shards / '_manifest.json'}, reported inputs: {shards / '_errors.parquet'}"
    )
    if not manifest["counts"]["reconciled"]:
        sys.exit("counts did not reconcile: see the manifest")


if __name__ == "__main__":
    main()
