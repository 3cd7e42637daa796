"""The review file format and what decisions do to rows (`pipelines.common.reviews`): parsing and its one-line
refusals, conflicts between files, the digest a config hash takes, and applying accepts and rejects to scored rows."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from dpmesh_core.confidence import NON_FINITE_OUTPUT, default_thresholds, graded_tier, strict_thresholds
from pipelines.common.reviews import (
    REJECT_REASONS,
    REVIEW_FORMAT,
    REVIEW_VERSION,
    Decision,
    LabelRun,
    ReviewError,
    apply_decisions,
    browser_storage_key,
    combine_reviews,
    label_run_of,
    parse_review,
    review_header,
    with_applied,
)
from pipelines.refilter.refilter_shard import conform, rescore_table
from schemas import ANNOTATION_SCHEMA, table_from_rows
from schemas.annotations import REVIEWED_REJECT
from tests.fakes.label_inputs import stored_label_row


RUN = LabelRun("/data/labels", "abc123", "0.1.0")


def _document(*decisions: dict[str, Any], **top: Any) -> dict[str, Any]:
    document = {**review_header(RUN, {"seed": 0, "size": len(decisions), "strata": {}}), "reviewer": "ann",
                "saved_at": "2026-01-02T03:04:05.000Z", "decisions": list(decisions)}  # fmt: skip
    document.update(top)
    return document


def _decision(sample_id: str = "k_p0", decision: str = "reject", **more: Any) -> dict[str, Any]:
    return {"sample_id": sample_id, "shard": "shard-000001", "model_id": "sha256:00", "decision": decision,
            "reason": "wrong_pose" if decision == "reject" else None, "time": "2026-01-02T03:04:05.000Z",
            "stratum": "0.75-1.00|none", **more}  # fmt: skip


def _bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_a_review_file_reads_back_what_the_page_writes() -> None:
    review = parse_review(_bytes(_document(_decision(), _decision("k_p1", "accept"))), "r.json")
    assert review.label_run == RUN
    assert review.reviewer == "ann"
    assert [(d.sample_id, d.decision, d.reason) for d in review.decisions] == [
        ("k_p0", "reject", "wrong_pose"), ("k_p1", "accept", None),
    ]  # fmt: skip
    assert len(review.sha256) == 64
    assert review_header(RUN, {})["format"] == REVIEW_FORMAT
    assert review_header(RUN, {})["version"] == REVIEW_VERSION
    assert list(REJECT_REASONS)[:3] == ["misaligned", "wrong_pose", "wrong_shape"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"{not json", "not a JSON document"),
        (b"[]", "not a JSON object"),
        (b'{"format": "dpmesh-review", "format": "x"}', "key 'format' given twice"),
        (b'{"format": "dpmesh-eval"}', "format is \"dpmesh-eval\", not 'dpmesh-review': not a review file"),
        (_bytes(_document(format="other")), "not a review file"),
        (_bytes(_document(version=2)), "this code reads version 1"),
        (_bytes(_document(extra=1)), "unknown key 'extra'"),
        (_bytes({k: v for k, v in _document().items() if k != "label_run"}), "lacks 'label_run'"),
        (_bytes(_document(label_run={"labels": "", "config_hash": None, "pipeline_version": None})), "not a location"),
        (_bytes(_document(_decision("../../x_p0"))), "invalid sample_id"),
        (_bytes(_document(_decision("k_p0\n"))), "invalid sample_id"),
        (_bytes(_document(_decision(shard="../shard-000001"))), "is not a shard name"),
        (_bytes(_document(_decision(decision="maybe"))), "not one of accept, reject"),
        (_bytes(_document(_decision("k_p0", "accept", reason="wrong_pose"))), "null for accept"),
        (_bytes(_document(_decision(reason="ugly"))), "null or one of misaligned"),
        (_bytes(_document(_decision(colour="red"))), "unknown key 'colour'"),
        (_bytes(_document(_decision(), _decision())), "k_p0 is decided twice"),
        (_bytes(_document(reviewer=7)), "reviewer is 7, not a string"),
        (_bytes(_document(decisions={})), "decisions is object, not a JSON array"),
    ],
)
def test_a_bad_review_file_is_refused_in_one_line_naming_it(document: bytes, message: str) -> None:
    with pytest.raises(ReviewError, match=r"^r\.json: ") as refused:
        parse_review(document, "r.json")
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def _review(uri: str, *decisions: dict[str, Any]) -> Any:
    return parse_review(_bytes(_document(*decisions)), uri)


def test_files_that_disagree_are_conflicts_never_resolved_and_agreement_is_kept() -> None:
    a = _review("a.json", _decision("k_p0", "reject"), _decision("k_p1", "accept"), _decision("k_p2", "accept"))
    b = _review("b.json", _decision("k_p0", "accept"), _decision("k_p1", "accept", time=None),
                _decision("k_p3", "reject", reason=None))  # fmt: skip
    combined = combine_reviews([a, b])
    assert [c.sample_id for c in combined.conflicts] == ["k_p0"]
    assert combined.conflicts[0].to_json()["decisions"] == [
        {"file": "a.json", "shard": "shard-000001", "decision": "reject"},
        {"file": "b.json", "shard": "shard-000001", "decision": "accept"},
    ]
    assert sorted(combined.decisions["shard-000001"]) == ["k_p1", "k_p2", "k_p3"]
    assert combined.size == 3
    # another shard or model for the same person is a conflict too: not the same label
    c = _review("c.json", _decision("k_p1", "accept", shard="shard-000002"), _decision("k_p2", "accept", model_id="m"))
    assert [x.sample_id for x in combine_reviews([a, c]).conflicts] == ["k_p1", "k_p2"]


def test_the_digest_is_what_decisions_do_to_rows() -> None:
    a = _review("a.json", _decision("k_p0", "reject"), _decision("k_p1", "accept"))
    same = _review("b.json", _decision("k_p1", "accept", time=None), _decision("k_p0", "reject", reason="other"))
    other = _review("c.json", _decision("k_p0", "accept"), _decision("k_p1", "accept"))
    assert combine_reviews([a]).digest() == combine_reviews([same]).digest(), "order, reasons and times change no row"
    assert combine_reviews([a]).digest() != combine_reviews([other]).digest()
    assert combine_reviews([]).digest() is None


def test_the_label_run_identity_and_its_browser_key() -> None:
    summary = {"config_hash": "abc123", "pipeline_version": "0.1.0"}
    assert label_run_of("/data/labels/", summary) == label_run_of("/data/labels", summary)
    assert label_run_of("s3://bucket/labels/", summary).labels == "s3://bucket/labels"
    assert label_run_of("/data/labels", None) == LabelRun("/data/labels", None, None)
    key = browser_storage_key(RUN)
    assert key.startswith(f"{REVIEW_FORMAT}/v{REVIEW_VERSION}/")
    assert key != browser_storage_key(LabelRun("/data/labels", "abc124", "0.1.0"))


def _scored(thresholds: Any) -> pa.Table:
    """Four stored rows rescored: k_p0 and k_p1 pass the default filter, k_p2 fails it (keypoints too weak)."""
    rows = [stored_label_row(0, 1.0), stored_label_row(1, 1.0), stored_label_row(2, 0.1), stored_label_row(3, 1.0)]
    return rescore_table(conform(table_from_rows(rows, ANNOTATION_SCHEMA), ANNOTATION_SCHEMA), thresholds)


def test_decisions_on_rows_reject_accept_and_count() -> None:
    thresholds = default_thresholds()
    table = _scored(thresholds)
    assert table["quality_tier"].to_pylist()[2] == "reject"
    decisions = {
        "k_p0": Decision("k_p0", "shard-000001", "sha256:00", "reject", "wrong_pose"),
        "k_p2": Decision("k_p2", "shard-000001", None, "accept"),
        "k_p3": Decision("k_p3", "shard-000001", "another-model", "reject"),  # not this label: not applied
        "k_p9": Decision("k_p9", "shard-000001", None, "reject"),  # no such person
    }
    reviewed, counts = apply_decisions(table, decisions, thresholds)
    rows = reviewed.to_pylist()
    assert [r["review"] for r in rows] == ["reject", None, "accept", None]
    assert rows[0]["quality_tier"] == "reject"
    assert rows[0]["reasons"] == [REVIEWED_REJECT]
    assert rows[2]["quality_tier"] == graded_tier(rows[2]["confidence"], thresholds)
    assert rows[2]["reasons"] == []
    assert rows[1] == table.to_pylist()[1], "an unreviewed row is left as scored"
    assert counts == {"applied_reject": 1, "applied_accept": 1, "accept_over_filter": 1, "not_found": 2}
    assert reviewed.schema == table.schema


def test_reviews_in_the_rows_are_carried_and_a_new_decision_replaces_them() -> None:
    thresholds = strict_thresholds()
    earlier = {"k_p0": Decision("k_p0", "shard-000001", None, "reject"),
               "k_p1": Decision("k_p1", "shard-000001", None, "accept")}  # fmt: skip
    first, _ = apply_decisions(_scored(thresholds), earlier, thresholds)
    again = rescore_table(first, default_thresholds())  # a later refilter scores the rows anew...
    assert again["reasons"].to_pylist()[0] == []
    carried, counts = apply_decisions(again, {"k_p1": Decision("k_p1", "shard-000001", None, "reject")}, thresholds)
    rows = carried.to_pylist()
    assert [r["review"] for r in rows] == ["reject", "reject", None, None]  # ...and the reviews hold
    assert rows[0]["reasons"] == [REVIEWED_REJECT]
    assert counts == {"carried_reject": 1, "applied_reject": 1, "replaced_earlier": 1}
    untouched, none = apply_decisions(_scored(thresholds), {}, thresholds)
    assert none == {}
    assert untouched["review"].to_pylist() == [None] * 4


def test_an_accept_never_keeps_a_label_that_is_not_finite() -> None:
    thresholds = default_thresholds()
    table = _scored(thresholds)
    reasons = table["reasons"].to_pylist()
    reasons[1] = [NON_FINITE_OUTPUT]
    tiers = ["gold", "reject", "reject", "gold"]
    table = table.set_column(table.schema.get_field_index("reasons"), ANNOTATION_SCHEMA.field("reasons"),
                             pa.array(reasons, ANNOTATION_SCHEMA.field("reasons").type))  # fmt: skip
    table = table.set_column(table.schema.get_field_index("quality_tier"), ANNOTATION_SCHEMA.field("quality_tier"),
                             pa.array(tiers, pa.string()))  # fmt: skip
    reviewed, counts = apply_decisions(table, {"k_p1": Decision("k_p1", "shard-000001", None, "accept")}, thresholds)
    assert reviewed["quality_tier"].to_pylist()[1] == "reject"
    assert reviewed["reasons"].to_pylist()[1] == [NON_FINITE_OUTPUT]
    assert counts == {"applied_accept_not_kept": 1}


def test_graded_tier_is_the_tier_rule_without_the_gates() -> None:
    t = default_thresholds()
    assert [graded_tier(c, t) for c in (0.9, t.gold_min, 0.5, t.silver_min, 0.2, 0.01, float("nan"))] == [
        "gold", "gold", "silver", "silver", "bronze", "bronze", "bronze",
    ]  # fmt: skip


def test_applied_counts_reconcile_with_the_decisions() -> None:
    record = {"decisions": {"accept": 2, "reject": 3}, "not_in_input_shards": 1}
    counts = {"applied_accept": 2, "applied_reject": 1, "not_found": 1}
    assert with_applied(record, counts)["reconciled"]
    assert not with_applied(record, {"applied_accept": 2})["reconciled"]
