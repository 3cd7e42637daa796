"""dpmesh-eval on a small labeled output (tiny model, CPU), and a confidence calibration carried through
dpmesh-refilter and dpmesh-label: confidences and tiers follow the calibration, its sha256 is in the lineage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpmesh_core.calibration import ConfidenceCalibration, fit_calibration
from dpmesh_core.confidence import ConfidenceSignals, no_thresholds
from pipelines.config import (
    ConfigError,
    EvalJobConfig,
    LabelJobConfig,
    RefilterJobConfig,
    compose_config,
)
from pipelines.eval.evaluate import read_evaluation
from pipelines.eval.job import report as eval_report
from pipelines.eval.job import run as evaluate
from pipelines.label.job import run as label
from pipelines.refilter.job import run as refilter
from pipelines.storage import Storage
from tests.eval.test_eval import GOOD
from tests.fakes.corpus import make_images
from tests.fakes.shard_set import label_shards, shard_annotated


REPO = Path(__file__).resolve().parents[2]
SIGNALS = [f for f in ConfidenceSignals.__dataclass_fields__]


def _rows(output: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for folder in ("annotations", "rejected"):
        for path in sorted((output / folder).glob("*.parquet")):
            rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=lambda r: r["sample_id"])


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 annotated images sharded and labeled by the tiny model with the filter off (every finite label kept)."""
    root = tmp_path_factory.mktemp("eval")
    shards = shard_annotated(root, make_images(4, seed=5, width=320, height=240, persons=(1, 2)))
    label_shards(shards, root / "labels", "filter=off")
    return root / "labels"


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration fitted on a synthetic evaluated set, written as dpmesh-eval writes it.

    In this set the error follows the pose latent and the shape only, while the reprojection error and the joint
    consistency are perfect (their features are 0): the fit gives them weight 0. The tiny model's random labels
    reproject badly (the fixed confidence is ~0), so under this calibration their confidence and tier follow
    ``vposer_z_norm`` and ``betas_absmax`` alone: a visible change.
    """
    rng = np.random.default_rng(7)
    vposer, betas = rng.uniform(4.0, 9.0, 300), rng.uniform(0.5, 3.0, 300)
    error = 30.0 * np.maximum(vposer - 6.0, 0.0) + 20.0 * np.maximum(betas - 1.5, 0.0) + rng.normal(0, 10, 300) + 40
    signals = [
        dataclasses.replace(GOOD, reproj_err_norm=0.0, vposer_z_norm=float(v), betas_absmax=float(b))
        for v, b in zip(vposer, betas, strict=True)
    ]
    calibration = fit_calibration(signals, error, good_error_mm=70.0)
    weights = {t.signal: t.weight for t in calibration.terms}
    assert weights["reproj_err_norm"] == weights["joint_consistency_mm"] == 0.0
    assert weights["vposer_z_norm"] > 0
    assert weights["betas_absmax"] > 0
    path = tmp_path_factory.mktemp("calibration") / "confidence_calibration.json"
    path.write_bytes(calibration.to_json_bytes())
    return path


def _ground_truth(labels: Path, path: Path) -> dict[str, float]:
    """Ground truth = each label's joints with joint 5 moved by 24 k mm (k = 1, 2, ...): MPJPE exactly k mm."""
    rows = [r for r in _rows(labels) if all(math.isfinite(v) for v in np.ravel(r["joints_3d"]))]
    expected, gt = {}, []
    for k, row in enumerate(rows, start=1):
        joints = np.asarray(row["joints_3d"], dtype=np.float64).reshape(24, 3).copy()
        joints[5, 0] += 0.024 * k
        gt.append({"sample_id": row["sample_id"], "joints_3d": joints.reshape(-1).tolist()})
        expected[row["sample_id"]] = float(k)
    pq.write_table(pa.Table.from_pylist(gt), path)
    return expected


