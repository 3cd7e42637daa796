"""``dpmesh-eval``: labels against ground-truth SMPL, and optionally a confidence calibration fitted on them.

Writes ``<output>/eval.json`` (`pipelines.eval.evaluate.EvaluationResult.to_dict`: counts, metrics by tier and
occlusion level, confidence quality), ``<output>/eval_persons.json`` (every matched person's errors) and
``<output>/eval.md`` (the printed table). With ``fit_confidence=true`` it also fits
`dpmesh_core.calibration.fit_calibration` on the matched persons' stored signals against their ``error_metric``
and writes the calibration file (default ``<output>/confidence_calibration.json``) that ``dpmesh-label`` and
``dpmesh-refilter`` take as ``filter.calibration=<file>``. Runs in-process (no Beam): an evaluation set is a few
thousand persons. Torch is imported only when a body model is given.

Hostile input: `check_outputs` refuses, at launch, an ``output`` that is a file or overlaps an input and a
``calibration.output`` inside an input or over a file that is not a calibration; ground-truth rows that cannot be used
are counted and left out (`pipelines.eval.ground_truth`), a repeated ground-truth id or a 3DPW pickle that would run
code is a one-line configuration error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from typing import Any

import numpy as np

from dpmesh_core.calibration import CalibrationError, ConfidenceCalibration, fit_calibration
from pipelines.cli import hydra_app
from pipelines.common.safe_paths import check_output_location
from pipelines.config import ConfigError, EvalJobConfig
from pipelines.eval.evaluate import (
    EvaluationResult,
    MeshBuilder,
    evaluate_rows,
    format_markdown,
    read_ground_truth,
    read_label_rows,
)
from pipelines.eval.quality import spearman
from pipelines.storage import Storage, join
from pipelines.storage.uri import parse_uri


logger = logging.getLogger(__name__)

EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
EVAL_PERSONS = "eval_persons.json"
CALIBRATION_NAME = "confidence_calibration.json"


def _npz(storage: Storage, uri: str, key: str) -> dict[str, np.ndarray]:
    from dpmesh_core.body_model import read_smpl_arrays  # here: dpmesh_core.body_model imports torch

    try:
        return read_smpl_arrays(storage.read_bytes(uri), uri)
    except FileNotFoundError as exc:
        raise ConfigError(f"{key}={uri!r}: file not found") from exc
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{key}={uri!r}: not a readable .npz ({exc})") from exc


def load_meshes(cfg: EvalJobConfig, storage: Storage) -> MeshBuilder | None:
    """The body models the config names (None without ``body_model``)."""
    if cfg.body_model is None:
        return None
    models = {"neutral": _npz(storage, cfg.body_model, "body_model")}
    for gender, uri in (("male", cfg.body_model_male), ("female", cfg.body_model_female)):
        if uri is not None:
            models[gender] = _npz(storage, uri, f"body_model_{gender}")
    return MeshBuilder(models)


def load_h36m_regressor(cfg: EvalJobConfig, storage: Storage, num_vertices: int) -> np.ndarray | None:
    """The `(17, V)` H36M regressor the config names (None without ``h36m_regressor``)."""
    if cfg.h36m_regressor is None:
        return None
    try:
        regressor = np.load(io.BytesIO(storage.read_bytes(cfg.h36m_regressor)), allow_pickle=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"h36m_regressor={cfg.h36m_regressor!r}: file not found") from exc
    except (ValueError, OSError) as exc:  # not .npy, or a pickled object array (never loaded)
        raise ConfigError(f"h36m_regressor={cfg.h36m_regressor!r}: not a readable .npy array ({exc})") from exc
    if not isinstance(regressor, np.ndarray) or regressor.shape != (17, num_vertices):
        raise ConfigError(
            f"h36m_regressor={cfg.h36m_regressor!r}: expected a (17, {num_vertices}) array, got "
            f"{getattr(regressor, 'shape', type(regressor).__name__)}"
        )
    return np.asarray(regressor, dtype=np.float64)


def check_outputs(cfg: EvalJobConfig, storage: Storage) -> None:
    """At launch, before anything is read or written: ``output`` is a folder that overlaps no input, and
    ``calibration.output`` (a file) is new, outside every input, or an earlier calibration file.

    Raises:
        ConfigError: naming the key, the value and the input it overlaps.
    """
    inputs = {"input.labels": cfg.input.labels, "input.ground_truth": cfg.input.ground_truth}
    check_output_location(storage, cfg.output, inputs)
    uri = cfg.calibration.output
    if not cfg.fit_confidence or not uri:
        return
    parsed = parse_uri(uri)
    if parsed.scheme == "file" and os.path.isdir(parsed.key):
        raise ConfigError(f"calibration.output={uri!r} is a folder: give the calibration file's path")
    try:
        existing = storage.read_bytes(uri)
    except FileNotFoundError:  # a new file: it must not land inside an input
        check_output_location(storage, uri, inputs, key="calibration.output")
        return
    # An existing file is replaced only when it is an earlier calibration: no input of this job is one (labels and
    # ground truth are Parquet or pickles), and nothing else is overwritten by mistake.
    try:
        ConfidenceCalibration.from_json_bytes(existing)
    except CalibrationError as exc:
        raise ConfigError(
            f"calibration.output={uri!r} is an existing file that is not a confidence calibration ({exc}); it is "
            "never overwritten: give a new path"
        ) from exc


def run(cfg: EvalJobConfig) -> dict[str, Any]:
    """Evaluate, write ``eval.json`` / ``eval.md`` (and the calibration), return the ``eval.json`` document."""
    storage = Storage(cfg.storage)
    check_outputs(cfg, storage)
    meshes = load_meshes(cfg, storage)
    h36m = load_h36m_regressor(cfg, storage, meshes.num_vertices if meshes else 0)
    # Ground truth first: its refusals (a pickle that would run code, a repeated id) come before the label read.
    try:
        ground_truth = read_ground_truth(storage, cfg.input.ground_truth)
    except ValueError as exc:  # a pickle refused by the restricted loader, a repeated join key, a damaged file
        raise ConfigError(f"input.ground_truth={cfg.input.ground_truth!r}: {exc}") from exc
    rows = read_label_rows(storage, cfg.input.labels, cfg.input.include_rejected)
    if not rows:
        raise ConfigError(f"input.labels={cfg.input.labels!r} holds no label rows (annotations/, rejected/)")
    result = evaluate_rows(
        rows,
        ground_truth,
        meshes=meshes,
        h36m_regressor=h36m,
        error_metric=cfg.error_metric,
        sparsification_steps=cfg.sparsification_steps,
        labels=cfg.input.labels,
        ground_truth_uri=cfg.input.ground_truth,
    )
    if result.counts["matched"] == 0:
        invalid = result.ground_truth_problems["counts"]
        left_out = f" ({sum(invalid.values())} ground-truth rows left out: {invalid})" if invalid else ""
        raise ConfigError(
            "no label row matched the ground truth: check the join keys (sample_id, image_key + person_idx, or "
            f"image_path + person_idx; see README 'Auditing labels'){left_out}"
        )
    if not result.metrics:
        raise ConfigError(
            "the ground truth gives SMPL parameters but no joints_3d: pass body_model=<SMPL neutral .npz> to build "
            "its meshes"
        )
    doc = result.to_dict()
    if cfg.fit_confidence:
        doc["calibration"] = fit_and_write_calibration(cfg, storage, result)
    storage.write_bytes(join(cfg.output, EVAL_JSON), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    storage.write_bytes(join(cfg.output, EVAL_MD), (format_markdown(doc) + "\n").encode())
    persons = json.dumps({"persons": result.to_dict(include_persons=True)["persons"]}, indent=0, sort_keys=True)
    storage.write_bytes(join(cfg.output, EVAL_PERSONS), (persons + "\n").encode())
    return doc


def fit_and_write_calibration(cfg: EvalJobConfig, storage: Storage, result: EvaluationResult) -> dict[str, Any]:
    """Fit the calibration on the matched persons with signals and a finite error; write it; describe it."""
    metric = result.error_metric
    persons = [p for p in result.persons if p.signals is not None and math.isfinite(p.errors.get(metric, math.nan))]
    signals = [p.signals for p in persons if p.signals is not None]  # the same persons, typed
    try:
        calibration = fit_calibration(
            signals,
            np.array([p.errors[metric] for p in persons]),
            cfg.calibration.good_error_mm,
            error_metric=metric,
            joint_set="lsp14" if metric.startswith("lsp14") else "vertices" if metric == "pve_mm" else "smpl24",
        )
    except ValueError as exc:
        raise ConfigError(f"fit_confidence=true: {exc}") from exc
    errors = np.array([p.errors[metric] for p in persons])
    before = spearman(np.array([p.confidence for p in persons]), -errors)
    after = spearman(np.array([calibration.confidence(s) for s in signals]), -errors)
    fit = {**calibration.fit, "spearman_before": before, "spearman_after_in_sample": after}
    calibration = dataclasses.replace(calibration, fit=fit)
    uri = cfg.calibration.output or join(cfg.output, CALIBRATION_NAME)
    data = calibration.to_json_bytes()
    storage.write_bytes(uri, data)
    return {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), **calibration.to_dict()}


def report(doc: dict[str, Any], cfg: EvalJobConfig) -> str:
    """The printed end-of-run table and where the files are."""
    lines = [format_markdown(doc), "", f"wrote {join(cfg.output, EVAL_JSON)} and {join(cfg.output, EVAL_MD)}"]
    if doc.get("calibration"):
        cal = doc["calibration"]
        lines.append(
            f"wrote the confidence calibration {cal['uri']} (sha256 {cal['sha256'][:12]}); use it with "
            f"dpmesh-refilter / dpmesh-label filter.calibration={cal['uri']}"
        )
    return "\n".join(lines)


main = hydra_app("dpmesh-eval", "dpmesh_eval", EvalJobConfig, run, report)


if __name__ == "__main__":
    main()
