"""dpmesh-report review=<n>: the review strata the markers' statistics carry, the seeded stratified draw, and the
page's contract with its script and with dpmesh-refilter (the embedded label run identity, the persons and their
strata, the review.json the page saves), over real label outputs of the numpy stand-in model.

The page's script itself runs in headless Chromium in the slow test (tests/report/test_review_browser.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.common.label_stats import (
    REVIEW_POOL,
    REVIEW_STRATA,
    UNRECORDED,
    UNSCORED,
    confidence_band,
    review_stratum,
    row_priority,
    shard_stats,
)
from pipelines.common.merged_stats import STATS_FILE, MergedStats
from pipelines.common.reviews import browser_storage_key, label_run_of, parse_review
from pipelines.config import ConfigError, RefilterJobConfig, ReportJobConfig, compose_config
from pipelines.refilter.job import run as refilter
from pipelines.report.job import run as write_report
from pipelines.report.review_page import PAGE_DATA_VERSION, PAGE_NAME, read_page_data
from pipelines.report.review_sample import allocate, draw_review, usable_review_pool
from pipelines.report.review_script import SCRIPT
from tests.fakes.corpus import make_images
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import label_shards, shard_annotated


REVIEW = 12


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """16 images of 1-3 persons in shards of 4, labeled by the numpy stand-in (filter off), and its review page."""
    root = tmp_path_factory.mktemp("review")
    shards = shard_annotated(root, make_images(16, seed=7, width=320, height=240, persons=(1, 3)),
                             "shard.max_samples=4")  # fmt: skip
    labels = root / "labels"
    label_shards(shards, labels, "filter=off", handler=FakeDPMeshHandler)
    report = root / "report"
    result = _report(labels, report)
    return {"root": root, "labels": labels, "report": report, "result": result}


def _report(labels: Path, output: Path, *extra: str) -> dict[str, Any]:
    keys = [f"input.labels={labels}", f"output={output}", f"review={REVIEW}", "report.render_mesh=false",
            "report.per_tier=1", "log_level=WARNING", *extra]  # fmt: skip
    result: dict[str, Any] = write_report(compose_config("dpmesh_report", keys, ReportJobConfig))
    return result


def _rows(labels: Path) -> dict[str, dict[str, Any]]:
    return {r["sample_id"]: {**r, "folder": folder} for folder in ("annotations", "rejected")
            for p in sorted((labels / folder).glob("*.parquet")) for r in pq.read_table(p).to_pylist()}  # fmt: skip


def _page(report: Path) -> dict[str, Any]:
    return read_page_data((report / PAGE_NAME).read_text())


def test_confidence_bands_and_strata_are_a_bounded_set() -> None:
    assert [confidence_band(c) for c in (0.0, 0.2499, 0.25, 0.5, 0.75, 1.0)] == [
        "0.00-0.25", "0.00-0.25", "0.25-0.50", "0.50-0.75", "0.75-1.00", "0.75-1.00",
    ]  # fmt: skip
    assert confidence_band(-0.1) == "0.00-0.25"
    assert confidence_band(1.5) == "0.75-1.00"
    assert confidence_band(None) == confidence_band(float("nan")) == UNSCORED
    assert review_stratum(0.8, "partial") == "0.75-1.00|partial"
    assert review_stratum(0.8, None) == f"0.75-1.00|{UNRECORDED}"
    assert review_stratum(0.1, "../../x") == "0.00-0.25|other", "a level from data names no stratum of its own"
    assert len(REVIEW_STRATA) == len(set(REVIEW_STRATA)) == 25


def test_each_shard_keeps_the_strata_counts_and_the_lowest_priorities_of_each_stratum() -> None:
    rng = np.random.default_rng(3)
    n = 400
    confidence = rng.uniform(0, 1, n)
    confidence[:5] = np.nan
    levels = rng.choice(np.array(["none", "partial", "heavy", None], dtype=object), n)
    table = pa.table({
        "sample_id": [f"k{i:04d}_p0" for i in range(n)], "quality_tier": ["gold"] * n,
        "confidence": pa.array(confidence, pa.float32()), "occlusion_level": pa.array(levels.tolist(), pa.string()),
    })  # fmt: skip
    halves = [table.slice(0, 150), table.slice(150)]  # two shards, merged
    merged = MergedStats()
    for i, part in enumerate(halves):
        merged.add(f"shard-{i:06d}", shard_stats({"annotations": part}, None))
    strata = [review_stratum(float(c), lv) for c, lv in zip(table["confidence"].to_pylist(), levels, strict=True)]
    assert dict(merged.strata) == dict(Counter(strata))
    assert {s for s in strata} <= set(REVIEW_STRATA)
    for stratum in set(strata):
        ids = [f"k{i:04d}_p0" for i, s in enumerate(strata) if s == stratum]
        expected = sorted(ids, key=row_priority)[:REVIEW_POOL]
        assert [e[4] for e in merged.review_pool[stratum]] == expected
    for _, shard, _, row, sample_id in (e for entries in merged.review_pool.values() for e in entries):
        assert halves[int(shard[-1])]["sample_id"][row].as_py() == sample_id, "an entry names its row's position"
    again = MergedStats.from_json(json.loads(json.dumps(merged.to_json())))
    assert again.review_pool == merged.review_pool
    assert again.strata == merged.strata


def test_n_is_shared_equally_over_the_strata_within_what_each_holds() -> None:
    strata = REVIEW_STRATA
    capacity = {strata[0]: 3, strata[1]: 24, strata[2]: 7, strata[7]: 0}
    given = allocate(capacity, 12, np.random.default_rng(0))
    assert sum(given.values()) == 12
    assert given[strata[0]] == 3, "a stratum with fewer than its share gives all it has"
    assert sorted((given[strata[1]], given[strata[2]])) == [4, 5]
    assert strata[7] not in given
    assert allocate(capacity, 100, np.random.default_rng(0)) == {strata[0]: 3, strata[1]: 24, strata[2]: 7}
    assert allocate(capacity, 0, np.random.default_rng(0)) == {strata[0]: 0, strata[1]: 0, strata[2]: 0}
    pool = {s: [(i, "shard-000000", "annotations", i, f"k{j}{i:03d}_p0") for i in range(n)]
            for j, (s, n) in enumerate(capacity.items())}  # fmt: skip
    picks = draw_review(pool, 12, seed=4)
    assert picks == draw_review({s: list(reversed(e)) for s, e in pool.items()}, 12, seed=4), "independent of order"
    assert Counter(p.stratum for p in picks) == {s: n for s, n in allocate(capacity, 12, np.random.default_rng(
        [4, 1])).items() if n}  # fmt: skip
    assert any(draw_review(pool, 12, seed=s) != picks for s in range(5, 10))
    assert len({p.sample_id for p in draw_review(pool, 34, seed=1)}) == 34


def test_the_review_page_embeds_the_label_run_and_a_stratified_sample_of_its_persons(labeled: dict[str, Any]) -> None:
    labels, report = labeled["labels"], labeled["report"]
    summary = json.loads((labels / "_summary.json").read_text())
    data = _page(report)
    run = label_run_of(str(labels), summary)
    assert data["version"] == PAGE_DATA_VERSION
    assert data["storage_key"] == browser_storage_key(run)
    header = data["review_header"]
    assert header["label_run"] == run.to_json()
    assert header["label_run"]["config_hash"] == summary["config_hash"]
    assert header["label_run"]["labels"] == os.path.realpath(labels)
    assert [name for name, _ in data["reasons"]][:2] == ["misaligned", "wrong_pose"]

    rows = _rows(labels)
    persons = data["persons"]
    assert len(persons) == REVIEW == labeled["result"]["review"]["persons"]
    assert len({p["sample_id"] for p in persons}) == REVIEW
    population = Counter(review_stratum(r["confidence"], r["occlusion_level"]) for r in rows.values())
    for p in persons:
        row = rows[p["sample_id"]]
        assert (p["shard"], p["model_id"], p["tier"]) == (row["shard"], row["model_id"], row["quality_tier"])
        assert p["stratum"] == review_stratum(row["confidence"], row["occlusion_level"])
        for image in (p["overlay"], p["photo"]):
            assert not re.match(r"^[a-z]+:", image), "relative: the page opens from disk"
            with Image.open(report / image) as opened:
                assert opened.format == "JPEG"
                assert opened.size == (512, 512)
    drawn = Counter(p["stratum"] for p in persons)
    assert header["sample"] == {
        "seed": 0, "size": REVIEW,
        "strata": {s: {"rows": population[s], "drawn": drawn.get(s, 0)} for s in REVIEW_STRATA if population[s]},
    }  # fmt: skip
    assert len(drawn) == len(population) > 1, "every stratum the output has is drawn from"
    assert max(drawn.values()) - min(drawn[s] for s in drawn if drawn[s] < population[s]) <= 1, "equal shares"
    stats = MergedStats.from_json(json.loads((labels / STATS_FILE).read_text())["stats"])
    expected = draw_review(usable_review_pool(stats.review_pool)[0], REVIEW, 0)
    assert [p["sample_id"] for p in persons] == [p.sample_id for p in expected], "the seeded draw, in its order"

    page = (report / PAGE_NAME).read_text()
    assert not re.findall(r'(?:src|href)="[a-z]+:', page), "nothing fetched from elsewhere"
    assert "<script src" not in page
    assert "</script>" not in page[page.index('id="review-data">') : page.index("</script>")].replace("</script", "")
    assert f'href="{PAGE_NAME}"' in (report / "index.html").read_text()
    for key in ('case "a"', 'case "r"', 'case "s"', 'case "b"', 'case "u"', 'case "o"', 'case "d"', "localStorage"):
        assert key in SCRIPT


def test_the_same_seed_draws_the_same_page_and_another_seed_another(labeled: dict[str, Any]) -> None:
    first = [p["sample_id"] for p in _page(labeled["report"])["persons"]]
    again = _report(labeled["labels"], labeled["root"] / "again")
    assert [p["sample_id"] for p in _page(labeled["root"] / "again")["persons"]] == first
    assert again["review"]["strata"] == labeled["result"]["review"]["strata"]
    other = _report(labeled["labels"], labeled["root"] / "seed3", "report.seed=3")
    assert [p["sample_id"] for p in _page(labeled["root"] / "seed3")["persons"]] != first
    assert other["review"]["label_run"] == again["review"]["label_run"], "one label run, whatever the draw"


def test_a_review_saved_from_the_page_is_applied_by_refilter(labeled: dict[str, Any], tmp_path: Path) -> None:
    """review.json as the page's script builds it (its header, then the reviewer, time and decisions)."""
    data = _page(labeled["report"])
    persons = data["persons"]
    decisions = [{"sample_id": p["sample_id"], "shard": p["shard"], "model_id": p["model_id"],
                  "decision": "reject" if i % 3 == 0 else "accept", "reason": "misaligned" if i % 3 == 0 else None,
                  "time": "2026-05-01T10:00:00.000Z", "stratum": p["stratum"]}
                 for i, p in enumerate(persons[:6])]  # fmt: skip
    header = data["review_header"]
    document = {"format": header["format"], "version": header["version"], "label_run": header["label_run"],
                "reviewer": "ann", "saved_at": "2026-05-01T10:00:00.000Z", "sample": header["sample"],
                "decisions": decisions}  # fmt: skip
    path = tmp_path / "review.json"
    path.write_text(json.dumps(document, indent=1))
    review = parse_review(path.read_bytes(), str(path))
    assert [d.sample_id for d in review.decisions] == [p["sample_id"] for p in persons[:6]]
    output = tmp_path / "refiltered"
    keys = [f"input={labeled['labels']}", f"output={output}", f"review={path}", "log_level=WARNING"]
    summary = refilter(compose_config("dpmesh_refilter", keys, RefilterJobConfig))
    rows = _rows(output)
    for d in decisions:
        assert rows[d["sample_id"]]["review"] == d["decision"]
        assert (rows[d["sample_id"]]["folder"] == "rejected") == (d["decision"] == "reject")
    assert summary["review"]["files"][0]["matched"] == "same label run"
    assert summary["review"]["applied"]["applied_reject"] == 2
    assert summary["review"]["applied"]["applied_accept"] == 4
    # the refiltered output's own report: its review page shows the reviewed rows
    report = tmp_path / "report"
    _report(output, report)
    assert _page(report)["review_header"]["label_run"]["config_hash"] == summary["config_hash"]


