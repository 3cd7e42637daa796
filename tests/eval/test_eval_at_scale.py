"""dpmesh-eval as a pipeline (issue 23): per-bucket joins, vectorised errors, mergeable summaries. On small outputs
its figures equal the exact in-process computation (a per-person reference loop, numpy means and medians, the
exact confidence quality); past its bounds, Spearman and AUSE come from a sample and stay within the bound it states.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpmesh_core.calibration import ConfidenceCalibration
from dpmesh_core.flip import pa_mpjpe_mm
from pipelines.config import EvalJobConfig, compose_config
from pipelines.eval import metrics as m
from pipelines.eval.document import parse_document
from pipelines.eval.ground_truth import GroundTruthRowError, person_from_row
from pipelines.eval.ground_truth_table import GroundTruthTable, read_table
from pipelines.eval.job import run as evaluate
from pipelines.eval.label_columns import LabelColumns
from pipelines.eval.person_errors import MatchedErrors
from pipelines.eval.quality import confidence_quality
from pipelines.eval.summary import EvalPartial, SummaryLimits, finish
from tests.eval.synthetic import write_label_output


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 shards of 15 persons (accepted and rejected files), their ground truth in two files."""
    root = tmp_path_factory.mktemp("scale")
    return write_label_output(root, 12, 15, seed=3)


def _cfg(labels: Path, ground_truth: Path, output: Path, *extra: str) -> EvalJobConfig:
    return compose_config(
        "dpmesh_eval",
        [f"input.labels={labels}", f"input.ground_truth={ground_truth}", f"output={output}", "log_level=WARNING",
         *extra],
        EvalJobConfig,
    )  # fmt: skip


# --- the exact reference: what dpmesh-eval computed in one process, person by person -------------------------------


