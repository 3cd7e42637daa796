"""Local copies of model weights that live on object storage, so loaders can read plain files.

A copy is made once per machine and URI, safely:

* Object names are checked before anything is downloaded: a name under the weights prefix that would land
  outside the copy (``..`` or ``.`` segments, empty segments as in ``w//abs/path``, absolute names, NUL) is
  refused with a ``ValueError`` naming the object. Object stores allow such keys; a filesystem path built
  from one could overwrite any file the worker can write.
* Several worker processes on one machine load the same weights at once. The first takes an exclusive
  ``fcntl.flock`` on ``<target>.lock`` and downloads; the others wait on the lock, then find the finished copy
  and download nothing.
* A copy appears atomically: it is downloaded into a temporary folder next to the target, stamped
  ``.complete`` only when every file arrived, and renamed into place. A crash leaves a temporary folder (removed
  by the next copy of that URI), never a half copy that looks finished.
"""

import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from pipelines.config.storage import StorageConfig
from pipelines.storage import Storage, parse_uri


logger = logging.getLogger(__name__)

STAMP = ".complete"
_TMP_INFIX = ".tmp-"


def local_copy(uri: str, cache_dir: str, storage_cfg: StorageConfig) -> str:
    """A local path holding ``uri`` (a file or a directory/prefix); local paths are returned unchanged.

    Remote objects are copied once into ``cache_dir/<sha1 of the uri>/<last name of the uri>`` and reused
    afterwards; concurrent callers on one machine share one download (see the module docstring).

    Raises:
        ValueError: An object's name under the prefix would escape the copy; nothing is downloaded.
        FileNotFoundError: Nothing exists at ``uri``.
    """
    if parse_uri(uri).scheme in ("", "file"):
        return uri.removeprefix("file://")
    prefix = uri.rstrip("/")
    name = safe_relative_path(prefix.rsplit("/", 1)[-1], uri)
    target = os.path.join(cache_dir, hashlib.sha1(uri.encode()).hexdigest()[:16])
    copy = os.path.join(target, name)
    if os.path.exists(os.path.join(target, STAMP)):
        return copy
    os.makedirs(cache_dir, exist_ok=True)
    with _exclusive(target + ".lock", uri):
        if not os.path.exists(os.path.join(target, STAMP)):  # another process may have finished meanwhile
            _fetch(Storage(storage_cfg), prefix, target, name)
    return copy


def safe_relative_path(name: str, object_uri: str) -> str:
    """``name`` (an object's name relative to the weights prefix, ``/``-separated) as a relative local path.

    Raises:
        ValueError: ``name`` is empty, absolute, contains NUL, or has an empty, ``.`` or ``..`` segment, so the
            path built from it could leave the folder it is joined to; the message names the object.
    """
    problem = ""
    if "\x00" in name:
        problem = "it contains a NUL character"
    elif name.startswith("/"):
        problem = "it is absolute"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "it has an empty, '.' or '..' path segment"
    if problem:
        raise ValueError(
            f"refusing to copy weights object {object_uri!r}: its name {name!r} could escape the local cache folder "
            f"({problem}); rename the object"
        )
    return os.path.join(*name.split("/"))


@contextlib.contextmanager
def _exclusive(lock_path: str, uri: str) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``lock_path`` (created if missing) for the block; waits for other holders."""
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process copying %s", uri)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fetch(storage: Storage, prefix: str, target: str, name: str) -> None:
    """Downloads ``prefix`` (a folder of objects, else one object) into a temp folder, stamps it, renames it to
    ``target``. Runs under the lock, so leftovers of crashed copies of this URI can be removed first."""
    for stale in glob.glob(glob.escape(target) + _TMP_INFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    objects = list(storage.list(prefix + "/"))
    # Every name is checked before the first byte is written.
    files = [(o.uri, os.path.join(name, safe_relative_path(o.uri[len(prefix) + 1 :], o.uri))) for o in objects]
    if not files:
        files = [(prefix, name)]
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + _TMP_INFIX, dir=os.path.dirname(target))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the weights from other users of a shared cache
        for object_uri, relative in files:
            path = os.path.join(tmp, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _download(storage, object_uri, path)
        open(os.path.join(tmp, STAMP), "w").close()
        shutil.rmtree(target, ignore_errors=True)  # an unstamped copy left by an older version
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _download(storage: Storage, uri: str, path: str) -> None:
    """Stream ``uri`` to ``path`` (checkpoints are gigabytes: never read them whole into memory)."""
    with storage.open_read(uri) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, length=8 << 20)
