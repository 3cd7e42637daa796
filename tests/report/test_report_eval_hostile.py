"""dpmesh-report, dpmesh-eval and the calibration file against hostile input (issue 20), through the real jobs.

A small output labeled by the tiny model is copied and edited per test into what a hostile or careless producer
could hand over: sample ids and tiers that would climb out of the report folder or break its URLs, evaluation
documents with unsafe metric names or wrong JSON types, ground truth with the wrong number of values, NaN or repeated
ids, a 3DPW pickle that runs a command, outputs that are files or overlap inputs, calibration files with strings for
booleans. Each is refused at launch with one line naming the value, or counted and left out; nothing is written
outside ``output=``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpmesh_core.calibration import ConfidenceCalibration, default_terms
from pipelines.common.label_stats import INVALID_SAMPLE_ID
from pipelines.common.merged_stats import STATS_FILE
from pipelines.config import (
    ConfigError,
    EvalJobConfig,
    RefilterJobConfig,
    ReportJobConfig,
    compose_config,
)
from pipelines.eval.job import run as evaluate
from pipelines.refilter.job import run as refilter
from pipelines.report.job import run as write_report
from pipelines.report.steps import STATS_NAME
from tests.fakes.corpus import make_images
from tests.fakes.shard_set import label_shards, shard_annotated
from tests.report.test_report import CHROMIUM, _chromium


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 annotated images sharded and labeled by the tiny model with the filter off (every finite label kept)."""
    root = tmp_path_factory.mktemp("hostile")
    shards = shard_annotated(root, make_images(4, seed=5, width=320, height=240, persons=(1, 2)))
    label_shards(shards, root / "labels", "filter=off")
    return root / "labels"


def _label_files(labels: Path) -> list[Path]:
    return [p for folder in ("annotations", "rejected") for p in sorted((labels / folder).glob("*.parquet"))]


def _rows(labels: Path) -> list[dict[str, Any]]:
    rows = [r for path in _label_files(labels) for r in pq.read_table(path).to_pylist()]
    return sorted(rows, key=lambda r: r["sample_id"])


def _edit_labels(labels: Path, into: Path, edit: dict[str, dict[str, Any]]) -> Path:
    """A copy of ``labels`` at ``into`` whose rows (by sample_id) get the column values of ``edit``, with markers
    that carry no statistics (as written before they did), so the report computes them from the edited rows."""
    shutil.copytree(labels, into)
    for path in _label_files(into):
        table = pq.read_table(path)
        rows = [{**r, **edit.get(r["sample_id"], {})} for r in table.to_pylist()]
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    (into / "_done_index.json.gz").unlink()
    (into / STATS_FILE).unlink()
    for path in (into / "_done").glob("*.json"):
        marker = json.loads(path.read_text())
        del marker["stats"]
        path.write_text(json.dumps(marker))
    return into


def _report(labels: Path, output: Path, *extra: str) -> dict[str, Any]:
    cfg = compose_config("dpmesh_report", [
        f"input.labels={labels}", f"output={output}", "report.render_mesh=false", "log_level=WARNING", *extra,
    ], ReportJobConfig)  # fmt: skip
    return write_report(cfg)


def _eval_cfg(labels: Path, ground_truth: Path, output: Path, *extra: str) -> EvalJobConfig:
    return compose_config("dpmesh_eval", [
        f"input.labels={labels}", f"input.ground_truth={ground_truth}", f"output={output}", "log_level=WARNING",
        *extra,
    ], EvalJobConfig)  # fmt: skip


