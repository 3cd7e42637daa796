"""Local copies of model weights that live on object storage, so loaders can read plain files."""

import hashlib
import os
import shutil

from pipelines.config.storage import StorageConfig
from pipelines.storage import Storage, parse_uri


def local_copy(uri: str, cache_dir: str, storage_cfg: StorageConfig) -> str:
    """A local path holding ``uri`` (a file or a directory/prefix); local paths are returned unchanged.

    Remote objects are copied once into ``cache_dir/<sha1 of the uri>/`` and reused afterwards; a copy is
    complete only once its ``.complete`` stamp exists, so an interrupted download is redone.
    """
    if parse_uri(uri).scheme in ("", "file"):
        return uri.removeprefix("file://")
    target = os.path.join(cache_dir, hashlib.sha1(uri.encode()).hexdigest()[:16])
    stamp = os.path.join(target, ".complete")
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    storage = Storage(storage_cfg)
    if not os.path.exists(stamp):
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        objects = list(storage.list(uri.rstrip("/") + "/"))
        if objects:  # a directory of files, e.g. converted weights
            for obj in objects:
                relative = obj.uri[len(uri.rstrip("/")) + 1 :]
                os.makedirs(os.path.dirname(os.path.join(target, name, relative)), exist_ok=True)
                _download(storage, obj.uri, os.path.join(target, name, relative))
        else:
            _download(storage, uri, os.path.join(target, name))
        open(stamp, "w").close()
    return os.path.join(target, name)


def _download(storage: Storage, uri: str, path: str) -> None:
    """Stream ``uri`` to ``path`` (checkpoints are gigabytes: never read them whole into memory)."""
    with storage.open_read(uri) as src, open(path + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, length=8 << 20)
    os.replace(path + ".part", path)
