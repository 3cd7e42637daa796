"""A job killed (SIGKILL: no cleanup, no ``finally``) right after its first write of a given kind.

``python -c kill_after_write(entry) PATTERN ARGS...`` patches every way the jobs write (``Storage.write_bytes``,
``Storage.upload_file`` and the shard job's ``TarSink.publish``, which renames a tar into place) so that the process
kills itself right after the first write (the ``count``-th, with ``count``) whose URI matches the regular expression
``PATTERN``, then runs ``entry`` (Python source) with ``sys.argv[1:]`` = ``ARGS``. Tests use it to stop a job at each
write boundary, or after a known number of committed units, and check that the rerun ends byte-identical to an
uninterrupted run. The kill lands at that write whatever the machine's speed: no timing is involved.
"""

_PATCH = """
import os, re, signal, sys, threading
from pipelines.shard.publish import TarSink
from pipelines.storage import Storage
pattern = re.compile(sys.argv[1])
sys.argv = [sys.argv[0], *sys.argv[2:]]
matched, lock = [0], threading.Lock()
def killing(original, uri_of):
    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if pattern.search(uri_of(self, args)):
            with lock:
                matched[0] += 1
                if matched[0] >= KILL_AT:
                    os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped
Storage.write_bytes = killing(Storage.write_bytes, lambda self, args: args[0])
Storage.upload_file = killing(Storage.upload_file, lambda self, args: args[-1])
# A local tar is renamed into place; an object-store tar is uploaded (upload_file counts that write).
TarSink.publish = killing(TarSink.publish, lambda self, args: self._uri if self._local_target is not None else "")
"""


def kill_after_write(entry: str, count: int = 1) -> str:
    """The ``python -c`` source: the patches above, killing at the ``count``-th matching write, then ``entry``."""
    return f"KILL_AT = {count}\n" + _PATCH + entry
