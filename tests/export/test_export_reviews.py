"""dpmesh-export review=<file...> on a real label output (the numpy stand-in model, DirectRunner): a reviewed reject
is left out, a reviewed accept of a row the filter rejected is exported with its review, the card and stats.json
list the review; conflicting files and a review of another label run are refused before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines.common.reviews import SAME_RUN
from pipelines.config import ConfigError, ExportJobConfig, compose_config
from pipelines.export.job import run as export
from tests.fakes.corpus import make_images
from tests.fakes.export_rows import crop_rows
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.reviews import write_review
from tests.fakes.shard_set import label_shards, shard_annotated


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images of 1-3 persons in shards of 4, labeled by the numpy stand-in with a filter that rejects the
    smaller persons (reason small_box)."""
    root = tmp_path_factory.mktemp("export_reviews")
    shards = shard_annotated(root, make_images(12, seed=5, width=320, height=240, persons=(1, 3)),
                             "shard.max_samples=4")  # fmt: skip
    label_shards(shards, root / "labels", "filter.min_box_px=150", handler=FakeDPMeshHandler)
    return root


def _rows(labels: Path, folder: str) -> list[dict[str, Any]]:
    return sorted((r for p in sorted((labels / folder).glob("*.parquet")) for r in pq.read_table(p).to_pylist()),
                  key=lambda r: r["sample_id"])  # fmt: skip


def _export(corpus: Path, out: Path, *more: str) -> dict[str, Any]:
    keys = [f"input.labels={corpus / 'labels'}", f"input.shards={corpus / 'shards'}", f"output={out}",
            "format=crops", "log_level=WARNING", *more]  # fmt: skip
    stats: dict[str, Any] = export(compose_config("dpmesh_export", keys, ExportJobConfig))
    return stats


def _persons(corpus: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A person the filter keeps and one it rejects."""
    kept, rejected = _rows(corpus / "labels", "annotations"), _rows(corpus / "labels", "rejected")
    assert kept, "the corpus needs persons on both sides of the box filter"
    assert rejected, "the corpus needs persons on both sides of the box filter"
    return kept[0], rejected[0]


def test_export_applies_a_review_to_rows_card_and_stats(corpus: Path, tmp_path: Path) -> None:
    kept, filtered = _persons(corpus)
    review = write_review(tmp_path / "review.json", corpus / "labels", [(kept, "reject"), (filtered, "accept")])
    plain = _export(corpus, tmp_path / "plain")
    stats = _export(corpus, tmp_path / "out", f"review={review}")
    before, rows = crop_rows(tmp_path / "plain"), crop_rows(tmp_path / "out")
    assert kept["sample_id"] in before
    assert filtered["sample_id"] not in before
    assert kept["sample_id"] not in rows, "a reviewed reject is not exported"
    accepted = rows[filtered["sample_id"]]
    assert accepted["review"] == "accept", "a reviewed accept is exported whatever its score, with its review"
    assert accepted["quality_tier"] in ("gold", "silver", "bronze")
    assert accepted["reasons"] == []
    assert set(rows) == set(before) - {kept["sample_id"]} | {filtered["sample_id"]}, "no other person changes"
    assert all(rows[s]["review"] is None for s in set(rows) - {filtered["sample_id"]})
    assert stats["counts"]["persons"] == plain["counts"]["persons"]  # one fewer, one more
    assert stats["reconciled"]
    record = stats["review"]
    assert record["decisions"] == {"accept": 1, "reject": 1}
    assert record["applied"]["applied_accept"] == record["applied"]["applied_reject"] == 1
    assert record["applied"]["accept_over_filter"] == 1
    assert record["reconciled"]
    [file] = record["files"]
    assert file["matched"] == SAME_RUN
    assert file["uri"] == str(review)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Reviews" in card
    assert str(review) in card
    assert "## Reviews" not in (tmp_path / "plain" / "README.md").read_text()
    assert "review" not in plain
    hashes = stats["provenance"]["export"]["config_hash"], plain["provenance"]["export"]["config_hash"]
    assert hashes[0] != hashes[1], "the decisions are part of the config"
    again = _export(corpus, tmp_path / "out", f"review={review}")
    assert again["review"]["applied"] == record["applied"], "a rerun's card counts the committed shards' reviews"


def test_conflicting_files_and_another_label_run_are_refused(corpus: Path, tmp_path: Path) -> None:
    kept, filtered = _persons(corpus)
    labels = corpus / "labels"
    first = write_review(tmp_path / "a.json", labels, [(kept, "reject")])
    second = write_review(tmp_path / "b.json", labels, [(kept, "accept"), (filtered, "accept")])
    with pytest.raises(ConfigError, match=rf"1 person\(s\) decided differently .*{kept['sample_id']}: reject in "):
        _export(corpus, tmp_path / "conflict", f"review=[{first},{second}]")
    assert not (tmp_path / "conflict").exists(), "refused before anything is written"
    nobody = {**kept, "sample_id": "nobody-000000000000_p0"}
    stranger = write_review(tmp_path / "other.json", labels, [(nobody, "reject")], config_hash="0123456789abcdef")
    with pytest.raises(ConfigError, match="not these") as refused:
        _export(corpus, tmp_path / "other", f"review={stranger}")
    assert "no such person in" in str(refused.value)
    assert not (tmp_path / "other").exists()
