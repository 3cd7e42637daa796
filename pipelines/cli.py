"""The one shape of every command-line app: compose the Hydra config, validate, run, report.

Configuration errors print ``<command>: configuration error: <what and how to fix it>`` and exit 2;
a dry run (``runner.dry_run=true``) has already printed its launch plan, so nothing more is reported.
Unknown keys fail too, including those added with Hydra's ``+key=value`` (which bypasses the schema).
"""

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig

from pipelines.config import ConfigError, register_configs, to_job_config
from pipelines.logging_setup import configure_logging


ConfigT = TypeVar("ConfigT")


def hydra_app(
    command: str,
    config_name: str,
    config_type: type[ConfigT],
    run: Callable[[ConfigT], dict[str, Any]],
    report: Callable[[dict[str, Any], ConfigT], str],
) -> Callable[[], None]:
    """A console entry point running ``run`` on the validated ``pipelines/conf/<config_name>.yaml`` config."""
    register_configs()

    @hydra.main(version_base="1.3", config_path="conf", config_name=config_name)
    def _main(dict_cfg: DictConfig) -> None:
        try:
            cfg = to_job_config(dict_cfg, config_type)
            unknown = sorted(unknown_keys(dict_cfg, cfg))
            if unknown:
                raise ConfigError(
                    f"unknown key {', '.join(unknown)}: not an option of {command}; check the spelling "
                    '(see README "Configuration")'
                )
            configure_logging(getattr(cfg, "log_level", "INFO"))
            result = run(cfg)
        except ConfigError as exc:
            print(f"{command}: configuration error: {exc}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            # Straight out, not through interpreter teardown: the launch may have started native thread pools
            # (Arrow's, DuckDB's) whose destruction at exit can abort the process (exit 134 instead of 2) after the
            # one-line message; nothing is left to clean up at this point.
            os._exit(2)
        runner = getattr(cfg, "runner", None)
        if not getattr(runner, "dry_run", False):
            print(report(result, cfg))

    def main() -> None:
        _main()

    main.__doc__ = f"Console entry point ``{command}``."
    return main


def unknown_keys(node: Any, cfg: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of the composed ``node`` that no field of the config dataclass ``cfg`` holds (``+key=`` typos)."""
    if not dataclasses.is_dataclass(cfg) or not isinstance(node, DictConfig):
        return
    fields = {f.name for f in dataclasses.fields(cfg)}
    for key in node:
        name = str(key)
        if name not in fields:
            yield prefix + name
        else:
            yield from unknown_keys(node.get(name), getattr(cfg, name), f"{prefix}{name}.")
