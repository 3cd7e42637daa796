"""The one shape of every command-line app: compose the Hydra config, validate, run, report.

Configuration errors print ``<command>: configuration error: <what and how to fix it>`` and exit 2;
a dry run (``runner.dry_run=true``) has already printed its launch plan, so nothing more is reported.
"""

import sys
from collections.abc import Callable
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
            configure_logging(getattr(cfg, "log_level", "INFO"))
            result = run(cfg)
        except ConfigError as exc:
            print(f"{command}: configuration error: {exc}", file=sys.stderr)
            sys.exit(2)
        runner = getattr(cfg, "runner", None)
        if not getattr(runner, "dry_run", False):
            print(report(result, cfg))

    def main() -> None:
        _main()

    main.__doc__ = f"Console entry point ``{command}``."
    return main
