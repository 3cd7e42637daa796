"""The shape of a format writer, and the deterministic WebDataset tar both tar formats write.

A writer gets one shard's images in key order (:meth:`ShardWriter.add`) and publishes the shard's files on
:meth:`ShardWriter.close`, before the job writes the shard's marker. Files are named after the input shard
(``shard-NNNNNN.tar`` / ``.npz``), so an export has one file per labeled shard and a rerun replaces a shard's files
whole (storage writes are atomic).
"""

import io
import os
import tarfile
import tempfile
from abc import ABC, abstractmethod

from pipelines.config import ExportOptionsConfig
from pipelines.export.records import ExportImage
from pipelines.storage import Storage, join


class ShardWriter(ABC):
    """Writes one input shard's selected persons under ``output`` in one trainer format.

    Args:
        storage: Where the output goes. output: The export's folder. shard: ``shard-NNNNNN``.
        options: ``export.*`` (crop size, JPEG quality).
    """

    def __init__(self, storage: Storage, output: str, shard: str, options: ExportOptionsConfig) -> None:
        self.storage = storage
        self.output = output
        self.shard = shard
        self.options = options

    @abstractmethod
    def add(self, image: ExportImage) -> None:
        """Adds one image and its persons (called in image-key order)."""

    @abstractmethod
    def close(self) -> list[str]:
        """Publishes the shard's files; returns their URIs."""

    def abort(self) -> None:  # noqa: B027 - optional: writers without local state have nothing to drop
        """Drops local state after a failure (the shard is redone by the next run)."""

    def remove_unselected(self, image_keys: set[str]) -> None:  # noqa: B027 - optional, see below
        """Removes what an earlier export of this shard wrote for ``image_keys`` (the shard's images this export
        did not write), after :meth:`close`. Writers whose files are all per shard (a tar, replaced whole) have
        nothing to remove."""


class TarBuilder:
    """A WebDataset tar built in a local temporary file with reproducible headers (mtime 0, root, 0644).

    Members of one sample share the key before the first dot, in the order added (WebDataset groups consecutive
    members by key).
    """

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="dpmesh-export-", suffix=".tar")
        os.close(handle)
        self._tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in publish
        self._open = True

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def publish(self, storage: Storage, uri: str) -> None:
        """Finishes the tar and uploads it to ``uri`` (atomically), then removes the local file."""
        self._close()
        try:
            storage.upload_file(self.path, uri)
        finally:
            self.discard()

    def _close(self) -> None:
        if self._open:
            self._tar.close()
            self._open = False

    def discard(self) -> None:
        """Closes and removes the local file (after publishing, or after a failure)."""
        self._close()
        if os.path.exists(self.path):
            os.remove(self.path)


class TarShardWriter(ShardWriter):
    """A writer whose shard is one WebDataset tar, ``<output>/shard-NNNNNN.tar`` (``hmr2``, ``crops``): subclasses
    add members to ``self.tar``."""

    def __init__(self, storage: Storage, output: str, shard: str, options: ExportOptionsConfig) -> None:
        super().__init__(storage, output, shard, options)
        self.tar = TarBuilder()

    def close(self) -> list[str]:
        uri = join(self.output, f"{self.shard}.tar")
        self.tar.publish(self.storage, uri)
        return [uri]

    def abort(self) -> None:
        self.tar.discard()
