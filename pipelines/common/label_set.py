"""What a label output is on storage, the one home of its names: what ``dpmesh-label`` and ``dpmesh-refilter``
write, what ``dpmesh-export``, ``dpmesh-eval`` and ``dpmesh-report`` read.

A label output holds ``annotations/``, ``rejected/`` and ``errors/`` Parquet per shard, a marker per shard in
``_done/`` (written last: the shard's commit) and ``_summary.json`` (written at the end of a run).
"""

DONE_FOLDER = "_done"
SUMMARY_NAME = "_summary.json"
LABEL_RUN = "label_run"
"""Key, in a ``dpmesh-refilter`` output's summary, markers and file metadata, of the labeling run behind it."""