def _ground_truth(labels: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Ground truth = each finite label's joints with joint 5 moved by 24 k mm (k = 1, 2, ...): MPJPE exactly k mm."""
    rows = [r for r in _rows(labels) if np.isfinite(np.ravel(r["joints_3d"])).all()]
    gt, expected = [], {}
    for k, row in enumerate(rows, start=1):
        joints = np.asarray(row["joints_3d"], dtype=np.float64).reshape(24, 3).copy()
        joints[5, 0] += 0.024 * k
        gt.append({"sample_id": row["sample_id"], "joints_3d": joints.reshape(-1).tolist()})
        expected[row["sample_id"]] = float(k)
    return gt, expected


def _write_gt(rows: list[dict[str, Any]], path: Path) -> Path:
    pq.write_table(pa.table({
        "sample_id": [r["sample_id"] for r in rows],
        "joints_3d": pa.array([r["joints_3d"] for r in rows], pa.list_(pa.float64())),  # any length: hand-made
    }), path)  # fmt: skip
    return path


def _one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def hostile_report(labels: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of a copy of ``labels`` where a sample id is ``../../../../x/REPORT`` (its tile would land at
    ``<root>/x/REPORT.png``), another holds ``#?%``, and a tier holds ``#?%``."""
    root = tmp_path_factory.mktemp("hostile_report")
    ids = [r["sample_id"] for r in _rows(labels)]
    assert len(ids) >= 3
    hostile = _edit_labels(labels, root / "labels", {
        ids[0]: {"sample_id": "../../../../x/REPORT"},
        ids[1]: {"sample_id": "k#?%41_p0"},
        ids[2]: {"quality_tier": "t#?%41"},
    })  # fmt: skip
    output = root / "report"
    result = _report(hostile, output, "report.per_tier=32")
    return {"root": root, "output": output, "result": result, "ids": ids}


def test_row_values_never_become_paths_and_urls_are_encoded(hostile_report: dict[str, Any]) -> None:
    """The two bad sample ids are left out of the gallery and counted; the tier holding ``#?%`` names a folder whose
    URL is percent-encoded."""
    root, output, result, ids = (hostile_report[k] for k in ("root", "output", "result", "ids"))
    assert not (root / "x").exists()
    assert not [p for p in root.rglob("REPORT*")], "no file named after the climbing sample id"
    assert result["gallery_left_out"] == {INVALID_SAMPLE_ID: 2}
    assert sum(result["gallery"].values()) == len(ids) - 2
    page = (output / "index.html").read_text()
    assert "2 rows are left out of the gallery" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources
    for src in sources:
        assert not set(src) & set("#? "), f"{src}: not percent-encoded"
        assert (output / unquote(src)).is_file(), f"{src} does not name a written file"
    tile = f"assets/gallery/t%23%3F%2541/{ids[2]}.png"
    assert tile in sources, "the tier with #?% is shown, its folder encoded in the URL"
    assert (output / "assets" / "gallery" / "t#?%41" / f"{ids[2]}.png").is_file()
    written = {str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()}
    assert written == {"index.html", STATS_NAME} | {unquote(s) for s in sources}, (
        "every file is inside output= and shown"
    )


@pytest.mark.slow
def test_chromium_loads_every_image_of_the_hostile_report(hostile_report: dict[str, Any]) -> None:
    """A browser opens the files behind the encoded URLs (``#?%`` in a folder name), none broken."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: run `make system-packages` (Debian package chromium)")
    index = hostile_report["output"] / "index.html"
    n_images = len(re.findall(r"<img ", index.read_text()))
    assert n_images > 10
    dom = _chromium(index.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images="loaded {n_images}/{n_images}"' in dom.stdout, re.findall(r"<body[^>]*>", dom.stdout)


def test_report_refuses_a_bad_seed_and_outputs_that_are_files_or_overlap_inputs(labels: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as seed:
        _report(labels, tmp_path / "report", "report.seed=-1")
    assert "report.seed=-1 must be >= 0" in _one_line(seed)
    assert not (tmp_path / "report").exists()

    existing = tmp_path / "existing.html"
    existing.write_text("keep me")
    with pytest.raises(ConfigError) as exc:
        _report(labels, existing)
    assert "is an existing file" in _one_line(exc)
    assert existing.read_text() == "keep me"

    before = sorted(p for p in labels.rglob("*"))
    with pytest.raises(ConfigError, match=r"lies inside input\.labels="):
        _report(labels, labels / "report")
    evaluation = tmp_path / "eval" / "eval.json"
    evaluation.parent.mkdir()
    evaluation.write_text("{}")
    with pytest.raises(ConfigError, match=r"output=.* contains report\.eval="):
        _report(labels, evaluation.parent, f"report.eval={evaluation}")
    assert sorted(p for p in labels.rglob("*")) == before, "nothing written into the labels"


def test_the_report_command_prints_one_line_for_an_output_that_is_a_file(labels: Path, tmp_path: Path) -> None:
    existing = tmp_path / "report.html"
    existing.write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.report.job", f"input.labels={labels}", f"output={existing}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"dpmesh-report: configuration error: output={str(existing)!r} is an existing file")


@pytest.fixture(scope="module")
def evaluation(labels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``dpmesh-eval`` result folder for ``labels`` (eval.json and eval_persons.json)."""
    root = tmp_path_factory.mktemp("evaluation")
    gt, _ = _ground_truth(labels)
    evaluate(_eval_cfg(labels, _write_gt(gt, root / "gt.parquet"), root / "eval"))
    return root / "eval"


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("version", True, r"version=true: expected an integer"),
        ("overall.n", "5", r'overall\.n="5": expected an integer'),
        ("counts.matched", -1, r"counts\.matched=-1: expected a number >= 0"),
        ("overall.pa_mpjpe_mm", "abc", r'overall\.pa_mpjpe_mm="abc": expected a finite number or null'),
        ("confidence_quality.pa_mpjpe_mm.spearman", True, r"spearman=true: expected a finite number or null"),
        ("metrics", "mpjpe_mm", r'metrics="mpjpe_mm": expected a JSON array'),
        ("by_occlusion_level", [], r"by_occlusion_level=array: expected a JSON object or null"),
        ("labels", None, r"labels=null: expected a string"),
    ],
)
def test_report_refuses_an_eval_document_of_wrong_types(
    labels: Path, evaluation: Path, tmp_path: Path, path: str, value: Any, expected: str
) -> None:
    doc = json.loads((evaluation / "eval.json").read_text())
    _set(doc, path, value)
    bad = tmp_path / "eval.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as exc:
        _report(labels, tmp_path / "report", f"report.eval={bad}")
    assert re.search(r"^report\.eval=.*" + expected, _one_line(exc)), str(exc.value)
    assert not (tmp_path / "report").exists()