def test_dpmesh_eval_measures_known_errors_and_fits_a_calibration(labels: Path, tmp_path: Path) -> None:
    expected = _ground_truth(labels, tmp_path / "gt.parquet")
    assert len(expected) >= 4
    cfg = compose_config(
        "dpmesh_eval",
        [f"input.labels={labels}", f"input.ground_truth={tmp_path / 'gt.parquet'}", f"output={tmp_path / 'eval'}",
         "error_metric=mpjpe_mm", "fit_confidence=true", f"calibration.good_error_mm={len(expected) / 2 + 0.5}",
         "log_level=WARNING"],
        EvalJobConfig,
    )  # fmt: skip
    doc = evaluate(cfg)
    assert doc["counts"]["matched"] == len(expected)
    assert doc["counts"]["unmatched_ground_truth"] == 0
    persons = json.loads((tmp_path / "eval" / "eval_persons.json").read_text())["persons"]
    by_person = {p["sample_id"]: p for p in persons}
    for sample_id, mm in expected.items():
        assert by_person[sample_id]["mpjpe_mm"] == pytest.approx(mm, abs=1e-3)  # float32 storage
    assert doc["overall"]["mpjpe_mm"] == pytest.approx(np.mean(list(expected.values())), abs=1e-3)
    assert sum(g["n"] for g in doc["by_tier"].values()) == len(expected)
    quality = doc["confidence_quality"]["mpjpe_mm"]
    assert len(quality["sparsification"]["fraction_removed"]) == 20
    assert quality["ause_mm"] >= 0
    assert read_evaluation(Storage(), str(tmp_path / "eval" / "eval.json")) == json.loads(
        (tmp_path / "eval" / "eval.json").read_text()
    )
    assert "| all |" in (tmp_path / "eval" / "eval.md").read_text()
    written = (tmp_path / "eval" / "confidence_calibration.json").read_bytes()
    assert doc["calibration"]["sha256"] == hashlib.sha256(written).hexdigest()
    assert ConfidenceCalibration.from_json_bytes(written).fit["n"] == len(expected)
    printed = eval_report(doc, cfg)
    assert "| all |" in printed
    assert f"filter.calibration={tmp_path / 'eval' / 'confidence_calibration.json'}" in printed


def test_refilter_with_a_calibration_scores_as_the_calibration_says(
    labels: Path, calibration_file: Path, tmp_path: Path
) -> None:
    cal = ConfidenceCalibration.from_json_bytes(calibration_file.read_bytes())
    out = tmp_path / "calibrated"
    summary = refilter(
        compose_config(
            "dpmesh_refilter",
            [f"input={labels}", f"output={out}", "filter=off", f"filter.calibration={calibration_file}",
             "log_level=WARNING"],
            RefilterJobConfig,
        )
    )  # fmt: skip
    before = {r["sample_id"]: r for r in _rows(labels)}
    after = _rows(out)
    assert len(after) == len(before)
    cut = no_thresholds()
    changed = 0
    for row in after:
        signals = ConfidenceSignals(**{name: row[name] for name in SIGNALS})
        assert row["confidence"] == pytest.approx(cal.confidence(signals), abs=1e-6)
        expected_tier = (
            "reject" if row["reasons"] else
            "gold" if row["confidence"] >= cut.gold_min else "silver" if row["confidence"] >= cut.silver_min
            else "bronze"
        )  # fmt: skip
        assert row["quality_tier"] == expected_tier
        changed += row["confidence"] != pytest.approx(before[row["sample_id"]]["confidence"], abs=1e-6)
    assert changed > 0
    assert summary["calibration_sha256"] == cal.sha256 == hashlib.sha256(calibration_file.read_bytes()).hexdigest()
    for path in (out / "annotations").glob("*.parquet"):
        assert pq.read_schema(path).metadata[b"calibration_sha256"] == cal.sha256.encode()
    markers = [json.loads(p.read_text()) for p in (out / "_done").glob("*.json")]
    assert markers
    assert all(m["calibration_sha256"] == cal.sha256 for m in markers)


