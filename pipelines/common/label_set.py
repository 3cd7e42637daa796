"""What a label output is on storage, the one home of its names: what ``dpmesh-label`` and ``dpmesh-refilter``
write, what ``dpmesh-export``, ``dpmesh-eval`` and ``dpmesh-report`` read.

A label output holds ``annotations/``, ``rejected/`` and ``errors/`` Parquet per shard, a marker per shard in
``_done/`` (written last: the shard's commit, and the truth about the shard) and ``_summary.json`` (written at the
end of a run). ``dpmesh-export`` writes its own per-shard markers the same way (:func:`marker_uri`).

Planning and summaries read the markers through the marker index the run's last step (the summary) writes,
``_done_index.json.gz`` (:mod:`pipelines.common.marker_index`, the one home of a folder of markers plus its index):
this module names what the label jobs' index keeps (:data:`INDEXED_FIELDS`) and binds the readers to it.
"""

import json
import logging
from typing import Any

from pipelines.common import marker_index
from pipelines.common.marker_index import (
    DONE_FOLDER,
    INDEX_NAME,
    MARKER_READERS,
    MarkerIndex,
    fetch_markers,
    listed_markers,
    marker_uri,
)
from pipelines.storage import Storage, join


logger = logging.getLogger(__name__)


ROW_FOLDERS = ("annotations", "rejected")
"""The row folders: accepted persons, rejected persons (one schema), a Parquet file per shard in each."""
ERRORS_FOLDER = "errors"
"""Per-image and per-person failures, a Parquet file per shard."""
SUMMARY_NAME = "_summary.json"
LABEL_RUN = "label_run"
"""Key, in a ``dpmesh-refilter`` output's summary, markers and file metadata, of the labeling run behind it."""


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


# What the index keeps of a marker: what planning compares and what summaries add up.
INDEXED_FIELDS = (
    "shard",
    "elapsed_s",  # per-shard throughput (dpmesh-report); absent from refiltered and older markers
    "shard_identity",
    "live_digest",  # the shard set's live record the labels follow (retired keys, near-duplicate groups)
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
LABEL_INDEX = MarkerIndex(INDEXED_FIELDS)
"""The label jobs' marker index, ``<output>/_done_index.json.gz``."""


def read_markers(
    storage: Storage,
    output: str,
    *,
    names: set[str] | None = None,
    known: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The markers under ``output`` (only those of ``names`` if given), by shard name, through the label index
    (:func:`pipelines.common.marker_index.read_markers`): entries hold :data:`INDEXED_FIELDS`."""
    return marker_index.read_markers(storage, output, LABEL_INDEX, names=names, known=known)


def read_index(storage: Storage, output: str) -> dict[str, dict[str, Any]]:
    """The label marker index by shard name; empty when there is none yet, or when it is unreadable."""
    return marker_index.read_index(storage, output, LABEL_INDEX)


def index_entry(marker: dict[str, Any]) -> dict[str, Any]:
    """The fields of a marker the index keeps."""
    return LABEL_INDEX.entry(marker)


def write_index(storage: Storage, output: str, markers: dict[str, dict[str, Any]]) -> None:
    """Replaces the index with the indexed fields of ``markers`` (the same markers give the same bytes)."""
    marker_index.write_index(storage, output, LABEL_INDEX, markers)


__all__ = [
    "DONE_FOLDER",
    "ERRORS_FOLDER",
    "INDEXED_FIELDS",
    "INDEX_NAME",
    "LABEL_INDEX",
    "LABEL_RUN",
    "MARKER_READERS",
    "ROW_FOLDERS",
    "SUMMARY_NAME",
    "fetch_markers",
    "index_entry",
    "listed_markers",
    "marker_uri",
    "read_index",
    "read_markers",
    "read_summary",
    "write_index",
]
