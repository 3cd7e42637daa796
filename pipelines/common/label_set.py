"""What a label output is on storage, the one home of its names: what ``dpmesh-label`` and ``dpmesh-refilter``
write, what ``dpmesh-export``, ``dpmesh-eval`` and ``dpmesh-report`` read.

A label output holds ``annotations/``, ``rejected/`` and ``errors/`` Parquet per shard, a marker per shard in
``_done/`` (written last: the shard's commit) and ``_summary.json`` (written at the end of a run).
"""

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipelines.storage import Storage, join


DONE_FOLDER = "_done"
SUMMARY_NAME = "_summary.json"
LABEL_RUN = "label_run"
"""Key, in a ``dpmesh-refilter`` output's summary, markers and file metadata, of the labeling run behind it."""
MARKER_READERS = 32  # concurrent marker GETs: listing many small objects is latency-bound


def listed_markers(storage: Storage, output: str) -> dict[str, str]:
    """``{shard: marker URI}`` of every ``<output>/_done/*.json`` (a job's per-shard commits)."""
    return {
        obj.uri.rsplit("/", 1)[-1].removesuffix(".json"): obj.uri
        for obj in storage.list(join(output, DONE_FOLDER))
        if obj.uri.endswith(".json")
    }


def fetch_markers(storage: Storage, uris: list[str]) -> dict[str, dict[str, Any]]:
    """The markers at ``uris``, read :data:`MARKER_READERS` at a time, by their ``shard`` field."""
    with ThreadPoolExecutor(MARKER_READERS) as pool:
        documents = list(pool.map(storage.read_bytes, uris))
    markers = {}
    for data in documents:
        marker = json.loads(data)
        markers[marker["shard"]] = marker
    return markers
