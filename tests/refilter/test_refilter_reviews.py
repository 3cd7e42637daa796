"""dpmesh-refilter review=<file...> on real label outputs (the numpy stand-in model, DirectRunner): decisions in the
rows, markers and summary; conflicting files refused or skipped and listed; a review of another label run refused
unless its persons are in the input; reviews carried by later refilters; another review is another config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines.common.reviews import PERSONS_MATCH, SAME_RUN
from pipelines.config import ConfigError, RefilterJobConfig, compose_config
from pipelines.refilter.job import run as refilter
from schemas.annotations import REVIEWED_REJECT
from tests.fakes.corpus import make_images
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.reviews import write_review
from tests.fakes.shard_set import label_shards, shard_annotated


SMALL_BOX = "filter.min_box_px=150"  # a filter that rejects the stand-in's smaller persons (reason small_box)


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 images of 1-3 persons in shards of 4, labeled by the numpy stand-in with the filter off."""
    root = tmp_path_factory.mktemp("reviews")
    shards = shard_annotated(root, make_images(16, seed=5, width=320, height=240, persons=(1, 3)),
                             "shard.max_samples=4")  # fmt: skip
    label_shards(shards, root / "labels", "filter=off", handler=FakeDPMeshHandler)
    return root / "labels"


def _rows(output: Path) -> dict[str, dict[str, Any]]:
    return {r["sample_id"]: {**r, "folder": folder} for folder in ("annotations", "rejected")
            for p in sorted((output / folder).glob("*.parquet")) for r in pq.read_table(p).to_pylist()}  # fmt: skip


def _refilter(labels: Path, output: Path, *more: str) -> dict[str, Any]:
    keys = [f"input={labels}", f"output={output}", "log_level=WARNING", *more]
    summary: dict[str, Any] = refilter(compose_config("dpmesh_refilter", keys, RefilterJobConfig))
    return summary


