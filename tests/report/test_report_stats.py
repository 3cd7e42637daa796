"""The statistics a label output's markers carry (`pipelines.common.label_stats`) and the report drawn from them:
the same numbers as counting the rows, computed again shard by shard for outputs whose markers predate them, and a
report whose plots do not grow with the number of shards."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.common.label_stats import GALLERY_POOL, HISTOGRAMS, row_priority
from pipelines.common.merged_stats import STATS_FILE, MergedStats
from pipelines.config import RefilterJobConfig, ReportJobConfig, compose_config
from pipelines.refilter.job import run as refilter
from pipelines.report import sections
from pipelines.report.assets import Assets
from pipelines.report.job import run as write_report
from pipelines.report.plan import ReportPlan
from pipelines.report.steps import STATS_NAME
from tests.fakes.corpus import make_images
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import label_shards, shard_annotated


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """24 images (0-3 persons each) in shards of 4, labeled by the numpy stand-in, and re-split with tier cut-offs
    and a box size that give every tier and rejects with a reason."""
    root = tmp_path_factory.mktemp("stats")
    shards = shard_annotated(root, make_images(24, seed=11, width=320, height=240), "shard.max_samples=4")
    labels = root / "labels"
    label_shards(shards, labels, "filter=off", handler=FakeDPMeshHandler)
    resplit = root / "resplit"
    keys = [f"input={labels}", f"output={resplit}", "log_level=WARNING", "filter.gold_min=0.98",
            "filter.silver_min=0.97", "filter.min_box_px=120"]  # fmt: skip
    refilter(compose_config("dpmesh_refilter", keys, RefilterJobConfig))
    return {"root": root, "shards": shards, "labels": labels, "resplit": resplit}


def _rows(labels: Path) -> pa.Table:
    files = [p for folder in ("annotations", "rejected") for p in sorted((labels / folder).glob("*.parquet"))]
    return pa.concat_tables([pq.read_table(p) for p in files])


def _merged(labels: Path) -> MergedStats:
    merged = MergedStats()
    for path in sorted((labels / "_done").glob("*.json")):
        marker = json.loads(path.read_text())
        merged.add(marker["shard"], marker["stats"])
    return merged


def _report(labels: Path, output: Path, *extra: str) -> dict[str, Any]:
    keys = [f"input.labels={labels}", f"output={output}", "report.render_mesh=false", "log_level=WARNING", *extra]
    return write_report(compose_config("dpmesh_report", keys, ReportJobConfig))


@pytest.mark.parametrize("output", ["labels", "resplit"])
def test_the_markers_statistics_are_the_rows_counted(labeled: dict[str, Path], output: str) -> None:
    rows = _rows(labeled[output])
    stats = _merged(labeled[output])
    tiers = np.asarray(rows.column("quality_tier").to_pylist())
    assert output == "labels" or {"gold", "silver", "reject"} <= set(tiers.tolist())
    assert dict(stats.rows) == dict(Counter(tiers.tolist()))
    assert dict(stats.reasons) == dict(Counter(r for rs in rows.column("reasons").to_pylist() for r in rs))
    for column in ("confidence", "box_size_px", "crowd_index"):
        spec = HISTOGRAMS[column]
        values = np.asarray(rows.column(column).to_numpy(zero_copy_only=False), np.float64)
        for tier in set(tiers.tolist()):
            inside = values[(tiers == tier) & np.isfinite(values)]
            expected, _ = np.histogram(np.clip(inside, spec.low, spec.high), spec.edges())
            counted = stats.hist[column][tier].copy()
            counted[1] += counted[0]  # below the edges: np.histogram after the clip puts them in the first bin
            counted[-2] += counted[-1]
            np.testing.assert_array_equal(counted[1:-1], expected, err_msg=f"{column} {tier}")
    betas = np.asarray(rows.column("betas").to_pylist(), np.float64)
    for i in range(betas.shape[1]):
        exact = np.quantile(betas[:, i], [0.05, 0.5, 0.95], method="inverted_cdf")
        read = stats.quantiles(f"betas/{i}", [0.05, 0.5, 0.95])
        assert np.all(np.abs(read - exact) <= HISTOGRAMS[f"betas/{i}"].width() + 1e-12), (i, read, exact)


def test_the_gallery_pool_is_the_lowest_priorities_of_every_tier(labeled: dict[str, Path]) -> None:
    rows = _rows(labeled["resplit"])
    stats = _merged(labeled["resplit"])
    by_tier: dict[str, list[tuple[int, str]]] = {}
    for sample_id, tier in zip(rows.column("sample_id").to_pylist(), rows.column("quality_tier").to_pylist(),
                               strict=True):  # fmt: skip
        by_tier.setdefault(tier, []).append((row_priority(sample_id), sample_id))
    for tier, entries in by_tier.items():
        expected = [sid for _, sid in sorted(entries)[:GALLERY_POOL]]
        assert [e[4] for e in stats.pool[tier]] == expected
    for _, shard, folder, row, sample_id in (e for entries in stats.pool.values() for e in entries):
        table = pq.read_table(labeled["resplit"] / folder / f"{shard}.parquet")
        assert table.column("sample_id")[row].as_py() == sample_id, "a pool entry names its row's position"


def test_a_report_of_markers_without_statistics_computes_them_shard_by_shard(
    labeled: dict[str, Path], tmp_path: Path
) -> None:
    direct = _report(labeled["resplit"], tmp_path / "direct")
    assert direct["statistics_computed"] == 0
    old = tmp_path / "old_labels"
    shutil.copytree(labeled["resplit"], old)
    (old / "_done_index.json.gz").unlink()
    (old / STATS_FILE).unlink()
    for path in (old / "_done").glob("*.json"):  # as written before markers carried statistics
        marker = json.loads(path.read_text())
        del marker["stats"]
        path.write_text(json.dumps(marker))
    backfilled = _report(old, tmp_path / "backfilled")
    assert backfilled["statistics_computed"] == len(list((old / "_done").glob("*.json")))
    assert json.loads((tmp_path / "backfilled" / STATS_NAME).read_text()) == json.loads(
        (tmp_path / "direct" / STATS_NAME).read_text()
    )
    assert backfilled["gallery"] == direct["gallery"]
    assert backfilled["tiers"] == direct["tiers"]


def test_statistics_of_another_version_are_computed_again_from_the_rows(
    labeled: dict[str, Path], tmp_path: Path
) -> None:
    """The markers' statistics and ``_stats.json`` are caches of the rows: in another version (or unreadable) they
    are made again from the rows, never trusted nor a reason to fail."""
    assert _report(labeled["labels"], tmp_path / "direct")["statistics_computed"] == 0
    other = tmp_path / "labels"
    shutil.copytree(labeled["labels"], other)
    (other / STATS_FILE).write_text(json.dumps({"version": 99}))
    path = sorted((other / "_done").glob("*.json"))[0]
    marker = json.loads(path.read_text())
    marker["stats"]["version"] = 99
    path.write_text(json.dumps(marker))
    again = _report(other, tmp_path / "again")
    assert again["statistics_computed"] == len(list((other / "_done").glob("*.json")))
    assert json.loads((tmp_path / "again" / STATS_NAME).read_text()) == json.loads(
        (tmp_path / "direct" / STATS_NAME).read_text()
    )


def _plan_of(n_shards: int) -> ReportPlan:
    rng = np.random.default_rng(0)
    markers = {
        f"shard-{i:06d}": {
            "shard": f"shard-{i:06d}",
            "elapsed_s": float(rng.uniform(1, 5)),
            "counts": {"images_in": 10, "persons_in": 20, "persons_errored": int(rng.integers(0, 5))},
        }
        for i in range(n_shards)
    }
    return ReportPlan("labels", None, markers, MergedStats(), [])


def test_the_shards_section_is_the_same_size_at_any_number_of_shards() -> None:
    """One number per shard drawn as a distribution, and the worst shards named: never one bar per shard."""
    sizes = {}
    for n in (3, 5000):
        assets = Assets()
        page = sections.shards(_plan_of(n), assets)
        sizes[n] = {name: Image.open(io.BytesIO(data)).size for name, data in assets.files.items()}
        assert page.count("<tr>") <= 2 * (sections.WORST_SHARDS + 1)
    assert sizes[3] == sizes[5000]
    assert set(sizes[3]) == {"assets/shard_error_rates.png", "assets/shard_throughput.png"}


def test_a_markers_gallery_sample_never_names_a_file_outside(labeled: dict[str, Path], tmp_path: Path) -> None:
    """Markers are data: pool entries that climb out by sample id, tier, folder or shard are left out and said."""
    edited = tmp_path / "labels"
    shutil.copytree(labeled["labels"], edited)
    (edited / "_done_index.json.gz").unlink()
    path = sorted((edited / "_done").glob("*.json"))[0]
    marker = json.loads(path.read_text())
    priority = 0
    marker["stats"]["pool"] = {
        "gold": [[priority, "annotations", 0, "../../../x/REPORT"], [priority, "../../x", 0, "k_p0"]],
        "../t": [[priority, "annotations", 0, "k_p1"]],
    }
    marker["stats"]["rows"]["../t"] = 1
    path.write_text(json.dumps(marker))
    (edited / STATS_FILE).unlink()  # so the report merges the markers' statistics
    result = _report(edited, tmp_path / "report", "report.per_tier=32")
    assert not list(tmp_path.rglob("REPORT*"))
    assert not (tmp_path / "x").exists()
    page = (tmp_path / "report" / "index.html").read_text()
    assert "3 entries of the markers&#x27; gallery sample are left out" in page or "3 entries of the markers" in page
    assert "../t" not in result["gallery"]
