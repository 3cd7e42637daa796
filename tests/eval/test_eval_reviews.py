"""dpmesh-eval review=<file...> (DirectRunner) on planted label outputs: the reviewed good-label rates per tier, band
and stratum with their Wilson intervals, hand-checked; the population-weighted rate of a stratified draw; counts that
reconcile (conflicts, persons not found, another model, shards the labels lack); eval without ground truth reading
only the shards the decisions name; both documents with ground truth and reviews; a calibration fitted from a review
that rejects every person with a high reprojection error ordering persons as planted; a review of another label run
refused; hostile review files refused in one line."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dpmesh_core.calibration import REVIEW_CUT, REVIEW_OUTCOME, REVIEW_TARGET, ConfidenceCalibration
from dpmesh_core.confidence import ConfidenceSignals
from pipelines.common.label_filter import load_calibration
from pipelines.common.reviews import PERSONS_MATCH, SAME_RUN, label_run_of, review_header
from pipelines.config import ConfigError, EvalJobConfig, compose_config
from pipelines.config.label import FilterConfig
from pipelines.config.storage import StorageConfig
from pipelines.eval.job import report as eval_report
from pipelines.eval.job import run as evaluate
from pipelines.eval.quality import spearman
from pipelines.eval.review_rates import Z95, wilson_interval
from schemas.annotations import ANNOTATION_SCHEMA
from tests.eval.synthetic import SIGNAL_COLUMNS, shard_rows


MODEL = "sha256:planted"
GOLD_BAND, LOW_BAND = "0.75-1.00|none", "0.00-0.25|heavy"
SUMMARY = {"config_hash": "0123456789abcdef", "pipeline_version": "0.1.0"}


def _sid(shard: int, i: int) -> str:
    return f"img{shard:06d}-{i:06d}_p0"  # the ids of tests.eval.synthetic.shard_rows


def _set(table: pa.Table, name: str, values: Any) -> pa.Table:
    field = ANNOTATION_SCHEMA.field(name)
    column = pa.array(values, field.type)
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), field, column)
    return table.append_column(field, column)


def _write_labels(root: Path, columns: dict[int, dict[str, Any]], persons: int) -> tuple[Path, Path]:
    """A label output of ``len(columns)`` shards of ``persons`` persons (`shard_rows`, then ``columns[shard]``
    replacing columns), model ``MODEL``, reject-tier rows in ``rejected/``; and its ground truth (MPJPE known)."""
    labels = root / "labels"
    for folder in ("annotations", "rejected"):
        (labels / folder).mkdir(parents=True)
    truths = []
    for shard, replaced in columns.items():
        table, truth = shard_rows(shard, persons)
        table = _set(table, "model_id", [MODEL] * persons)
        for name, values in replaced.items():
            table = _set(table, name, values)
        rejected = pc.equal(table["quality_tier"], "reject")
        pq.write_table(table.filter(pc.invert(rejected)), labels / "annotations" / f"shard-{shard:06d}.parquet")
        pq.write_table(table.filter(rejected), labels / "rejected" / f"shard-{shard:06d}.parquet")
        truths.append(truth)
    (labels / "_summary.json").write_text(json.dumps(SUMMARY))
    pq.write_table(pa.concat_tables(truths), root / "gt.parquet")
    return labels, root / "gt.parquet"


PLANTED_TIERS = ["gold"] * 6 + ["bronze"] * 3 + ["reject"] * 3


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two shards of 12 persons: persons 0-5 gold, confident (0.80-0.90), unoccluded (stratum 0.75-1.00|none);
    6-8 bronze and 9-11 reject, at confidence 0.1 and heavily occluded (0.00-0.25|heavy)."""
    planted_columns = {
        "confidence": [0.80 + 0.02 * i for i in range(6)] + [0.1] * 6,
        "quality_tier": PLANTED_TIERS,
        "occlusion_level": ["none"] * 6 + ["heavy"] * 6,
    }
    return _write_labels(tmp_path_factory.mktemp("planted"), {0: planted_columns, 1: planted_columns}, 12)


def _decision(shard: int, i: int, decision: str, stratum: str | None, model: str = MODEL) -> dict[str, Any]:
    return {"sample_id": _sid(shard, i), "shard": f"shard-{shard:06d}", "model_id": model, "decision": decision,
            "reason": "misaligned" if decision == "reject" else None, "time": None, "stratum": stratum}  # fmt: skip


