"""A folder of per-unit markers plus their index: the one home of how every job's ``_done/`` is read and indexed.

A job commits each unit of work (a shard) with a marker, ``<output>/_done/<unit>.json``, written after the unit's
files (:mod:`pipelines.common.commit_log`). Reading every marker costs one GET each (~5 ms on S3: 5-6 minutes for
100k units on one core), so the step that ends a run also writes an index, ``<output>/_done_index.json.gz``: of
every marker, the fields that planning and the run's summary need (a :class:`MarkerIndex` names them: the label
jobs' in :mod:`pipelines.common.label_set`, ``dpmesh-export``'s in :mod:`pipelines.export.finish`). Readers list
``_done/`` (one request per 1,000 names), take what the index holds for the listed units, and GET only the markers it
lacks (written by a run that died before its last step), :data:`MARKER_READERS` at a time.

The index can only lag the markers, never lead them: it is written after the markers it covers, from them. An entry
older than its marker names an older state of the unit, which makes planning redo that unit once more (the same
bytes), never skip one that needs work. Markers deleted by hand are gone from the listing, so their entries are
ignored. A marker is data like any other: one that is not a JSON object naming its own unit is refused, and an index
that is not one is read as absent (logged): it is a cache of the markers.
"""

import gzip
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipelines.config import ConfigError
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)


DONE_FOLDER = "_done"
INDEX_NAME = "_done_index.json.gz"
"""The index's object name, beside ``_done/`` in every output that has one."""
# Concurrent marker GETs: reading many small objects is latency-bound; 32 matches the S3 client's pool.
MARKER_READERS = 32


@dataclass(frozen=True)
class MarkerIndex:
    """What one kind of output's index keeps of each marker.

    Attributes:
        fields: The marker fields an entry holds (what planning compares and what the run's summary adds up); a
            field a marker lacks is left out of its entry. ``shard`` and ``counts`` are always among them: every
            entry is checked for both when the index is read.
        name: The index's object name under the output.
    """

    fields: tuple[str, ...]
    name: str = INDEX_NAME

    def entry(self, marker: dict[str, Any]) -> dict[str, Any]:
        """The fields of ``marker`` the index keeps."""
        return {k: marker[k] for k in self.fields if k in marker}


def marker_uri(output: str, unit: str) -> str:
    """``<output>/_done/<unit>.json``."""
    return join(output, DONE_FOLDER, f"{unit}.json")


def listed_markers(storage: Storage, output: str) -> dict[str, str]:
    """``{unit: marker URI}`` of every ``<output>/_done/*.json`` (a job's per-unit commits)."""
    return {
        obj.uri.rsplit("/", 1)[-1].removesuffix(".json"): obj.uri
        for obj in storage.list(join(output, DONE_FOLDER))
        if obj.uri.endswith(".json")
    }


def fetch_markers(storage: Storage, uris: list[str]) -> dict[str, dict[str, Any]]:
    """The markers at ``uris``, read :data:`MARKER_READERS` at a time (one GET each), by their ``shard`` field.

    A marker whose ``shard`` is not the name of the file it is in (a name later joined into paths), or that is not
    a JSON object with its counts, is refused rather than trusted.

    Raises:
        ConfigError: naming the marker and how to get past it.
    """
    if not uris:
        return {}
    with ThreadPoolExecutor(min(MARKER_READERS, len(uris))) as pool:
        documents = list(pool.map(storage.read_bytes, uris))
    markers = {}
    for uri, data in zip(uris, documents, strict=True):
        name = uri.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            marker = json.loads(data)
        except ValueError:
            marker = None
        if not isinstance(marker, dict) or marker.get("shard") != name or not isinstance(marker.get("counts"), dict):
            raise ConfigError(
                f"{uri} is not a marker this pipeline wrote (not a JSON object with shard={name!r} and its counts): "
                "remove it, or rerun the job that wrote the folder with overwrite=true"
            )
        markers[name] = marker
    return markers


def read_index(storage: Storage, output: str, index: MarkerIndex) -> dict[str, dict[str, Any]]:
    """The output's marker index by unit name; empty when there is none yet, or when it is unreadable (logged)."""
    uri = join(output, index.name)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return {}
    try:
        entries = json.loads(gzip.decompress(data))["markers"]
    except (OSError, ValueError, KeyError, TypeError):
        entries = None
    if not isinstance(entries, dict) or not all(
        isinstance(v, dict) and v.get("shard") == k and isinstance(v.get("counts"), dict) for k, v in entries.items()
    ):
        logger.warning("%s is not a marker index: the markers are read instead", uri)
        return {}
    return entries


def index_bytes(index: MarkerIndex, markers: dict[str, dict[str, Any]]) -> bytes:
    """The index document of ``markers``: the same markers give the same bytes (sorted keys, gzip without a
    timestamp)."""
    entries = {unit: index.entry(m) for unit, m in sorted(markers.items())}
    document = json.dumps({"markers": entries}, sort_keys=True, separators=(",", ":")).encode()
    return gzip.compress(document, mtime=0)


def write_index(storage: Storage, output: str, index: MarkerIndex, markers: dict[str, dict[str, Any]]) -> None:
    """Replaces the output's index with the indexed fields of ``markers`` (one PUT)."""
    storage.write_bytes(join(output, index.name), index_bytes(index, markers))


def read_markers(
    storage: Storage,
    output: str,
    index: MarkerIndex,
    *,
    names: set[str] | None = None,
    known: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The markers under ``output`` (only those of ``names`` if given), by unit name.

    Entries come from ``known`` (what this run just wrote, handed over by the step that wrote it), then from the
    index; only markers neither holds are read (one GET each). Index entries hold ``index.fields`` only; ``known``
    and read markers are returned as they are, so a reader uses only ``index.fields`` of any of them.
    """
    listed = listed_markers(storage, output)
    if names is not None:
        listed = {unit: uri for unit, uri in listed.items() if unit in names}
    indexed = read_index(storage, output, index) if listed else {}
    known = known or {}
    cached = {unit: known.get(unit) or indexed[unit] for unit in listed if unit in known or unit in indexed}
    missing = [uri for unit, uri in sorted(listed.items()) if unit not in cached]
    return {**cached, **fetch_markers(storage, missing)}