def test_report_refuses_an_eval_metric_name_that_is_not_a_plain_segment(
    labels: Path, evaluation: Path, tmp_path: Path
) -> None:
    """On the old code the metric ``/../../x/EVAL`` named a sparsification plot written outside ``output=``."""
    doc = json.loads((evaluation / "eval.json").read_text())
    doc["metrics"].append("/../../x/EVAL")
    doc["confidence_quality"]["/../../x/EVAL"] = doc["confidence_quality"]["pa_mpjpe_mm"]
    case = tmp_path / "case"
    case.mkdir()
    bad = case / "eval.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as exc:
        _report(labels, case / "a" / "report", f"report.eval={bad}")
    assert re.search(r"metrics\[\d\]: metric name '/\.\./\.\./x/EVAL' holds a path separator", _one_line(exc))
    assert not [p for p in tmp_path.rglob("*EVAL*")]

    persons = json.loads((evaluation / "eval_persons.json").read_text())
    persons["persons"][0]["confidence"] = "high"
    shutil.copy(evaluation / "eval.json", case / "eval.json")
    (case / "eval_persons.json").write_text(json.dumps(persons))
    with pytest.raises(ConfigError, match=r'eval_persons\.json: .*persons\[0\]\.confidence="high"'):
        _report(labels, case / "b", f"report.eval={case / 'eval.json'}")


# ------------------------------------------------------------------------------------------------------------- eval


def test_ground_truth_of_the_wrong_length_or_nan_is_counted_and_every_n_is_what_the_figures_cover(
    labels: Path, tmp_path: Path
) -> None:
    """joints_3d with 87 values (the old code kept the first 72) and NaN ground truth are left out and counted; a
    label with NaN joints is counted as non-finite; every ``n`` is the number of persons its means cover."""
    gt, expected = _ground_truth(labels)
    assert len(gt) >= 5
    long_id, nan_id, bad_label_id = gt[0]["sample_id"], gt[1]["sample_id"], gt[2]["sample_id"]
    gt[0]["joints_3d"] = [*gt[0]["joints_3d"], *[0.0] * 15]  # 87 values
    gt[1]["joints_3d"] = [math.nan, *gt[1]["joints_3d"][1:]]
    edited = _edit_labels(labels, tmp_path / "labels", {bad_label_id: {"joints_3d": [[math.nan] * 3] * 24}})
    doc = evaluate(_eval_cfg(edited, _write_gt(gt, tmp_path / "gt.parquet"), tmp_path / "eval"))

    counts = doc["counts"]
    assert doc["ground_truth_problems"]["counts"] == {"wrong_length": 1, "non_finite": 1}
    assert any("expected 72 values, got 87" in e for e in doc["ground_truth_problems"]["examples"])
    assert counts["ground_truth_invalid"] == 2
    assert counts["ground_truth_persons"] == len(gt) - 2
    assert counts["matched"] == len(gt) - 2
    assert counts["non_finite"] == 1
    covered = {s: mm for s, mm in expected.items() if s not in (long_id, nan_id, bad_label_id)}
    assert counts["evaluated"] == doc["overall"]["n"] == doc["overall"]["n_mpjpe_mm"] == len(covered)
    assert doc["overall"]["mpjpe_mm"] == pytest.approx(np.mean(list(covered.values())), abs=1e-3)
    assert sum(g["n"] for g in doc["by_tier"].values()) == len(covered)
    assert doc["confidence_quality"]["mpjpe_mm"]["n"] == len(covered)
    persons = {p["sample_id"] for p in json.loads((tmp_path / "eval" / "eval_persons.json").read_text())["persons"]}
    assert long_id not in persons
    assert nan_id not in persons
    markdown = (tmp_path / "eval" / "eval.md").read_text()
    assert "Ground-truth rows left out: 2 (non_finite 1, wrong_length 1)" in markdown


