"""The ``_done/`` markers of a label output, and the index that lets a driver read 100k of them in seconds.

A marker (``_done/<shard>.json``) is written last for each shard and is the truth about it. Reading every marker
costs one GET each: ~300/s on one core, 5-6 minutes for 100k shards. So the run's last step (the summary) also
writes ``_done_index.json.gz``: the fields of every marker that planning and summaries need. Readers list
``_done/`` (one request per 1,000 names), take what the index holds for the listed shards, and GET only markers
the index does not hold (written by a run that died before its summary), in parallel.

The index can only lag the markers, never lead them: an entry older than its marker names an older shard identity,
which makes planning relabel that shard once more (same bytes), never skip one that needs labels. Markers deleted
by hand are gone from the listing, so their entries are ignored.
"""

import gzip
import json
from typing import Any

from pipelines.common.label_set import DONE_FOLDER, fetch_markers, listed_markers
from pipelines.storage import Storage, join


INDEX_NAME = "_done_index.json.gz"
# Concurrent marker GETs: object stores serve many small requests in parallel; 32 matches the S3 client's pool.
# What the index keeps of a marker: what planning compares and what summaries add up.
INDEXED_FIELDS = (
    "shard",
    "elapsed_s",  # per-shard throughput (dpmesh-report); absent from refiltered and older markers
    "shard_identity",
    "config_hash",
    "counts",
    "reconciled",
    "rejected_by_reason",
    "errors_by_stage",
    "errors_by_reason",
    "tiers",
    "model_ids",
    "body_models",
    "label_run",  # dpmesh-refilter outputs: the labeling run behind the rows (see pipelines.label.refilter)
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
    """The marker index by shard name; empty when there is none yet."""
    try:
        data = storage.read_bytes(join(output, INDEX_NAME))
    except FileNotFoundError:
        return {}
    entries: dict[str, dict[str, Any]] = json.loads(gzip.decompress(data))["markers"]
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
