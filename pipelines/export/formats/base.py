"""The shape of a format writer, and the deterministic WebDataset tar both tar formats write.

A writer gets one shard's images in key order (:meth:`ShardWriter.add`) and publishes the shard's files on
:meth:`ShardWriter.close`, before the job writes the shard's marker. Files are named after the input shard
(``shard-NNNNNN.tar`` / ``.npz``, a labels release's ``.labels.parquet`` + ``.images.parquet``), so an export has one
file (or pair) per labeled shard and a rerun replaces a shard's files whole (storage writes are atomic). With
``split=`` the job gives each split its own writer, whose ``output`` is the split's sub-folder: the same names there.

Every name a writer makes from data (an image key, a sample id) is one plain segment: file paths go through
:func:`~pipelines.common.safe_paths.safe_join` and tar members through
:func:`~pipelines.common.safe_paths.safe_member_name`, so a key that slipped past the job's row checks raises
:class:`~pipelines.common.safe_paths.UnsafeName` instead of naming a file outside ``output`` or a member that a
``tar -x`` would write outside its folder.

A tar is built in a file of the output's own scratch folder (``<output>/_tmp/``, :mod:`pipelines.export.scratch`),
published with one atomic storage write on close and removed on success or failure; a killed run's leftover is
removed by the next launch. Nothing goes to the system temp folder (but for an object-store output, whose scratch
folder must be local).
"""

import contextlib
import io
import os
import tarfile
from abc import ABC, abstractmethod

import pyarrow as pa

from pipelines.common.safe_paths import safe_join, safe_member_name
from pipelines.config import ExportOptionsConfig
from pipelines.export import scratch
from pipelines.export.records import ExportImage
from pipelines.storage import Storage


class ShardWriter(ABC):
    """Writes one input shard's selected persons under ``output`` in one trainer format.

    Args:
        storage: Where the output goes. output: The folder the shard's files go to: the export's, or with
            ``split=`` one split's sub-folder of it. shard: ``shard-NNNNNN``.
        options: ``export.*`` (crop size, JPEG quality, box scale).
        config_hash: The export's config hash, for writers that record it in their files.
        scratch_root: The export's folder, whose scratch folder builds tars (:mod:`pipelines.export.scratch`);
            ``output`` when not given.
    """

    WRITES_IMAGES = True
    """Whether :meth:`add` uses the image (``ExportImage.jpeg`` / ``pixels``); the job encodes no JPEG otherwise."""
    WRITES_ROWS = False
    """Whether the writer takes the exported annotation rows (:meth:`add_rows`) before :meth:`close`."""

    def __init__(
        self,
        storage: Storage,
        output: str,
        shard: str,
        options: ExportOptionsConfig,
        config_hash: str = "",
        scratch_root: str | None = None,
    ) -> None:
        self.storage = storage
        self.output = output
        self.shard = shard
        self.options = options
        self.config_hash = config_hash
        self.scratch_root = scratch_root or output

    @abstractmethod
    def add(self, image: ExportImage) -> None:
        """Adds one image and its persons (called in image-key order).

        Raises:
            UnsafeName: a name made from the image's key or a sample id is not one plain segment inside ``output``.
        """

    def add_rows(self, rows: pa.Table) -> None:  # noqa: B027 - optional: only writers with WRITES_ROWS take rows
        """The annotation rows of every person added, in their table order (called once, before :meth:`close`)."""

    @abstractmethod
    def close(self) -> list[str]:
        """Publishes the shard's files; returns their URIs."""

    def abort(self) -> None:  # noqa: B027 - optional: writers without local state have nothing to drop
        """Drops local state after a failure (the shard is redone by the next run)."""

    def remove_unselected(self, image_keys: set[str]) -> None:  # noqa: B027 - optional, see below
        """Removes what an earlier export of this shard wrote for ``image_keys`` (the shard's images this export
        did not write), after :meth:`close`. Writers whose files are all per shard (a tar, replaced whole) have
        nothing to remove."""

    SHARD_SUFFIX = ""
    """The extension of the one file per shard (``.tar``, ``.npz``)."""

    @classmethod
    def withdraw(cls, storage: Storage, output: str, shard: str, image_keys: set[str]) -> None:
        """Removes an earlier export of ``shard`` (its file, and per-image files of ``image_keys``): the shard now
        exports nothing (it was refused), and no training file may say otherwise."""
        storage.delete(safe_join(output, f"{shard}{cls.SHARD_SUFFIX}", what="shard name"))


class TarBuilder:
    """A WebDataset tar for ``uri``, built in the output's scratch folder with reproducible headers (mtime 0, root,
    0644) and published whole.

    Members of one sample share the key before the first dot, in the order added (WebDataset groups consecutive
    members by key). Member names must be one plain segment (:func:`safe_member_name`).
    """

    def __init__(self, storage: Storage, output: str, uri: str) -> None:
        self._storage = storage
        self._uri = uri
        self.path = scratch.new_file(output, prefix=f"{uri.rsplit('/', 1)[-1]}-", suffix=".part")
        self._tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in publish
        self._open = True

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(safe_member_name(name))
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def publish(self) -> None:
        """Finishes the tar and uploads it to ``uri`` (atomically), then removes the scratch file."""
        self._close()
        try:
            self._storage.upload_file(self.path, self._uri)
        finally:
            self.discard()

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._tar.close()

    def discard(self) -> None:
        """Closes and removes the scratch file (after publishing, or after a failure)."""
        try:
            self._close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)


class TarShardWriter(ShardWriter):
    """A writer whose shard is one WebDataset tar, ``<output>/shard-NNNNNN.tar`` (``hmr2``, ``crops``): subclasses
    add members to ``self.tar``."""

    SHARD_SUFFIX = ".tar"

    def __init__(
        self,
        storage: Storage,
        output: str,
        shard: str,
        options: ExportOptionsConfig,
        config_hash: str = "",
        scratch_root: str | None = None,
    ) -> None:
        super().__init__(storage, output, shard, options, config_hash, scratch_root)
        self.uri = safe_join(output, f"{shard}{self.SHARD_SUFFIX}", what="shard name")
        self.tar = TarBuilder(storage, self.scratch_root, self.uri)

    def close(self) -> list[str]:
        self.tar.publish()
        return [self.uri]

    def abort(self) -> None:
        self.tar.discard()