PLANTED_SAMPLE = {"seed": 0, "size": 8, "strata": {GOLD_BAND: {"rows": 100, "drawn": 4},
                                                    LOW_BAND: {"rows": 300, "drawn": 4}}}  # fmt: skip


def _review(
    path: Path,
    labels: Path,
    decisions: list[dict[str, Any]],
    sample: Any = None,
    reviewer: str = "ann",
    run: dict[str, Any] | None = None,
) -> Path:
    """A review.json as the page saves it: the labels' identity (unless ``run`` replaces fields), the draw."""
    identity = {**label_run_of(str(labels), SUMMARY).to_json(), **(run or {})}
    header = review_header(label_run_of(str(labels), SUMMARY), PLANTED_SAMPLE if sample is None else sample)
    document = {**header, "label_run": identity, "reviewer": reviewer, "saved_at": "2026-05-01T10:00:00.000Z",
                "decisions": decisions}  # fmt: skip
    path.write_text(json.dumps(document))
    return path


def _eval(labels: Path, output: Path, *more: str) -> dict[str, Any]:
    keys = [f"input.labels={labels}", f"output={output}", "log_level=WARNING", *more]
    doc: dict[str, Any] = evaluate(compose_config("dpmesh_eval", keys, EvalJobConfig))
    return doc


def _planted_reviews(tmp_path: Path, labels: Path) -> tuple[Path, Path]:
    """Ann's and Bob's reviews of one draw (module docstring of the rates test)."""
    ann = _review(tmp_path / "ann.json", labels, [
        *(_decision(0, i, d, GOLD_BAND) for i, d in enumerate(["accept", "accept", "accept", "reject"])),
        _decision(0, 6, "accept", LOW_BAND), _decision(0, 7, "reject", LOW_BAND), _decision(0, 9, "reject", LOW_BAND),
        _decision(1, 0, "accept", GOLD_BAND),  # Bob rejects this one: a conflict, left out
        _decision(7, 0, "accept", GOLD_BAND),  # a shard the labels lack
        _decision(0, 99, "accept", GOLD_BAND),  # no such person in its shard
        _decision(1, 1, "accept", GOLD_BAND, model="sha256:another"),  # labeled by another model
    ])  # fmt: skip
    bob = _review(tmp_path / "bob.json", labels, [_decision(1, 0, "reject", GOLD_BAND),
                                                  _decision(0, 0, "accept", GOLD_BAND)], reviewer="bob")  # fmt: skip
    return ann, bob


