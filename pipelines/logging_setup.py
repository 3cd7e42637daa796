"""Logging for the command-line entry points."""

import logging


# Beam's RunInference logs this through the root logger on every batch where the `resource` module's
# memory figures are unavailable; it says nothing about the run.
_NOISE = ("Resource module is not available",)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_NOISE)


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``. Beam configures the root logger on import, hence ``force=True``."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    root = logging.getLogger()
    if not any(isinstance(f, _DropNoise) for f in root.filters):
        root.addFilter(_DropNoise())
