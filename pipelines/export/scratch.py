"""The export's own scratch folder: where a shard-sized tar is built before it is published, and how a killed run's
leftovers go.

A tar format builds each shard's tar in a local file, then publishes it with one atomic storage write. That file
lives in the output's own temporary folder, ``<output>/_tmp/``, never in the system temp folder: it is on the
output's file system and quota, it is visibly the output's, and the next launch on that output removes whatever a
killed run left there (:func:`clear`), together with the storage layer's half-written temporaries in the folders the
export writes to. Only one run writes to an output at a time (as for every job here), so everything found there at
launch is stale.

An object-store output has no local folder of its own: its scratch folder is a local one named after the output
(``<system temp>/dpmesh-export-<digest of the output URI>``), cleared the same way by the next launch on the same
machine (a cloud worker's scratch goes with its VM).
"""

import contextlib
import hashlib
import os
import shutil
import tempfile

from pipelines.storage import parse_uri
from pipelines.storage.local import TEMP_PREFIX


SCRATCH_FOLDER = "_tmp"
# Folders of an export output that storage writes land in (a storage temporary is made next to its target).
_WRITE_FOLDERS = ("", "images", "_done")
_SPLIT_FOLDERS = ("", "images")  # a split's sub-folder holds what an output without splits holds, less _done


def folder(output: str) -> str:
    """The local scratch folder of ``output`` (see the module docstring); not created here."""
    parsed = parse_uri(output)
    if parsed.scheme == "file":
        return os.path.join(parsed.key or ".", SCRATCH_FOLDER)
    digest = hashlib.sha1(output.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"dpmesh-export-{digest}")


def new_file(output: str, prefix: str, suffix: str) -> str:
    """A new empty file in the scratch folder of ``output`` (created if needed); the caller removes it."""
    path = folder(output)
    os.makedirs(path, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path)
    os.close(handle)
    return name


def clear(output: str, splits: tuple[str, ...] = ()) -> int:
    """Removes the scratch folder of ``output`` and the storage layer's temporaries in the folders the export writes
    to (local outputs; ``splits``: the split sub-folders, with ``split=``); returns how many files went. Call at
    launch, before any worker writes."""
    removed = 0
    scratch = folder(output)
    if os.path.islink(scratch):  # a link planted where the scratch folder goes: drop the link, never follow it
        os.remove(scratch)
        removed += 1
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        removed += sum(len(files) for _, _, files in os.walk(scratch))
        shutil.rmtree(scratch)
    parsed = parse_uri(output)
    if parsed.scheme != "file":
        return removed
    root = parsed.key or "."
    for sub in (*_WRITE_FOLDERS, *(os.path.join(split, folder) for split in splits for folder in _SPLIT_FOLDERS)):
        path = os.path.join(root, sub)
        if os.path.realpath(path) != os.path.join(os.path.realpath(root), sub).rstrip(os.sep):
            continue  # a link planted where a folder of the output goes (images/, a split's): never cleared through
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            os.scandir(path) as entries,
        ):
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(entry.path)
                        removed += 1
    return removed


def remove_if_empty(output: str) -> None:
    """Removes the scratch folder once a run is over and it holds nothing (a finished output carries no ``_tmp``)."""
    with contextlib.suppress(OSError):
        os.rmdir(folder(output))
