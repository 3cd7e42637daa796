"""Listing the files of a corpus: a directory, glob or object-store prefix, or a manifest of URIs.

Listing is lazy (the storage layer pages through object stores) so that a corpus of millions of objects
never has to fit in one process's memory. A local folder or an object-store prefix is listed in parallel,
one :class:`ListingTask` per top-level sub-folder (object stores: one delimiter listing of the top level finds
them); globs and manifests are one task each.

Local folders are walked here rather than through the storage layer's listing, because what a folder may
hold is decided here, and reported, never skipped silently: symbolic links (followed inside the input
folder; outside it only with ``input.follow_symlinks=true``), dangling links and loops, FIFOs, sockets and
devices (never opened: a FIFO blocks its reader), and names that are not UTF-8. Such entries are listed
with a ``problem`` and become ``_errors.parquet`` rows; dotfiles are ordinary inputs.
"""

import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter

import pyarrow.parquet as pq

from pipelines.config import InputConfig
from pipelines.storage import Storage, join, parse_uri
from pipelines.storage.uri import WILDCARD_CHARS, glob_regex
from schemas import ErrorReason


_MANIFEST_COLUMNS = ("uri", "source_uri")


@dataclass(frozen=True)
class SourceFile:
    """One input entry.

    Attributes:
        uri: Where to read it.
        relpath: Its path relative to the corpus root (or, for manifest entries, the URI without scheme);
            the sample key is derived from it.
        size: Size in bytes when the listing knows it, else ``None``.
        problem: ``(reason, message)`` when the entry cannot be an input (see module doc); it is reported,
            never read.
    """

    uri: str
    relpath: str
    size: int | None
    problem: tuple[str, str] | None = None


@dataclass(frozen=True)
class ListingTask:
    """One independently listable part of the input: ``under`` is a top-level sub-folder of the input folder
    or prefix, ``""`` its own top-level entries, ``None`` the whole input (globs, manifests)."""

    under: str | None


def listing_tasks(storage: Storage, cfg: InputConfig) -> list[ListingTask]:
    """The parts the input is listed in, in parallel: one per top-level sub-folder of the input folder or prefix."""
    images = cfg.images
    if cfg.manifest or images is None or _is_glob(images):
        return [ListingTask(None)]
    if parse_uri(images).scheme != "file":
        root = images.rstrip("/") + "/"
        names = (uri[len(root) :].rstrip("/") for uri in storage.subfolders(root))
        return [ListingTask(""), *(ListingTask(name) for name in names if name)]
    path = parse_uri(images).key
    try:
        with os.scandir(path) as it:
            subdirs = sorted(e.name for e in it if e.is_dir(follow_symlinks=False) and _is_utf8(e.name))
    except OSError:  # missing or not a folder: one task, which lists nothing
        return [ListingTask(None)]
    return [ListingTask(""), *(ListingTask(name) for name in subdirs)]


def list_corpus(storage: Storage, cfg: InputConfig) -> Iterator[SourceFile]:
    """Every input entry of the corpus described by ``cfg``, lazily (every task in turn)."""
    for task in listing_tasks(storage, cfg):
        yield from list_task(storage, cfg, task)


def list_task(storage: Storage, cfg: InputConfig, task: ListingTask) -> Iterator[SourceFile]:
    """The input entries of one :class:`ListingTask`, narrowed to ``cfg.extensions`` when set."""
    if cfg.manifest:
        files = _list_manifest(storage, cfg.manifest)
    else:
        files = _list_images(storage, str(cfg.images), task, cfg.follow_symlinks)
    if not cfg.extensions:
        yield from files
        return
    wanted = set(cfg.extensions)
    yield from (f for f in files if _extension(f.relpath) in wanted)


def _is_glob(images: str) -> bool:
    return any(ch in images for ch in WILDCARD_CHARS)


def _extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _list_images(storage: Storage, images: str, task: ListingTask, follow: bool) -> Iterator[SourceFile]:
    glob = _is_glob(images)
    if glob:
        root = images[: min(images.find(ch) for ch in WILDCARD_CHARS if ch in images)].rsplit("/", 1)[0] + "/"
    else:
        root = images.rstrip("/") + "/"
    if parse_uri(images).scheme != "file":
        if glob:
            objects = storage.glob(images)
        elif task.under is None:
            objects = storage.list(root)
        elif task.under == "":
            objects = storage.list_top(root)
        else:
            objects = storage.list(root + task.under + "/")
        for obj in objects:
            yield SourceFile(uri=obj.uri, relpath=obj.uri[len(root) :], size=obj.size)
        return
    walker = _LocalWalker(root, follow)
    if task.under is None:
        entries = walker.walk("", recursive=True)
    elif task.under == "":
        entries = walker.walk("", recursive=False)
    else:
        entries = walker.walk(task.under + "/", recursive=True)
    if glob:
        regex = glob_regex(images)
        entries = (e for e in entries if regex.match(e.uri))
    yield from entries