def test_label_with_a_calibration_records_it(calibration_file: Path, labels: Path, tmp_path: Path) -> None:
    root = labels.parent
    cal = ConfidenceCalibration.from_json_bytes(calibration_file.read_bytes())
    summary = label(
        compose_config(
            "dpmesh_label",
            [f"input.shards={root / 'shards'}", f"output={tmp_path / 'labels'}", "filter=off",
             f"filter.calibration={calibration_file}", "log_level=WARNING", "progress_interval_s=0"],
            LabelJobConfig,
        )
    )  # fmt: skip
    assert summary is None or isinstance(summary, dict)
    saved = json.loads((tmp_path / "labels" / "_summary.json").read_text())
    assert saved["calibration_sha256"] == cal.sha256
    for row in _rows(tmp_path / "labels"):
        signals = ConfidenceSignals(**{name: row[name] for name in SIGNALS})
        assert row["confidence"] == pytest.approx(cal.confidence(signals), abs=1e-5)
    for path in (tmp_path / "labels" / "annotations").glob("*.parquet"):
        assert pq.read_schema(path).metadata[b"calibration_sha256"] == cal.sha256.encode()


def test_a_bad_calibration_file_fails_at_launch(labels: Path, tmp_path: Path) -> None:

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    for name in (str(bad), str(tmp_path / "missing.json")):
        cfg = compose_config(
            "dpmesh_refilter",
            [f"input={labels}", f"output={tmp_path / 'x'}", f"filter.calibration={name}", "log_level=WARNING"],
            RefilterJobConfig,
        )
        with pytest.raises(ConfigError, match=r"filter\.calibration"):
            refilter(cfg)


def test_dpmesh_eval_command_refuses_unknown_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.eval.job", f"input.labels={tmp_path}", f"input.ground_truth={tmp_path}",
         f"output={tmp_path / 'out'}", "+eval.nope=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "dpmesh-eval: configuration error: unknown key eval" in result.stderr


def _recalibrated(calibration_file: Path, shift: float) -> bytes:
    """The calibration of ``calibration_file`` with its intercept moved by ``shift``: another file, same keys."""
    cal = ConfidenceCalibration.from_json_bytes(calibration_file.read_bytes())
    return dataclasses.replace(cal, intercept=cal.intercept + shift).to_json_bytes()


def test_a_calibration_replaced_in_place_is_refused_on_resume(
    calibration_file: Path, labels: Path, tmp_path: Path
) -> None:
    """filter.calibration is a path in the config hash: a file replaced in place keeps the hash, so resuming over
    labels scored by the old file would mix two confidence models in one output. Its content is compared too."""
    in_place = tmp_path / "calibration.json"
    in_place.write_bytes(calibration_file.read_bytes())

    def label_cfg(*extra: str) -> LabelJobConfig:
        return compose_config(
            "dpmesh_label",
            [f"input.shards={labels.parent / 'shards'}", f"output={tmp_path / 'labels'}", "filter=off",
             f"filter.calibration={in_place}", "log_level=WARNING", "progress_interval_s=0", *extra],
            LabelJobConfig,
        )  # fmt: skip

    def refilter_cfg(*extra: str) -> RefilterJobConfig:
        return compose_config(
            "dpmesh_refilter",
            [f"input={labels}", f"output={tmp_path / 'refiltered'}", "filter=off", f"filter.calibration={in_place}",
             "log_level=WARNING", *extra],
            RefilterJobConfig,
        )  # fmt: skip

    label(label_cfg())
    refilter(refilter_cfg())
    assert label(label_cfg())["shards"]["labeled_this_run"] == 0, "same file: a resume with nothing left to do"
    assert refilter(refilter_cfg())["shards"]["labeled_this_run"] == 0

    in_place.write_bytes(_recalibrated(calibration_file, shift=-1.0))
    new_sha = ConfidenceCalibration.from_json_bytes(in_place.read_bytes()).sha256
    for run, cfg in ((label, label_cfg()), (refilter, refilter_cfg())):
        with pytest.raises(ConfigError, match=r"another filter\.calibration file content .*overwrite=true"):
            run(cfg)
    relabeled, refiltered = label(label_cfg("overwrite=true")), refilter(refilter_cfg("overwrite=true"))
    for output, summary in ((tmp_path / "labels", relabeled), (tmp_path / "refiltered", refiltered)):
        assert summary["calibration_sha256"] == new_sha
        markers = [json.loads(p.read_text()) for p in (output / "_done").glob("*.json")]
        assert markers
        assert {m["calibration_sha256"] for m in markers} == {new_sha}