def _reference(labels: Path, ground_truth: Path, steps: int = 20) -> dict[str, Any]:
    """Label rows in reading order joined by sample_id; per-person MPJPE and PA-MPJPE with the per-person functions;
    means and medians with numpy; the confidence quality on every evaluated person."""
    rows = [r for folder in ("annotations", "rejected") for p in sorted((labels / folder).glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]  # fmt: skip
    gt = {r["sample_id"]: np.asarray(r["joints_3d"], np.float64).reshape(24, 3)
          for p in sorted(ground_truth.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}  # fmt: skip
    persons = []
    for row in rows:
        g = gt[row["sample_id"]]
        p = np.asarray(row["joints_3d"], np.float64).reshape(24, 3)
        mpjpe = float(np.linalg.norm((p - p[0]) - (g - g[0]), axis=1).mean() * 1000.0)
        persons.append({
            "sample_id": row["sample_id"], "tier": row["quality_tier"], "confidence": row["confidence"],
            "occlusion": row["occlusion_level"], "mpjpe_mm": mpjpe, "pa_mpjpe_mm": pa_mpjpe_mm(g, p),
        })  # fmt: skip
    groups = {"all": persons}
    for key, name in (("tier", "by_tier"), ("occlusion", "by_occlusion_level")):
        for value in sorted({p[key] for p in persons}):
            groups[f"{name}.{value}"] = [p for p in persons if p[key] == value]
    figures = {
        f"{group}.{stat}{metric}": fn([p[metric] for p in members])
        for group, members in groups.items()
        for metric in ("mpjpe_mm", "pa_mpjpe_mm")
        for stat, fn in (("", np.mean), ("median_", np.median))
    }
    quality = {
        metric: confidence_quality(
            np.array([p["confidence"] for p in persons]), np.array([p[metric] for p in persons]), metric, steps
        )
        for metric in ("mpjpe_mm", "pa_mpjpe_mm")
    }
    return {"persons": persons, "figures": figures, "quality": quality}


def _group_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    if name == "all":
        return dict(doc["overall"])
    section, value = name.split(".", 1)
    return dict(doc[section][value])


@pytest.mark.parametrize("buckets", ["one", "several"])
def test_the_pipeline_equals_the_exact_computation_on_small_outputs(
    corpus: tuple[Path, Path], tmp_path: Path, buckets: str
) -> None:
    """Means, medians, counts and every person's errors equal the reference; Spearman and the sparsification curve
    (so AUSE) too, as the sample holds every person: with one bucket and with the ground truth in seven."""
    labels, ground_truth = corpus
    extra = ["bucket_persons=30"] if buckets == "several" else []
    doc = evaluate(_cfg(labels, ground_truth, tmp_path / "eval", *extra))
    ref = _reference(labels, ground_truth)
    n = len(ref["persons"])
    assert doc["counts"] == {
        "label_rows": n, "ground_truth_persons": n, "ground_truth_invalid": 0, "matched": n, "unmatched_labels": 0,
        "unmatched_ground_truth": 0, "non_finite": 0, "no_metric": 0, "evaluated": n,
    }  # fmt: skip
    for key, expected in ref["figures"].items():
        group, figure = key.rsplit(".", 1)
        assert _group_of(doc, group)[figure] == pytest.approx(expected, rel=1e-12, abs=1e-12), key
    for metric, expected in ref["quality"].items():
        got = doc["confidence_quality"][metric]
        assert expected is not None
        assert got["spearman"] == pytest.approx(expected.spearman, rel=1e-12)
        assert got["ause_mm"] == pytest.approx(expected.ause_mm, rel=1e-9, abs=1e-12)
        curve = [p.mean_error_mm for p in expected.sparsification]
        assert got["sparsification"]["mean_error_mm"] == pytest.approx(curve)
        assert got["sample"] == {"persons": n, "of": n, "exact": True, "spearman_bound": 0.0, "ause_bound_mm": 0.0}
    assert doc["estimates"]["medians"]["estimated"] == 0
    listed = json.loads((tmp_path / "eval" / "eval_persons.json").read_text())["persons"]
    assert [p["sample_id"] for p in listed] == [p["sample_id"] for p in ref["persons"]], "label order"
    for got, expected in zip(listed, ref["persons"], strict=True):
        assert got["mpjpe_mm"] == pytest.approx(expected["mpjpe_mm"], rel=1e-12)
        assert got["pa_mpjpe_mm"] == pytest.approx(expected["pa_mpjpe_mm"], rel=1e-12, abs=1e-9)
    parts = sorted((tmp_path / "eval" / "persons").glob("part-*.parquet"))
    assert len(parts) == (1 if buckets == "one" else math.ceil(n / 30))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert sorted(table["sample_id"].to_pylist()) == sorted(p["sample_id"] for p in ref["persons"])
    assert not (tmp_path / "eval" / "_work").exists(), "the run's work files are removed"
    parse_document((tmp_path / "eval" / "eval.json").read_bytes())


def test_join_keys_meet_in_one_bucket_whatever_the_key_kind(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    """Ground truth given by image key + person, or by image path, matches the same persons in many buckets as in
    one (the bucket is a function of the image, or of the file name)."""
    labels, ground_truth = corpus
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(ground_truth.glob("*.parquet"))])
    keys = [s.removesuffix("_p0") for s in rows["sample_id"].to_pylist()]
    variants = {
        "image_key": {"image_key": keys, "person_idx": [0] * len(keys)},
        "image_path": {"image_path": [f"corpus/{k}.jpg" for k in keys], "person_idx": [0] * len(keys)},
    }
    for name, ids in variants.items():
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({**ids, "joints_3d": rows["joints_3d"]}), tmp_path / name / "gt.parquet")
        one = evaluate(_cfg(labels, tmp_path / name, tmp_path / f"{name}-one"))
        many = evaluate(_cfg(labels, tmp_path / name, tmp_path / f"{name}-many", "bucket_persons=25"))
        assert one["counts"]["matched"] == many["counts"]["matched"] == len(keys), name
        assert many["overall"] == pytest.approx(one["overall"], rel=1e-12)


def test_a_large_evaluation_lists_its_persons_in_parquet_only(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    labels, ground_truth = corpus
    doc = evaluate(_cfg(labels, ground_truth, tmp_path / "eval", "persons_json_max=10", "bucket_persons=50"))
    assert doc["outputs"] == {"persons_parquet": "persons/", "persons_json": None}
    assert not (tmp_path / "eval" / "eval_persons.json").exists()
    rows = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "eval" / "persons").glob("*.parquet"))
    assert rows == doc["counts"]["matched"]