class _LocalWalker:
    """Walks a local folder in path order, classifying every entry (see the module doc)."""

    def __init__(self, root_uri: str, follow: bool) -> None:
        self._root_uri = root_uri
        self._root = parse_uri(root_uri).key.rstrip("/") or "/"
        self._real_root = os.path.realpath(self._root)
        self._follow = follow

    def walk(self, rel_dir: str, *, recursive: bool) -> Iterator[SourceFile]:
        """Entries under ``rel_dir`` (``""`` or ``"a/b/"``); without ``recursive``, real sub-folders are left out
        (their own tasks list them)."""
        directory = os.path.join(self._root, rel_dir)
        try:
            st = os.stat(directory)
        except OSError:
            return
        yield from self._walk_dir(rel_dir, frozenset({(st.st_dev, st.st_ino)}), recursive)

    def _walk_dir(self, rel_dir: str, ancestors: frozenset[tuple[int, int]], recursive: bool) -> Iterator[SourceFile]:
        try:
            with os.scandir(os.path.join(self._root, rel_dir)) as it:
                entries = sorted(it, key=attrgetter("name"))
        except OSError as exc:  # unreadable folder: report it rather than lose its files silently
            yield self._problem(rel_dir.rstrip("/"), ErrorReason.READ_FAILED, f"cannot list folder: {exc.strerror}")
            return
        for entry in entries:
            relpath = rel_dir + entry.name
            if entry.is_symlink():
                yield from self._link(entry, relpath, ancestors)
            elif entry.is_dir(follow_symlinks=False):
                if recursive:
                    st = entry.stat(follow_symlinks=False)
                    yield from self._walk_dir(relpath + "/", ancestors | {(st.st_dev, st.st_ino)}, True)
            else:
                yield self._entry(relpath, entry.stat(follow_symlinks=False))

    def _link(
        self, entry: os.DirEntry[str], relpath: str, ancestors: frozenset[tuple[int, int]]
    ) -> Iterator[SourceFile]:
        target = os.path.realpath(entry.path)
        try:
            st = os.stat(entry.path)  # follows the link; ELOOP and ENOENT land below
        except OSError as exc:
            yield self._problem(relpath, ErrorReason.BROKEN_LINK, f"symbolic link to {target!r}: {exc.strerror}")
            return
        inside = target == self._real_root or target.startswith(self._real_root.rstrip("/") + "/")
        if not inside and not self._follow:
            message = (
                f"symbolic link to {target!r}, outside the input folder; set input.follow_symlinks=true to read it"
            )
            yield self._problem(relpath, ErrorReason.OUTSIDE_INPUT, message)
        elif stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in ancestors:
                yield self._problem(relpath, ErrorReason.BROKEN_LINK, f"symbolic link loops back to {target!r}")
            else:
                yield from self._walk_dir(relpath + "/", ancestors | {(st.st_dev, st.st_ino)}, True)
        else:
            yield self._entry(relpath, st)

    def _entry(self, relpath: str, st: os.stat_result) -> SourceFile:
        if not _is_utf8(relpath):
            shown = _escaped(relpath)
            message = f"file name {shown!r} is not valid UTF-8; rename the file to shard it"
            return SourceFile(self._root_uri + shown, shown, 0, (ErrorReason.INVALID_FILE_NAME.value, message))
        if not stat.S_ISREG(st.st_mode):
            return self._problem(relpath, ErrorReason.NOT_A_FILE, f"not a regular file but a {_kind(st.st_mode)}")
        return SourceFile(self._root_uri + relpath, relpath, st.st_size)

    def _problem(self, relpath: str, reason: ErrorReason, message: str) -> SourceFile:
        shown = relpath if _is_utf8(relpath) else _escaped(relpath)
        return SourceFile(self._root_uri + shown, shown, 0, (reason.value, message))


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir gives undecodable bytes as lone surrogates
        return False
    return True


def _escaped(name: str) -> str:
    """A printable UTF-8 spelling of a name holding undecodable bytes (``\\xff`` for byte 0xff)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device")):
        if test(mode):
            return name
    return "block device" if stat.S_ISBLK(mode) else "special file"


def _list_manifest(storage: Storage, manifest: str) -> Iterator[SourceFile]:
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    for entry in _manifest_entries(storage, manifest):
        uri = entry if "://" in entry or entry.startswith("/") else join(base, entry)
        parsed = parse_uri(uri)
        relpath = f"{parsed.bucket}/{parsed.key}" if parsed.bucket else parsed.key.lstrip("/")
        yield SourceFile(uri=uri, relpath=relpath, size=None)


def _manifest_entries(storage: Storage, manifest: str) -> Iterator[str]:
    content = storage.read_bytes(manifest)
    if manifest.lower().endswith(".parquet"):
        table = pq.read_table(io.BytesIO(content))
        column = next((c for c in _MANIFEST_COLUMNS if c in table.column_names), None)
        if column is None:
            raise ValueError(f"manifest {manifest} has no column named one of {_MANIFEST_COLUMNS}")
        yield from (str(v) for v in table.column(column).to_pylist() if v)
        return
    for line in content.decode("utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry
