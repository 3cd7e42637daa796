"""What a job run in this process wrote and deleted, as recorded events rather than file times.

:func:`recorded_writes` wraps every way the jobs change an output (``Storage.write_bytes``, ``Storage.upload_file``,
``Storage.delete`` and the shard job's ``TarSink.publish``, which renames a finished tar into place: the same calls
tests/fakes/kill.py stops a job at) and records each call's URI, in order. Runs in this process only (the in-memory
runners): a test that needs another runner's writes compares bytes instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipelines.shard.publish import TarSink
from pipelines.storage import Storage


@dataclasses.dataclass
class Writes:
    """The URIs written and deleted, in call order (a URI repeats when it is written twice)."""

    written: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)

    def touching(self, names: set[str] | list[str], root: str) -> list[str]:
        """The writes and deletes of ``root/<name>`` for one of ``names`` (paths relative to ``root``)."""
        uris = {f"{root.rstrip('/')}/{name}" for name in names}
        return [uri for uri in [*self.written, *self.deleted] if uri in uris]


@contextlib.contextmanager
def recorded_writes() -> Iterator[Writes]:
    """Records the writes and deletes of every job run inside the block (see the module docstring)."""
    writes = Writes()
    lock = threading.Lock()

    def recording(original: Callable[..., Any], into: list[str], uri_of: Callable[[Any, tuple], str | None]) -> Any:
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            if (uri := uri_of(self, args)) is not None:
                with lock:
                    into.append(uri)
            return result

        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Storage, "write_bytes", recording(Storage.write_bytes, writes.written, lambda s, a: a[0]))
        mp.setattr(Storage, "upload_file", recording(Storage.upload_file, writes.written, lambda s, a: a[-1]))
        mp.setattr(Storage, "delete", recording(Storage.delete, writes.deleted, lambda s, a: a[0]))
        # A local tar is renamed into place; an object-store tar is uploaded (recorded by upload_file).
        local_tar = lambda sink, args: sink._uri if sink._local_target is not None else None  # noqa: E731
        mp.setattr(TarSink, "publish", recording(TarSink.publish, writes.written, local_tar))
        yield writes