def test_a_repeated_ground_truth_id_is_refused(labels: Path, tmp_path: Path) -> None:
    gt, _ = _ground_truth(labels)
    gt.append(dict(gt[0]))
    with pytest.raises(ConfigError) as exc:
        evaluate(_eval_cfg(labels, _write_gt(gt, tmp_path / "gt.parquet"), tmp_path / "eval"))
    message = _one_line(exc)
    assert f"ground-truth sample_id {gt[0]['sample_id']!r} is given twice" in message
    assert f"row 0 and {tmp_path / 'gt.parquet'} row {len(gt) - 1}" in message
    assert not (tmp_path / "eval").exists()


def test_eval_refuses_outputs_that_are_files_or_overlap_inputs(labels: Path, tmp_path: Path) -> None:
    gt, _ = _ground_truth(labels)
    (tmp_path / "gt").mkdir()
    gt_file = _write_gt(gt, tmp_path / "gt" / "gt.parquet")
    existing = tmp_path / "eval.txt"
    existing.write_text("keep me")
    for output, message in (
        (existing, "is an existing file"),
        (labels, r"is input\.labels="),
        (labels / "eval", r"lies inside input\.labels="),
        (tmp_path / "gt", r"contains input\.ground_truth="),
    ):
        with pytest.raises(ConfigError, match=rf"^output=.* {message}"):
            evaluate(_eval_cfg(labels, gt_file, output))
    assert existing.read_text() == "keep me"
    assert not (labels / "eval").exists()
    with pytest.raises(ConfigError, match=r"^calibration\.output=.* lies inside input\.labels="):
        evaluate(_eval_cfg(labels, gt_file, tmp_path / "out", "fit_confidence=true",
                           f"calibration.output={labels / 'annotations' / 'cal.json'}"))  # fmt: skip
    not_a_calibration = r"^calibration\.output=.* existing file that is not a confidence calibration"
    with pytest.raises(ConfigError, match=not_a_calibration):
        evaluate(_eval_cfg(labels, gt_file, tmp_path / "out", "fit_confidence=true", f"calibration.output={gt_file}"))
    assert pq.read_table(gt_file).num_rows == len(gt), "the ground truth is untouched"


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_3dpw_pickle_that_runs_code_is_one_line_and_nothing_runs(labels: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    pkl = tmp_path / "gt" / "courtyard_00.pkl"
    pkl.parent.mkdir()
    pkl.write_bytes(pickle.dumps({"sequence": "courtyard_00", "poses": _RunsACommand(ran)}, protocol=2))
    with pytest.raises(ConfigError) as exc:
        evaluate(_eval_cfg(labels, pkl.parent, tmp_path / "eval"))
    assert f"{pkl}: refused, nothing in it was run: refused to load global posix.system" in _one_line(exc)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.eval.job", f"input.labels={labels}", f"input.ground_truth={pkl}",
         f"output={tmp_path / 'eval'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"dpmesh-eval: configuration error: input.ground_truth={str(pkl)!r}: {pkl}: refused")
    assert not ran.exists()
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------------ calibration


def test_a_calibration_with_a_string_for_a_boolean_is_refused_by_refilter(labels: Path, tmp_path: Path) -> None:
    """``higher_is_better: "no"`` was read as true (every label moved from bronze to silver on the measured run)."""
    doc = ConfidenceCalibration(terms=default_terms(), intercept=0.0, good_error_mm=100.0).to_dict()
    doc["terms"][0]["higher_is_better"] = "no"
    bad = tmp_path / "calibration.json"
    bad.write_text(json.dumps(doc))
    cfg = compose_config("dpmesh_refilter", [
        f"input={labels}", f"output={tmp_path / 'out'}", "filter=off", f"filter.calibration={bad}",
        "log_level=WARNING",
    ], RefilterJobConfig)  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        refilter(cfg)
    assert 'terms[0].higher_is_better="no": expected a JSON boolean (true or false)' in _one_line(exc)
    assert not (tmp_path / "out").exists()