def test_the_calibration_fits_a_bounded_stratified_sample_and_says_so(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    labels, ground_truth = corpus
    doc = evaluate(_cfg(labels, ground_truth, tmp_path / "eval", "fit_confidence=true", "error_metric=mpjpe_mm",
                        "calibration.good_error_mm=100", "calibration.max_persons=60"))  # fmt: skip
    sample = doc["calibration"]["fit"]["sample"]
    n = doc["counts"]["matched"]
    assert (sample["persons"], sample["of"], sample["exact"]) == (60, n, False)
    assert sum(taken for taken, _ in sample["by_tier"].values()) == 60
    for taken, of in sample["by_tier"].values():
        assert abs(taken - 60 * of / n) < 1.0, "each tier in proportion to its size"
    assert "stratified by quality_tier" in sample["method"]
    written = ConfidenceCalibration.from_json_bytes((tmp_path / "eval" / "confidence_calibration.json").read_bytes())
    assert written.fit["n"] <= 60
    assert written.fit["sample"] == sample


def test_a_dry_run_prints_the_plan_and_writes_nothing(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    labels, ground_truth = corpus
    plan = evaluate(_cfg(labels, ground_truth, tmp_path / "eval", "runner.dry_run=true"))
    names = [step["name"] for step in plan["steps"]]
    for step in ("ListLabelGroups", "SplitByBucket", "GroupByBucket", "JoinBuckets", "MergeSummaries"):
        assert step in names
    assert not (tmp_path / "eval").exists()


# --- pieces ----------------------------------------------------------------------------------------------------------


def test_batched_errors_equal_the_per_person_functions() -> None:
    rng = np.random.default_rng(5)
    gt = rng.normal(size=(300, 24, 3)) * 0.3
    pred = gt @ np.linalg.qr(rng.normal(size=(3, 3)))[0].T * 1.1 + rng.normal(size=(300, 24, 3)) * 0.02
    pred[7] = 0.5  # degenerate: every joint at one point
    pred[9, 3, 1] = np.nan
    batched = m.pa_mpjpe_mm_batch(pred, gt)
    reference = [pa_mpjpe_mm(g, p) for p, g in zip(pred, gt, strict=True)]
    assert np.array_equal(batched, np.array(reference), equal_nan=True)
    mpjpe = m.mpjpe_mm_batch(pred, gt)
    assert math.isnan(mpjpe[9])
    assert mpjpe[3] == pytest.approx(float(np.linalg.norm((pred[3] - pred[3, 0]) - (gt[3] - gt[3, 0]), axis=1).mean()
                                           * 1000.0), rel=1e-15)  # fmt: skip


def test_ground_truth_read_as_columns_equals_the_row_by_row_check() -> None:
    """Clean rows are taken as arrays; every other row goes through ``person_from_row``: same persons, same problems
    with the same messages, in row order."""
    good = list(np.linspace(0.0, 1.0, 72))
    rows = [
        {"sample_id": "a_p0", "joints_3d": good},
        {"sample_id": "b_p0", "joints_3d": good[:71]},
        {"image_key": "k", "person_idx": 2, "joints_3d": good},
        {"image_path": "/seq/x.jpg", "person_idx": 0, "joints_3d": [*good[:71], math.nan]},
        {"sample_id": "", "joints_3d": good},
        {"image_key": "k", "person_idx": -1, "joints_3d": good},
        {"sample_id": "c_p0", "global_orient": [0.1] * 3, "body_pose": [0.2] * 69, "betas": list(range(12)),
         "gender": "F"},
        {"sample_id": "d_p0", "joints_3d": good, "gender": "x"},
        {"sample_id": "e_p0"},
        {"image_path": "seq/y.jpg", "person_idx": 1, "joints_3d": good},
    ]  # fmt: skip
    table = pa.Table.from_pylist(rows)
    persons, problems = read_table(table, "gt.parquet", 100)
    expected_persons, expected_problems = [], []
    for i, row in enumerate(table.to_pylist()):
        try:
            expected_persons.append(person_from_row(row, f"gt.parquet row {100 + i}"))
        except GroundTruthRowError as exc:
            expected_problems.append((exc.reason, f"gt.parquet row {100 + i}: {exc}"))
    reference = GroundTruthTable.from_persons(expected_persons)
    assert list(persons.join_keys()) == list(reference.join_keys())
    assert np.array_equal(persons.joints, reference.joints, equal_nan=True)
    assert np.array_equal(persons.smpl, reference.smpl, equal_nan=True)
    assert list(persons.gender) == list(reference.gender)
    assert [(p.reason, str(p)) for p in problems] == expected_problems
    assert re.search(r"row 101: ground truth joints_3d: expected 72 values, got 71", str(problems[0]))


def test_confidence_quality_from_a_sample_is_within_its_stated_bound() -> None:
    """30,000 persons summarised in 7 partials with a 3,000-person sample: Spearman and AUSE differ from the exact
    figures on all persons by less than the bounds ``eval.json`` states, which shrink as the sample grows."""
    rng = np.random.default_rng(11)
    n = 30_000
    error = rng.gamma(3.0, 25.0, n)
    confidence = 1.0 / (1.0 + np.exp((error - 80.0) / 30.0)) + rng.normal(0.0, 0.15, n)
    exact = confidence_quality(confidence, error, "pa_mpjpe_mm", 20)
    assert exact is not None
    bounds = {}
    for cap in (3_000, 12_000):
        limits = SummaryLimits(quality_sample=cap, persons_json_max=0)
        merged = EvalPartial(limits)
        for chunk in np.array_split(np.arange(n), 7):
            part = EvalPartial(limits)
            labels = _label_columns(chunk, confidence[chunk])
            values = {"pa_mpjpe_mm": error[chunk], **{k: np.full(chunk.size, np.nan) for k in _OTHER}}
            applies = {"pa_mpjpe_mm": np.ones(chunk.size, bool), **{k: np.zeros(chunk.size, bool) for k in _OTHER}}
            part.add_rows(chunk.size, False)
            part.add_matched(labels, MatchedErrors(values, applies), chunk.size)
            merged = merged.merge(part)
        result = finish(merged, ground_truth_persons=n, ground_truth_problems={"counts": {}, "examples": []},
                        error_metric="pa_mpjpe_mm", sparsification_steps=20)  # fmt: skip
        assert result.overall.mean["pa_mpjpe_mm"] == pytest.approx(error.mean(), rel=1e-12), "means stay exact"
        quality = result.confidence_quality["pa_mpjpe_mm"]
        assert quality is not None
        assert quality.sample is not None
        sample = quality.sample
        assert (sample["persons"], sample["of"], sample["exact"]) == (cap, n, False)
        assert 0 < abs(quality.spearman - exact.spearman) <= sample["spearman_bound"]
        assert abs(quality.ause_mm - exact.ause_mm) <= sample["ause_bound_mm"]
        bounds[cap] = (sample["spearman_bound"], sample["ause_bound_mm"])
    assert bounds[12_000][0] < bounds[3_000][0]
    assert bounds[12_000][1] < bounds[3_000][1]


_OTHER = ("mpjpe_mm", "pve_mm", "lsp14_mpjpe_mm", "lsp14_pa_mpjpe_mm")


def _label_columns(rows: np.ndarray, confidence: np.ndarray) -> LabelColumns:
    n = rows.size
    return LabelColumns(
        sample_id=[f"img{i:06d}_p0" for i in rows], image_key=[None] * n, person_idx=[0] * n, source_uri=[None] * n,
        joints=np.zeros((n, 72)), pose=np.zeros((n, 72)), betas=np.zeros((n, 10)), confidence=confidence,
        quality_tier=["gold"] * n, occlusion_level=None, signals=np.zeros((n, 12)),
        signals_null=np.zeros((n, 12), bool), has_signals=np.zeros(n, bool), order=rows.astype(np.int64),
        shard=["s"] * n,
    )  # fmt: skip


def test_past_its_bounds_the_pipeline_stays_within_the_stated_errors(tmp_path: Path) -> None:
    """6,000 persons in 6 buckets with a 1,500-person sample: means and counts stay exact; each median is a value
    whose rank among all values is within the stated rank error; Spearman and AUSE within their stated bounds."""
    labels, ground_truth = write_label_output(tmp_path / "corpus", 60, 100, seed=8)
    doc = evaluate(_cfg(labels, ground_truth, tmp_path / "eval", "bucket_persons=1000", "quality_sample=1500"))
    ref = _reference(labels, ground_truth)
    values = {m: np.sort([p[m] for p in ref["persons"]]) for m in ("mpjpe_mm", "pa_mpjpe_mm")}
    assert doc["counts"]["evaluated"] == len(ref["persons"]) == 6000
    medians = doc["estimates"]["medians"]
    assert medians["estimated"] > 0
    assert 0 < medians["rank_error"] < 0.02
    for metric, ordered in values.items():
        assert doc["overall"][metric] == pytest.approx(ordered.mean(), rel=1e-12)
        rank = np.searchsorted(ordered, doc["overall"][f"median_{metric}"], side="right") / ordered.size
        assert abs(rank - 0.5) <= medians["rank_error"]
        got, exact = doc["confidence_quality"][metric], ref["quality"][metric]
        assert exact is not None
        assert got["sample"]["persons"] == 1500
        assert not got["sample"]["exact"]
        assert abs(got["spearman"] - exact.spearman) <= got["sample"]["spearman_bound"]
        assert abs(got["ause_mm"] - exact.ause_mm) <= got["sample"]["ause_bound_mm"]