def test_entries_of_a_markers_review_sample_never_name_a_file_outside(labeled: dict[str, Any], tmp_path: Path) -> None:
    edited = tmp_path / "labels"
    shutil.copytree(labeled["labels"], edited)
    (edited / "_done_index.json.gz").unlink()
    (edited / STATS_FILE).unlink()  # so the report merges the markers' statistics
    path = sorted((edited / "_done").glob("*.json"))[0]
    marker = json.loads(path.read_text())
    marker["stats"]["review_pool"] = {
        "0.75-1.00|none": [[0, "annotations", 0, "../../../x/REVIEW_p0"], [1, "../../x", 0, "k_p0"]],
        "../../x": [[2, "annotations", 0, "k_p1"]],
    }
    path.write_text(json.dumps(marker))
    result = _report(edited, tmp_path / "report", "review=32")
    assert not list(tmp_path.rglob("REVIEW*"))
    assert not (tmp_path / "x").exists()
    assert "3 entries of the markers&#x27; review sample are left out" in (tmp_path / "report" / PAGE_NAME).read_text()
    assert all(s in REVIEW_STRATA for s in result["review"]["strata"])


def test_review_options_are_bounded(tmp_path: Path) -> None:
    for bad, key in (("review=-1", "review=-1"), ("review=401", "review=401"), ("report.review_px=64", "review_px")):
        with pytest.raises(ConfigError, match=key):
            _report(tmp_path, tmp_path / "out", bad)
