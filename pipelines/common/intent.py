"""A job's intent, recorded in its output before the first unit is written: which run the output's files belong to.

A job commits unit by unit (a shard's files, then its marker). A kill between a unit's first file and its marker
leaves files no marker vouches for; if the kill came before any marker at all, nothing in the output said which
configuration wrote them, and a rerun had to refuse them as "another run's". The intent closes that gap: written
once, before any unit, it names the job and its config hash, so a rerun with the same config knows the unmarked
files are its own unfinished work (redone) and a rerun with another config is refused.
"""

from __future__ import annotations

import json

from pipelines.config import ConfigError
from pipelines.storage import Storage, join


INTENT_NAME = "_intent.json"


def record_intent(storage: Storage, output: str, job: str, config_hash: str) -> None:
    """Writes ``<output>/_intent.json`` (canonical JSON: a rerun with the same config writes the same bytes)."""
    document = {"created_by": job, "config_hash": config_hash}
    storage.write_bytes(join(output, INTENT_NAME), json.dumps(document, sort_keys=True).encode())


def recorded_intent(storage: Storage, output: str) -> str | None:
    """The config hash the output's intent records, or None when it has none (a new output, or an older one)."""
    try:
        document = json.loads(storage.read_bytes(join(output, INTENT_NAME)))
    except FileNotFoundError:
        return None
    value = document.get("config_hash") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def refuse_another_run(output: str, what: str, differs: str = "a different config or input") -> ConfigError:
    """The one wording, for every job, of "this output holds another run's work": names the output, what it holds,
    how that run differs, and the two ways out."""
    return ConfigError(
        f"output={output!r} holds {what} of another run ({differs}); choose another output or pass overwrite=true"
    )


def check_intent(storage: Storage, output: str, config_hash: str, what: str) -> None:
    """Refuses an output whose recorded intent is another config's.

    Raises:
        ConfigError: :func:`refuse_another_run`.
    """
    recorded = recorded_intent(storage, output)
    if recorded is not None and recorded != config_hash:
        raise refuse_another_run(output, what)