def _persons(labels: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A person the small-box filter keeps, one it rejects, and a third kept one."""
    rows = sorted(_rows(labels).values(), key=lambda r: r["sample_id"])
    big = [r for r in rows if r["box_size_px"] >= 150]
    small = [r for r in rows if r["box_size_px"] < 150]
    assert len(big) >= 2, "the corpus needs persons on both sides of the box filter"
    assert small, "the corpus needs persons on both sides of the box filter"
    return big[0], small[0], big[1]


def test_refilter_applies_a_review_to_rows_markers_and_summary(labels: Path, tmp_path: Path) -> None:
    kept, filtered, other = _persons(labels)
    review = write_review(tmp_path / "review.json", labels, [(kept, "reject"), (filtered, "accept")])
    output = tmp_path / "out"
    summary = _refilter(labels, output, SMALL_BOX, f"review={review}")
    plain = _refilter(labels, tmp_path / "plain", SMALL_BOX)
    rows, before = _rows(output), _rows(tmp_path / "plain")
    assert rows[kept["sample_id"]]["folder"] == "rejected"
    assert rows[kept["sample_id"]]["review"] == "reject"
    assert rows[kept["sample_id"]]["reasons"] == [REVIEWED_REJECT]
    assert before[filtered["sample_id"]]["reasons"] == ["small_box"], "the filter alone rejects it"
    assert rows[filtered["sample_id"]]["folder"] == "annotations", "a reviewed accept is kept whatever its score"
    assert rows[filtered["sample_id"]]["review"] == "accept"
    assert rows[filtered["sample_id"]]["reasons"] == []
    assert rows[filtered["sample_id"]]["quality_tier"] in ("gold", "silver", "bronze")
    assert rows[other["sample_id"]]["review"] is None
    unreviewed = set(rows) - {kept["sample_id"], filtered["sample_id"]}
    assert all(rows[s] == before[s] for s in unreviewed), "no other row changes"
    counts = summary["counts"]
    assert counts["persons_in"] == counts["persons_accepted"] + counts["persons_rejected"] + counts["persons_errored"]
    assert counts["persons_rejected"] == plain["counts"]["persons_rejected"]  # one more reject, one fewer
    assert summary["rejected_by_reason"][REVIEWED_REJECT] == 1
    record = summary["review"]
    assert record["decisions"] == {"accept": 1, "reject": 1}
    assert record["applied"]["applied_accept"] == record["applied"]["applied_reject"] == 1
    assert record["applied"]["accept_over_filter"] == 1
    assert record["reconciled"]
    assert record["conflicts"]["count"] == 0
    [file] = record["files"]
    assert file["matched"] == SAME_RUN
    assert file["reviewer"] == "tester"
    assert file["reject_reasons"] == {"misaligned": 1}
    assert summary["config"]["review"] == [str(review)]
    marker = json.loads((output / "_done" / f"{kept['shard']}.json").read_text())
    assert marker["review"]["applied_reject"] >= 1
    assert summary["config_hash"] != plain["config_hash"], "the decisions are part of the config"
    stats = json.loads((output / "_stats.json").read_text())["stats"]
    assert sum(stats["strata"].values()) == len(rows), "the review strata count every row"


def test_conflicting_files_are_refused_or_skipped_and_listed(labels: Path, tmp_path: Path) -> None:
    kept, filtered, other = _persons(labels)
    first = write_review(tmp_path / "a.json", labels, [(kept, "reject"), (other, "reject")])
    second = write_review(tmp_path / "b.json", labels, [(kept, "accept"), (filtered, "accept"), (other, "reject")])
    with pytest.raises(ConfigError, match=rf"1 person\(s\) decided differently .*{kept['sample_id']}: reject in "):
        _refilter(labels, tmp_path / "refused", f"review=[{first},{second}]")
    assert not (tmp_path / "refused").exists(), "refused before anything is written"
    output = tmp_path / "skipped"
    summary = _refilter(labels, output, SMALL_BOX, f"review=[{first},{second}]", "review_conflicts=skip")
    rows = _rows(output)
    assert rows[kept["sample_id"]]["review"] is None, "a conflicting person is left to the filter"
    assert rows[other["sample_id"]]["review"] == "reject", "the files agree on this one"
    assert rows[filtered["sample_id"]]["review"] == "accept"
    conflicts = summary["review"]["conflicts"]
    assert conflicts["mode"] == "skip"
    assert conflicts["count"] == 1
    assert conflicts["persons"][0]["sample_id"] == kept["sample_id"]
    assert [d["decision"] for d in conflicts["persons"][0]["decisions"]] == ["reject", "accept"]
    assert summary["review"]["decisions"] == {"accept": 1, "reject": 1}
    assert summary["review"]["reconciled"]


def test_a_review_of_another_label_run_is_refused_unless_its_persons_are_here(labels: Path, tmp_path: Path) -> None:
    kept, filtered, _ = _persons(labels)
    moved = tmp_path / "moved"  # the same labels at another location: another identity, the same persons
    shutil.copytree(labels, moved)
    review = write_review(tmp_path / "review.json", labels, [(kept, "reject"), (filtered, "accept")])
    summary = _refilter(moved, tmp_path / "from_moved", f"review={review}")
    assert summary["review"]["files"][0]["matched"] == PERSONS_MATCH
    assert _rows(tmp_path / "from_moved")[kept["sample_id"]]["review"] == "reject"

    other_run = {"config_hash": "0123456789abcdef"}
    for name, row, why in (
        ("no_person", {**kept, "sample_id": "nobody-000000000000_p0"}, "no such person in"),
        ("other_model", {**kept, "model_id": "sha256:feedfeedfeedfeed"}, "labeled by fake-dpmesh-numpy, reviewed as"),
        ("no_shard", {**kept, "shard": "shard-999999"}, "the input has no shard shard-999999"),
    ):
        stranger = write_review(tmp_path / f"{name}.json", labels, [(row, "reject")], **other_run)
        with pytest.raises(ConfigError, match="not these") as refused:
            _refilter(labels, tmp_path / name, f"review={stranger}")
        assert why in str(refused.value)
        assert "review these labels on their own page" in str(refused.value)
        assert not (tmp_path / name).exists()
    # the same decisions under the same identity are the same run's: applied (a person not found is counted)
    same = write_review(tmp_path / "same.json", labels, [({**kept, "sample_id": "nobody-000000000000_p0"}, "reject")])
    counted = _refilter(labels, tmp_path / "same_out", f"review={same}")
    assert counted["review"]["applied"]["not_found"] == 1
    assert counted["review"]["reconciled"]


def test_reviews_are_carried_by_later_refilters(labels: Path, tmp_path: Path) -> None:
    kept, filtered, _ = _persons(labels)
    review = write_review(tmp_path / "review.json", labels, [(kept, "reject"), (filtered, "accept")])
    first = tmp_path / "first"
    _refilter(labels, first, SMALL_BOX, f"review={review}")
    second = tmp_path / "second"
    summary = _refilter(first, second, "filter=strict", SMALL_BOX)
    rows = _rows(second)
    assert rows[kept["sample_id"]]["review"] == "reject"
    assert rows[kept["sample_id"]]["reasons"][-1] == REVIEWED_REJECT
    assert rows[filtered["sample_id"]]["folder"] == "annotations"
    assert summary["review"]["applied"]["carried_reject"] == summary["review"]["applied"]["carried_accept"] == 1
    assert summary["review"]["files"] == []
    # a review of the refiltered output applies to it (same run), and replaces what the rows carried
    again = write_review(tmp_path / "again.json", first, [(kept, "accept")])
    replaced = _refilter(first, tmp_path / "third", SMALL_BOX, f"review={again}")
    assert replaced["review"]["applied"]["replaced_earlier"] == 1
    assert _rows(tmp_path / "third")[kept["sample_id"]]["review"] == "accept"


def test_another_review_is_another_config_and_bad_arguments_are_refused(labels: Path, tmp_path: Path) -> None:
    kept, filtered, _ = _persons(labels)
    review = write_review(tmp_path / "review.json", labels, [(kept, "reject")])
    output = tmp_path / "out"
    done = _refilter(labels, output, f"review={review}")
    again = _refilter(labels, output, f"review={review}")
    assert again["shards"]["labeled_this_run"] == 0, "the same review: every shard is done"
    assert again["config_hash"] == done["config_hash"]
    changed = write_review(tmp_path / "changed.json", labels, [(kept, "reject"), (filtered, "reject")])
    with pytest.raises(ConfigError, match="another config"):
        _refilter(labels, output, f"review={changed}")
    assert _refilter(labels, output, f"review={changed}", "overwrite=true")["review"]["applied"]["applied_reject"] == 2
    with pytest.raises(ConfigError, match=r"review='.*missing\.json': no such file"):
        _refilter(labels, tmp_path / "o1", f"review={tmp_path / 'missing.json'}")
    (tmp_path / "not_review.json").write_text('{"format": "dpmesh-eval"}')
    with pytest.raises(ConfigError, match=r"review=.*not_review\.json: format is \"dpmesh-eval\", not .*review file"):
        _refilter(labels, tmp_path / "o2", f"review={tmp_path / 'not_review.json'}")
    inside = tmp_path / "o3"
    inside.mkdir()
    shutil.copy(review, inside / "review.json")
    with pytest.raises(ConfigError, match=r"contains review\[0\]"):
        _refilter(labels, inside, f"review={inside / 'review.json'}")
    with pytest.raises(ConfigError, match="review=3"):
        _refilter(labels, tmp_path / "o4", "review=3")
