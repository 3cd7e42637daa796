"""The filter's thresholds from the ``filter`` config: a preset with overrides, and the optional confidence
calibration file (torch-free, shared by labeling and ``dpmesh-refilter``)."""

from dataclasses import replace

from dpmesh_core.calibration import ConfidenceCalibration
from dpmesh_core.confidence import FilterThresholds, default_thresholds, no_thresholds, strict_thresholds
from pipelines.config import ConfigError, FilterConfig, FilterPreset, StorageConfig
from pipelines.storage import Storage


def filter_thresholds(cfg: FilterConfig) -> FilterThresholds:
    """The preset's thresholds with the explicitly set ones replaced.

    Raises:
        ConfigError: if an override is out of range (the message names it).
    """
    presets = {
        FilterPreset.default: default_thresholds,
        FilterPreset.strict: strict_thresholds,
        FilterPreset.off: no_thresholds,
    }
    try:
        return replace(presets[cfg.preset](), **cfg.overrides())
    except ValueError as exc:
        raise ConfigError(str(exc).replace("FilterThresholds.", "filter.")) from exc


def load_calibration(cfg: FilterConfig, storage_cfg: StorageConfig) -> ConfidenceCalibration | None:
    """The calibration file ``filter.calibration`` names (None when unset), read and checked on the driver.

    Raises:
        ConfigError: the file is missing or is not a valid calibration (the message names the key and the file).
    """
    if not cfg.calibration:
        return None
    try:
        data = Storage(storage_cfg).read_bytes(cfg.calibration)
    except FileNotFoundError as exc:  # ObjectNotFoundError is one
        raise ConfigError(f"filter.calibration={cfg.calibration!r}: file not found") from exc
    try:
        return ConfidenceCalibration.from_json_bytes(data)
    except ValueError as exc:
        raise ConfigError(f"filter.calibration={cfg.calibration!r}: {exc}") from exc


def calibration_lineage(calibration: ConfidenceCalibration | None, uri: str | None) -> dict[str, str]:
    """What outputs record about the calibration: ``calibration_sha256`` and ``calibration_uri`` (empty if none)."""
    if calibration is None:
        return {}
    return {"calibration_sha256": calibration.sha256, "calibration_uri": uri or ""}
