"""Structured configs of the pipelines' hydra apps.

Hydra composes YAML from ``pipelines/conf/`` at the edge; these dataclasses give every key a type,
so an unknown key or a value of the wrong type fails at launch with a message naming it, and
``__post_init__`` checks the values. After composition, :func:`to_job_config` turns the
``DictConfig`` into plain dataclasses with every ``${...}`` resolved on the driver: hydra never
runs on Beam workers, and only these picklable dataclasses travel to them.

The configs live by app (``runner``, ``storage``, ``shard``, ``label``, ``refilter``, ``report``); composition and
hashing in ``compose``.
Everything is re-exported here, so ``from pipelines.config import X`` works for every name.
"""

from pipelines.config.compose import compose_config, config_hash, config_to_dict, register_configs, to_job_config
from pipelines.config.errors import ConfigError
from pipelines.config.eval import CalibrationFitConfig, EvalInputConfig, EvalJobConfig
from pipelines.config.export import (
    ExportFormat,
    ExportInputConfig,
    ExportJobConfig,
    ExportOptionsConfig,
    SelectConfig,
)
from pipelines.config.label import (
    DetectorConfig,
    DetectorName,
    Device,
    DType,
    FilterConfig,
    FilterPreset,
    LabelInputConfig,
    LabelJobConfig,
    ModelConfig,
    ModelName,
    ShareMode,
)
from pipelines.config.refilter import RefilterJobConfig, ReviewConflicts
from pipelines.config.report import ReportInputConfig, ReportJobConfig, ReportOptions
from pipelines.config.runner import DataflowConfig, EnvironmentType, RunnerConfig, RunnerName, RunningMode
from pipelines.config.shard import (
    DEFAULT_MAX_IMAGE_PIXELS,
    CompareMode,
    ExcludeConfig,
    InputConfig,
    NearDuplicateConfig,
    ShardConfig,
    ShardJobConfig,
    ShardMode,
    ValidateMode,
)
from pipelines.config.storage import AddressingStyle, RetryMode, StorageConfig


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "AddressingStyle",
    "CalibrationFitConfig",
    "CompareMode",
    "ConfigError",
    "DType",
    "DataflowConfig",
    "DetectorConfig",
    "DetectorName",
    "Device",
    "EnvironmentType",
    "EvalInputConfig",
    "EvalJobConfig",
    "ExcludeConfig",
    "ExportFormat",
    "ExportInputConfig",
    "ExportJobConfig",
    "ExportOptionsConfig",
    "FilterConfig",
    "FilterPreset",
    "InputConfig",
    "LabelInputConfig",
    "LabelJobConfig",
    "ModelConfig",
    "ModelName",
    "NearDuplicateConfig",
    "RefilterJobConfig",
    "ReportInputConfig",
    "ReportJobConfig",
    "ReportOptions",
    "RetryMode",
    "ReviewConflicts",
    "RunnerConfig",
    "RunnerName",
    "RunningMode",
    "SelectConfig",
    "ShardConfig",
    "ShardJobConfig",
    "ShardMode",
    "ShareMode",
    "StorageConfig",
    "ValidateMode",
    "compose_config",
    "config_hash",
    "config_to_dict",
    "register_configs",
    "to_job_config",
]