def _wilson_by_hand(k: int, n: float) -> tuple[float, float]:
    """The Wilson score interval written out: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    z = 1.959963984540054
    p = k / n
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def test_the_wilson_interval_is_the_textbook_one() -> None:
    assert round(Z95, 2) == 1.96
    assert wilson_interval(3, 4) == pytest.approx((0.3006, 0.9544), abs=1e-4)  # 3 of 4, worked by hand
    assert wilson_interval(3, 4) == pytest.approx(_wilson_by_hand(3, 4))
    low, high = wilson_interval(0, 10)  # type: ignore[misc]
    assert low == 0.0
    assert 0.2 < high < 0.35, "not [0, 0] at p = 0, as the normal approximation is"
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)  # type: ignore[index]
    assert wilson_interval(0, 0) is None


def test_review_gives_the_hand_checked_rates_per_tier_band_and_stratum(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    """Ann decides 4 gold persons (3 accepted) and 3 low-confidence ones (bronze accept, bronze reject, reject
    reject; a fourth drawn one skipped), one person Bob decides otherwise, and three persons that cannot be measured.
    The draw: 100 rows in the gold stratum, 300 in the low one, 4 drawn from each."""
    labels, _ = planted
    ann, bob = _planted_reviews(tmp_path, labels)
    doc = _eval(labels, tmp_path / "eval", f"review=[{ann},{bob}]")
    assert set(doc) == {"reviews"}, "no ground truth: no eval.json document"
    reviews = doc["reviews"]
    assert reviews == json.loads((tmp_path / "eval" / "eval_reviews.json").read_text())
    assert not (tmp_path / "eval" / "eval.json").exists()
    assert reviews["counts"] == {
        "decisions": 13, "persons": 11, "conflicts": 1, "agreed": 10, "agreed_accept": 7, "agreed_reject": 3,
        "not_in_input": 1, "not_found": 1, "other_model": 1, "measured": 7, "accept": 4, "reject": 3,
        "weighted": 7, "unweighted": 0,
    }  # fmt: skip
    assert reviews["reconciled"] is True
    assert [c["sample_id"] for c in reviews["conflicts"]] == [_sid(1, 0)]
    assert [f["matched"] for f in reviews["files"]] == [SAME_RUN, SAME_RUN]

    def rate(group: dict[str, Any], k: int, n: int) -> None:
        assert (group["n"], group["accept"], group["reject"]) == (n, k, n - k)
        assert group["rate"] == pytest.approx(k / n)
        assert group["interval"] == pytest.approx(list(_wilson_by_hand(k, n)))

    rate(reviews["overall"], 4, 7)
    assert set(reviews["by_tier"]) == {"gold", "bronze", "reject"}
    rate(reviews["by_tier"]["gold"], 3, 4)
    assert reviews["by_tier"]["gold"]["rate"] == 0.75
    rate(reviews["by_tier"]["bronze"], 1, 2)
    rate(reviews["by_tier"]["reject"], 0, 1)
    assert set(reviews["by_band"]) == {"0.00-0.25", "0.75-1.00"}
    rate(reviews["by_band"]["0.75-1.00"], 3, 4)
    rate(reviews["by_band"]["0.00-0.25"], 1, 3)
    assert set(reviews["by_stratum"]) == {LOW_BAND, GOLD_BAND}
    rate(reviews["by_stratum"][GOLD_BAND], 3, 4)
    rate(reviews["by_stratum"][LOW_BAND], 1, 3)
    assert reviews["by_stratum"][LOW_BAND]["population"] == 300
    assert reviews["by_stratum"][LOW_BAND]["drawn"] == 4, "one drawn person skipped: no decision"

    # Weighted back to the output: a gold-stratum person stands for 100 / 4 rows, a low one for 300 / 3.
    weighted = reviews["overall"]["weighted"]
    assert weighted["rate"] == pytest.approx((100 * 3 / 4 + 300 * 1 / 3) / 400)  # 0.4375, not 4/7
    assert weighted["rows"] == pytest.approx(400)
    n_eff = (4 * 25 + 3 * 100) ** 2 / (4 * 25**2 + 3 * 100**2)
    assert weighted["n_effective"] == pytest.approx(n_eff)
    assert weighted["interval"] == pytest.approx(list(_wilson_by_hand(0.4375 * n_eff, n_eff)))  # type: ignore[arg-type]
    gold = reviews["by_tier"]["gold"]
    assert gold["weighted"]["rate"] == 0.75, "one stratum: the plain rate"
    assert gold["weighted"]["interval"] == pytest.approx(gold["interval"]), "one stratum: the plain interval"
    assert reviews["population"] == {"rows": 400, "covered": 400, "strata": 2, "strata_reviewed": 2}

    markdown = (tmp_path / "eval" / "eval.md").read_text()
    assert "| tier gold | 4 | 3 | 0.750 |" in markdown
    shown = [line.split(" | ")[0] for line in markdown.splitlines() if line.startswith("| tier") or
             line.startswith("| band")]  # fmt: skip
    assert shown == ["| tier gold", "| tier bronze", "| tier reject", "| band 0.00-0.25", "| band 0.75-1.00"]
    assert "stratum 0.75-1.00\\|none" in markdown, "a stratum's | does not split the table"
    printed = eval_report(doc, compose_config("dpmesh_eval", [f"input.labels={labels}", f"output={tmp_path / 'eval'}",
                                                               f"review={ann}"], EvalJobConfig))  # fmt: skip
    assert "| tier gold | 4 | 3 | 0.750 |" in printed
    assert "eval_reviews.json" in printed


def test_without_ground_truth_only_the_shards_the_decisions_name_are_read(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    labels = tmp_path / "labels"
    shutil.copytree(planted[0], labels)
    (labels / "annotations" / "shard-000005.parquet").write_bytes(b"not parquet: never read")
    review = _review(tmp_path / "r.json", labels, [_decision(0, 0, "accept", GOLD_BAND),
                                                    _decision(1, 9, "reject", LOW_BAND)])  # fmt: skip
    reviews = _eval(labels, tmp_path / "eval", f"review={review}")["reviews"]
    assert reviews["counts"]["measured"] == 2
    assert reviews["by_tier"]["reject"]["n"] == 1, "rejected/ rows are found too"


def test_with_ground_truth_and_reviews_both_are_reported_and_stale_documents_go(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    labels, gt = planted
    ann, bob = _planted_reviews(tmp_path, labels)
    output = tmp_path / "eval"
    doc = _eval(labels, output, f"input.ground_truth={gt}", f"review=[{ann},{bob}]", "fit_confidence=true",
                "error_metric=mpjpe_mm")  # fmt: skip
    assert doc["counts"]["matched"] == 24
    assert doc["reviews"]["overall"]["n"] == 7
    assert doc["calibration"]["error_metric"] == "mpjpe_mm", "ground truth, when given, is what is fitted"
    assert "calibration" not in doc["reviews"]
    markdown = (output / "eval.md").read_text()
    assert "| all | 24 |" in markdown
    assert "| tier gold | 4 | 3 | 0.750 |" in markdown
    assert (output / "eval_persons.json").exists()

    _eval(labels, output, f"review={ann}")  # reviews only, into the same output
    assert not (output / "eval.json").exists(), "an earlier run's eval.json would be read as this run's"
    assert not (output / "eval_persons.json").exists()
    _eval(labels, output, f"input.ground_truth={gt}")
    assert not (output / "eval_reviews.json").exists()
    assert (output / "eval.json").exists()


@pytest.fixture(scope="module")
def reprojection_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, float]]]:
    """Three shards of 20 persons whose reprojection error spreads over 0.005-0.2 (of the box) and whose pose latent
    is noise over 4-12 (above its soft point 7 it lowers the fixed confidence); the stored confidence is noise."""
    rng = np.random.default_rng(11)
    columns, persons = {}, {}
    for shard in range(3):
        reproj = rng.permutation(np.linspace(0.005, 0.2, 20)) + shard * 1e-4
        vposer = rng.uniform(4.0, 12.0, 20)
        columns[shard] = {
            "reproj_err_norm": reproj, "vposer_z_norm": vposer, "box_size_px": np.full(20, 300.0),
            "betas_absmax": np.full(20, 1.0), "joint_consistency_mm": np.full(20, 20.0),
            "confidence": rng.uniform(0.0, 1.0, 20), "quality_tier": ["silver"] * 20, "occlusion_level": ["none"] * 20,
        }  # fmt: skip
        persons.update({_sid(shard, i): {"reproj": float(np.float32(reproj[i]))} for i in range(20)})
    labels, _ = _write_labels(tmp_path_factory.mktemp("reprojection"), columns, 20)
    return labels, persons


def test_a_calibration_fitted_from_a_review_orders_persons_as_planted(
    reprojection_set: tuple[Path, dict[str, dict[str, float]]], tmp_path: Path
) -> None:
    """The reviewer rejects every person whose reprojection error is above 0.08 of the box and accepts the others."""
    labels, persons = reprojection_set
    decisions = [
        {**_decision(int(sid[3:9]), int(sid[10:16]), "reject" if p["reproj"] > 0.08 else "accept", None)}
        for sid, p in sorted(persons.items())
    ]
    review = _review(tmp_path / "review.json", labels, decisions, sample={})
    output = tmp_path / "eval"
    reviews = _eval(labels, output, f"review={review}", "fit_confidence=true")["reviews"]
    assert reviews["overall"]["weighted"] is None, "no draw in the file: nothing to weight by"
    assert reviews["counts"]["unweighted"] == 60

    path = output / "confidence_calibration.json"
    calibration = load_calibration(FilterConfig(calibration=str(path)), StorageConfig())  # as label / refilter read it
    assert calibration is not None
    assert calibration == ConfidenceCalibration.from_json_bytes(path.read_bytes())
    assert (calibration.error_metric, calibration.good_error_mm) == (REVIEW_OUTCOME, REVIEW_CUT)
    document = json.loads(path.read_text())
    assert document["target"] == REVIEW_TARGET
    assert document["fit"]["outcome"]["files"] == [{"uri": str(review), "sha256": reviews["files"][0]["sha256"]}]
    assert document["fit"]["n"] == 60
    assert document["fit"]["n_good"] == sum(p["reproj"] <= 0.08 for p in persons.values())
    assert reviews["calibration"]["sha256"] == calibration.sha256
    weights = {t.signal: t.weight for t in calibration.terms}
    assert weights["reproj_err_norm"] > 0
    assert weights["reproj_err_norm"] > 10 * weights["vposer_z_norm"], "the planted signal, not the noise"

    table = pa.concat_tables([pq.read_table(p) for p in sorted(labels.glob("*/*.parquet"))])
    signals = [ConfidenceSignals(**{name: row[name] for name in SIGNAL_COLUMNS}) for row in table.to_pylist()]
    fitted = np.array([calibration.confidence(s) for s in signals])
    planted_order = -np.array([persons[sid]["reproj"] for sid in table["sample_id"].to_pylist()])
    assert spearman(fitted, planted_order) > 0.95
    assert spearman(table["confidence"].to_numpy(), planted_order) < 0.5, "the stored confidence did not know"
    assert document["fit"]["auc_after_in_sample"] > 0.95
    # Read back and written again, the file is the same bytes: the review target survives the round trip.
    assert calibration.to_json_bytes() == path.read_bytes()


def test_a_review_of_another_label_run_is_refused_unless_its_persons_are_here(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    labels, _ = planted
    elsewhere = {"labels": "/elsewhere/labels", "config_hash": "fedcba9876543210"}
    moved = _review(tmp_path / "moved.json", labels, [_decision(0, 0, "accept", GOLD_BAND)], run=elsewhere)
    reviews = _eval(labels, tmp_path / "eval", f"review={moved}")["reviews"]
    assert reviews["files"][0]["matched"] == PERSONS_MATCH
    both = [_decision(0, 0, "accept", GOLD_BAND), _decision(0, 99, "reject", GOLD_BAND)]
    other = _review(tmp_path / "other.json", labels, both, run=elsewhere)
    with pytest.raises(ConfigError, match=r"reviewed the labels '/elsewhere/labels'.*1 of its 2 persons"):
        _eval(labels, tmp_path / "eval2", f"review={other}")
    assert not (tmp_path / "eval2").exists(), "refused before anything is written"


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"strata": {"bogus": {"rows": 1, "drawn": 1}}}, 'sample.strata has "bogus", not a review stratum'),
        (
            {"strata": {GOLD_BAND: {"rows": -1, "drawn": 0}}},
            f"sample.strata['{GOLD_BAND}'].rows is -1, not an integer",
        ),
        ({"strata": {GOLD_BAND: {"rows": True, "drawn": 0}}}, f"sample.strata['{GOLD_BAND}'].rows is true, not an"),
        ({"strata": {GOLD_BAND: {"rows": 1}}}, f"sample.strata['{GOLD_BAND}'] lacks 'drawn'"),
        ({"strata": [1]}, "sample.strata is array, not a JSON object"),
        ({"seed": 0, "extra": 1}, "sample has unknown key 'extra'"),
    ],
)
def test_a_hostile_review_sample_is_refused_in_one_line(
    planted: tuple[Path, Path], tmp_path: Path, sample: dict[str, Any], expected: str
) -> None:
    review = _review(tmp_path / "r.json", planted[0], [_decision(0, 0, "accept", GOLD_BAND)], sample=sample)
    with pytest.raises(ConfigError, match="^" + re.escape(f"review={review}: {expected}")) as raised:
        _eval(planted[0], tmp_path / "eval", f"review={review}")
    assert "\n" not in str(raised.value)


def test_reviews_of_different_draws_and_nothing_to_measure_are_refused(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    labels = planted[0]
    a = _review(tmp_path / "a.json", labels, [_decision(0, 0, "accept", GOLD_BAND)])
    other_output = {"strata": {GOLD_BAND: {"rows": 120, "drawn": 4}}}
    b = _review(tmp_path / "b.json", labels, [_decision(0, 1, "accept", GOLD_BAND)], sample=other_output)
    with pytest.raises(ConfigError, match=r"give the stratum 0\.75-1\.00\|none 100 and 120 rows"):
        _eval(labels, tmp_path / "eval", f"review=[{a},{b}]")
    with pytest.raises(ConfigError, match=r"nothing to measure the labels against"):
        _eval(labels, tmp_path / "eval")
    with pytest.raises(ConfigError, match=r"no such file"):
        _eval(labels, tmp_path / "eval", f"review={tmp_path / 'missing.json'}")
    nobody = _review(tmp_path / "nobody.json", labels, [_decision(0, 99, "accept", GOLD_BAND)])
    with pytest.raises(ConfigError, match=r"none of the 1 persons the review files agree on was found"):
        _eval(labels, tmp_path / "eval", f"review={nobody}")
