"""The filter's thresholds from the ``filter`` config: a preset with overrides (torch-free, shared by labeling and
``dpmesh-refilter``)."""

from dataclasses import replace

from dpmesh_core.confidence import FilterThresholds, default_thresholds, no_thresholds, strict_thresholds
from pipelines.config import ConfigError, FilterConfig, FilterPreset


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
