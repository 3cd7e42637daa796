"""``make demo``: shard the bundled sample corpus, label every person, show what came out, and write its report.

Runs with the embedded defaults (local runner, local storage) into ``./demo_output``; rerunning
overwrites it. The model is ``model=tiny`` (the DPMesh architecture at tiny widths, random weights)
unless real weights are configured: ``DPMESH_PRETRAINED=<dir from dpmesh-convert>`` (or
``DPMESH_CHECKPOINT=<official *_best_ckpt.pth.tar>``) switches to the real model, on the GPU if one
is visible, else on the CPU.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipelines.common.label_summary import format_summary as format_label_summary
from pipelines.config import LabelJobConfig, ReportJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.logging_setup import configure_logging
from pipelines.report.job import run as write_report
from pipelines.shard.job import format_summary, run


SAMPLE_CORPUS = Path(__file__).parent / "sample_corpus"
DEMO_OUTPUT = Path(os.environ.get("DPMESH_DEMO_OUTPUT", "demo_output")).resolve()


def shard_sample_corpus() -> dict[str, Any]:
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


def model_overrides() -> tuple[list[str], str]:
    """Hydra overrides for the demo's model, and a line saying which model it is."""
    pretrained, checkpoint = os.environ.get("DPMESH_PRETRAINED"), os.environ.get("DPMESH_CHECKPOINT")
    if not (pretrained or checkpoint):
        return [], "model=tiny (the DPMesh architecture at tiny widths, random weights; see DPMESH_PRETRAINED)"
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = f"model.pretrained={pretrained}" if pretrained else f"model.checkpoint={checkpoint}"
    return ["model=dpmesh", source, f"model.device={device}"], f"model=dpmesh ({source}) on {device}"


def label_sample_shards(overrides: list[str]) -> dict[str, Any]:
    """Labels the demo shards into ``demo_output/labels`` and returns the run summary."""
    cfg = compose_config(
        "dpmesh_label",
        [
            f"input.shards={DEMO_OUTPUT / 'shards'}",
            f"output={DEMO_OUTPUT / 'labels'}",
            "overwrite=true",
            "progress_interval_s=0",
            "log_level=WARNING",
            *overrides,
        ],
        LabelJobConfig,
    )
    return label(cfg)


def report_labels() -> str:
    """Writes the HTML report of the demo labels into ``demo_output/report`` and returns its ``index.html``."""
    cfg = compose_config(
        "dpmesh_report",
        [f"input.labels={DEMO_OUTPUT / 'labels'}", f"output={DEMO_OUTPUT / 'report'}", "log_level=WARNING"],
        ReportJobConfig,
    )
    return str(write_report(cfg)["index"])


def where_and_how(shards: Path, labels: Path) -> str:
    """Where the outputs are and one-liners to query them."""
    tables = f"['{labels}/annotations/*.parquet', '{labels}/rejected/*.parquet']"
    duckdb_sql = f"SELECT quality_tier, reasons, count(*) AS persons FROM read_parquet({tables}) GROUP BY ALL"
    return (
        "\nWhere the output is:\n"
        f"  shards: {shards}/shard-*.tar (+ index .parquet, _manifest.json, _errors.parquet)\n"
        f"  labels: {labels}/annotations/ (accepted), rejected/ (with reasons), errors/, _done/, _summary.json\n"
        "\nQuery it:\n"
        f'  .venv/bin/python -c "import duckdb; duckdb.sql(\\"{duckdb_sql}\\").show()"\n'
        f"  .venv/bin/python -c \"import pyarrow.parquet as pq; t = pq.read_table('{labels}/rejected'); "
        'print(t.num_rows, t.column_names[:12])"'
    )


def main() -> None:
    configure_logging("WARNING")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    print(f"1. Sharding the sample corpus {SAMPLE_CORPUS} ...", flush=True)
    manifest = shard_sample_corpus()
    shards, labels = DEMO_OUTPUT / "shards", DEMO_OUTPUT / "labels"
    print(format_summary(manifest, str(shards)))
    overrides, model_line = model_overrides()
    print(f"\n2. Labeling every person with {model_line} ...", flush=True)
    summary = label_sample_shards(overrides)
    print(format_label_summary(summary, str(labels)))
    if not overrides:
        print("  (random weights: the default filter rejects these labels, each with its reasons, as it should)")
    print(where_and_how(shards, labels))
    if not (manifest["counts"]["reconciled"] and summary["reconciled"]):
        sys.exit("counts did not reconcile: see the manifest and _summary.json")
    print("\n3. Writing the report (plots, and a gallery with SMPL mesh overlays) ...", flush=True)
    index = report_labels()
    print(f"  report: {index}\n  open it in a browser: file://{index}")


if __name__ == "__main__":
    main()
