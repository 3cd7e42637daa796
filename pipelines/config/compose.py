"""Composing, validating and fingerprinting the app configs."""

import dataclasses
import hashlib
import json
from enum import Enum
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipelines.config.errors import ConfigError
from pipelines.config.eval import EvalJobConfig
from pipelines.config.export import ExportJobConfig
from pipelines.config.label import LabelJobConfig
from pipelines.config.refilter import RefilterJobConfig
from pipelines.config.report import ReportJobConfig
from pipelines.config.shard import ShardJobConfig


def compose_config(config_name: str, overrides: list[str], config_type: type["ConfigT"]) -> "ConfigT":
    """Compose an app config from ``pipelines/conf`` with command-line style overrides, from Python.

    The same composition and validation as the console scripts, for tests and notebooks.
    """
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module("pipelines.conf", version_base="1.3"):
        return to_job_config(compose(config_name, overrides=overrides), config_type)


def register_configs() -> None:
    """Register the structured schemas so the YAML defaults lists can extend them."""
    store = ConfigStore.instance()
    store.store(name="shard_schema", node=ShardJobConfig)
    store.store(name="label_schema", node=LabelJobConfig)
    store.store(name="refilter_schema", node=RefilterJobConfig)
    store.store(name="eval_schema", node=EvalJobConfig)
    store.store(name="export_schema", node=ExportJobConfig)
    store.store(name="report_schema", node=ReportJobConfig)


ConfigT = TypeVar("ConfigT")


def to_job_config(cfg: DictConfig, config_type: type[ConfigT]) -> ConfigT:
    """Resolve a composed config on the driver into plain dataclasses, re-raising problems as ConfigError.

    ``OmegaConf.to_object`` builds the dataclasses, which runs every ``__post_init__`` check.
    """
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # omegaconf wraps __post_init__ errors and reports type errors itself
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else exc
        raise ConfigError(str(cause).split("\n    full_key")[0]) from exc
    if not isinstance(obj, config_type):
        raise ConfigError(f"expected a {config_type.__name__} config, got {type(obj).__name__}")
    _validate_tree(obj)
    return obj


def _validate_tree(obj: Any) -> None:
    """Call ``validate()`` on every config dataclass of the tree that defines one."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        _validate_tree(getattr(obj, f.name))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (enums as their values)."""
    result = _jsonable(cfg)
    if not isinstance(result, dict):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return result


_NOT_CONTENT = (
    "output",
    "runner",
    "storage",
    "log_level",
    "overwrite",
    "progress_interval_s",
    # How a model is hosted and which inputs are admitted change no row: sharing is tested to give the same bytes.
    "model.share_across_processes",
    "detector.share_across_processes",
    "model.concurrent_calls",
    "detector.concurrent_calls",
    "model.debug_overlap_s",
    "detector.debug_overlap_s",
    "input.allow_incomplete",
    "input.prep_threads",  # how many threads cut the crops: rows are tested identical for any count
)


def config_hash(cfg: Any, *, exclude: tuple[str, ...] = _NOT_CONTENT) -> str:
    """A short stable fingerprint of the parts of a config that change outputs.

    Where and how the job runs (output location, runner, storage endpoints, logging) does not change what
    it writes, so those are left out by default: the same corpus sharded locally or on Dataflow, into any
    folder, hashes alike and gives identical files.
    """
    content = config_to_dict(cfg)
    for dotted in exclude:  # "a" or "a.b": drop the key wherever the config has it
        *parents, leaf = dotted.split(".")
        node: Any = content
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]
