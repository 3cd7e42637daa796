"""What a label output is on storage, the one home of its names: what ``dpmesh-label`` and ``dpmesh-refilter``
write, what ``dpmesh-export``, ``dpmesh-eval`` and ``dpmesh-report`` read.

A label output holds ``annotations/``, ``rejected/`` and ``errors/`` Parquet per shard, a marker per shard in
``_done/`` (written last: the shard's commit, and the truth about the shard) and ``_summary.json`` (written at the
end of a run). ``dpmesh-export`` writes its own per-shard markers the same way (:func:`marker_uri`).

Reading every marker costs one GET each: ~300/s on one core, 5-6 minutes for 100k shards. So the run's last
step (the summary) also writes ``_done_index.json.gz``: the fields of every marker that planning and summaries
need. Readers list ``_done/`` (one request per 1,000 names), take what the index holds for the listed shards, and
GET only markers the index does not hold (written by a run that died before its summary), in parallel.

The index can only lag the markers, never lead them: an entry older than its marker names an older shard identity,
which makes planning relabel that shard once more (same bytes), never skip one that needs labels. Markers deleted
by hand are gone from the listing, so their entries are ignored.
"""

import gzip
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipelines.config import ConfigError
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)


ROW_FOLDERS = ("annotations", "rejected")
"""The row folders: accepted persons, rejected persons (one schema), a Parquet file per shard in each."""
ERRORS_FOLDER = "errors"
"""Per-image and per-person failures, a Parquet file per shard."""
DONE_FOLDER = "_done"
SUMMARY_NAME = "_summary.json"
LABEL_RUN = "label_run"
"""Key, in a ``dpmesh-refilter`` output's summary, markers and file metadata, of the labeling run behind it."""
# Concurrent marker GETs: reading many small objects is latency-bound; 32 matches the S3 client's pool.
MARKER_READERS = 32


def listed_markers(storage: Storage, output: str) -> dict[str, str]:
    """``{shard: marker URI}`` of every ``<output>/_done/*.json`` (a job's per-shard commits)."""
    return {
        obj.uri.rsplit("/", 1)[-1].removesuffix(".json"): obj.uri
        for obj in storage.list(join(output, DONE_FOLDER))
        if obj.uri.endswith(".json")
    }


def fetch_markers(storage: Storage, uris: list[str]) -> dict[str, dict[str, Any]]:
    """The markers at ``uris``, read :data:`MARKER_READERS` at a time, by their ``shard`` field.

    A marker is data like any other: one that is not a JSON object, or whose ``shard`` is not the name of the
    file it is in (a name later joined into paths), is refused rather than trusted.

    Raises:
        ConfigError: naming the marker and how to get past it.
    """
    with ThreadPoolExecutor(MARKER_READERS) as pool:
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


def read_summary(storage: Storage, output: str) -> dict[str, Any] | None:
    """``<output>/_summary.json``, or None when there is none or it is not a JSON object (logged): the summary
    is a record of a run, never the truth about a shard (the markers are), so readers can go on without it."""
    uri = join(output, SUMMARY_NAME)
    try:
        document = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        logger.warning("%s is not a JSON object: read as absent", uri)
        return None
    return document


INDEX_NAME = "_done_index.json.gz"
# What the index keeps of a marker: what planning compares and what summaries add up.
INDEXED_FIELDS = (
    "shard",
    "elapsed_s",  # per-shard throughput (dpmesh-report); absent from refiltered and older markers
    "shard_identity",
    "config_hash",
    "calibration_sha256",  # filter.calibration: the file's content, which config_hash (its path) does not cover
    "model_hosts",  # how each model was hosted (shared, concurrent calls, callers): the summary's record of it
    "counts",
    "reconciled",
    "rejected_by_reason",
    "errors_by_stage",
    "errors_by_reason",
    "tiers",
    "model_ids",
    "body_models",
    LABEL_RUN,  # dpmesh-refilter outputs: the labeling run behind the rows (see pipelines.refilter)
    "review",  # dpmesh-refilter review=: what the reviews did to the shard's rows (pipelines.common.reviews)
)


def marker_uri(output: str, shard: str) -> str:
    """``<output>/_done/<shard>.json``."""
    return join(output, DONE_FOLDER, f"{shard}.json")


def read_markers(
    storage: Storage,
    output: str,
    *,
    names: set[str] | None = None,
    known: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The markers under ``output`` (only those of ``names`` if given), by shard name.

    Entries come from ``known`` (what this run just wrote, handed over by the step that wrote it), then from the
    index; only markers neither holds are read. Entries from either hold :data:`INDEXED_FIELDS` only.
    """
    listed = listed_markers(storage, output)
    if names is not None:
        listed = {shard: uri for shard, uri in listed.items() if shard in names}
    index = read_index(storage, output)
    known = known or {}
    cached = {shard: known.get(shard) or index[shard] for shard in listed if shard in known or shard in index}
    missing = [uri for shard, uri in sorted(listed.items()) if shard not in cached]
    return {**cached, **fetch_markers(storage, missing)}


def read_index(storage: Storage, output: str) -> dict[str, dict[str, Any]]:
    """The marker index by shard name; empty when there is none yet, or when it is unreadable (it is a cache of
    the markers: without it they are read one by one)."""
    uri = join(output, INDEX_NAME)
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


def index_entry(marker: dict[str, Any]) -> dict[str, Any]:
    """The fields of a marker the index keeps."""
    return {k: marker[k] for k in INDEXED_FIELDS if k in marker}


def write_index(storage: Storage, output: str, markers: dict[str, dict[str, Any]]) -> None:
    """Replaces the index with the indexed fields of ``markers`` (the same markers give the same bytes: sorted
    keys, gzip without a timestamp)."""
    entries = {shard: index_entry(m) for shard, m in sorted(markers.items())}
    document = json.dumps({"markers": entries}, sort_keys=True, separators=(",", ":")).encode()
    storage.write_bytes(join(output, INDEX_NAME), gzip.compress(document, mtime=0))
