"""A job killed (SIGKILL: no cleanup, no ``finally``) right after its first write of a given kind.

``python -c kill_after_write(entry) PATTERN ARGS...`` patches every way the jobs write (``Storage.write_bytes``,
``Storage.upload_file`` and the shard job's ``TarSink.publish``, which renames a tar into place) so that the process
kills itself right after the first write whose URI matches the regular expression ``PATTERN``, then runs ``entry``
(Python source) with ``sys.argv[1:]`` = ``ARGS``. Tests use it to stop a job at each write boundary and check that
the rerun ends byte-identical to an uninterrupted run.
"""

_PATCH = """
import os, re, signal, sys
from pipelines.shard.publish import TarSink
from pipelines.storage import Storage
pattern = re.compile(sys.argv[1])
sys.argv = [sys.argv[0], *sys.argv[2:]]
def killing(original, uri_of):
    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if pattern.search(uri_of(self, args)):
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped
Storage.write_bytes = killing(Storage.write_bytes, lambda self, args: args[0])
Storage.upload_file = killing(Storage.upload_file, lambda self, args: args[-1])
TarSink.publish = killing(TarSink.publish, lambda self, args: self._uri)
"""


def kill_after_write(entry: str) -> str:
    """The ``python -c`` source: the patches above, then ``entry``."""
    return _PATCH + entry
