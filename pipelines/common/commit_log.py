"""The per-unit commit protocol every job follows, in one place.

A job's unit of work is a shard. A unit is committed by its marker, ``<output>/_done/<unit>.json``, written after
all of the unit's files: a unit with a marker is complete, one without is redone. Around that:

* **Planning** (driver) reads the markers (through the marker index, :mod:`pipelines.common.marker_index`), refuses an
  output holding another config's units with :func:`refuse_other_units` (one wording for every job), and keeps the
  units whose marker is missing or records another identity of their input.
* **Where a unit runs** (worker), :func:`committed_marker` checks again: a runner may retry a work item, or
  recompute it after a worker died, after its marker was written. A unit whose marker already records the same
  identity and config is not redone: the step hands on that marker and counts the skip (``already_committed``), so
  an engine's retry never rewrites committed files.
* **The run's record**: the intent (:mod:`pipelines.common.intent`, written before the first unit) and the summary
  the job writes at the end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipelines.common.intent import refuse_another_run
from pipelines.common.marker_index import marker_uri
from pipelines.config import ConfigError
from pipelines.storage import Storage


ALREADY_COMMITTED = "already_committed"
"""Key a step adds to the marker it hands on for a unit it found committed where it ran (never written to storage)."""


def committed_marker(storage: Storage, output: str, unit: str, expected: Mapping[str, Any]) -> dict[str, Any] | None:
    """The unit's marker if one exists whose fields equal ``expected`` (config hash, input identity), else None.

    One GET per unit, where the unit runs: what the driver planned may have been committed since by a retried or
    recomputed work item of the same run.
    """
    try:
        marker = json.loads(storage.read_bytes(marker_uri(output, unit)))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(marker, dict) or any(marker.get(key) != value for key, value in expected.items()):
        return None
    return marker


def refuse_other_units(output: str, what: str, foreign: list[str], differs: str) -> ConfigError:
    """The refusal of an output whose committed units were made otherwise (``differs``: "another config", ...),
    in the one wording of :func:`~pipelines.common.intent.refuse_another_run`."""
    return refuse_another_run(output, f"{what} (e.g. {foreign[0]})", differs)


def made_otherwise(
    markers: dict[str, dict[str, Any]], config_hash: str, calibration_sha256: str | None
) -> tuple[list[str], str]:
    """The shards of ``markers`` made with another config or another calibration, and what differs.

    The config hash covers ``filter.calibration`` as a path; a calibration file replaced in place keeps its path, so
    its content (``calibration_sha256``, absent without one) is compared too. Returns ``([], "")`` when none differ.
    """
    other_config = sorted(name for name, m in markers.items() if m.get("config_hash") != config_hash)
    if other_config:
        return other_config, "another config"
    other_calibration = sorted(n for n, m in markers.items() if m.get("calibration_sha256") != calibration_sha256)
    if other_calibration:
        return other_calibration, "another filter.calibration file content (sha256)"
    return [], ""
