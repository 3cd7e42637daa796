"""The one storage layer for every read and write: local paths, ``s3://`` and ``gs://``.

    >>> storage = Storage(cfg.storage)
    >>> storage.write_bytes(join(out, "shard-00000.tar"), data)
    >>> [o.uri for o in storage.glob("s3://bucket/shards/*.tar")]

Credentials come from the environment or the cloud identity (boto3 and google-auth default chains), never from
config, arguments or logs. Transient errors (throttling, 5xx, connection resets, timeouts) are retried with
exponential backoff and full jitter, only for an explicit allow-list; the policy and its reasons are documented in
``pipelines.storage.retry``.
"""

from pipelines.storage.base import ObjectInfo, ObjectNotFoundError, StorageError, TransientStorageError
from pipelines.storage.core import Storage
from pipelines.storage.uri import ParsedUri, join, parse_uri


__all__ = [
    "ObjectInfo",
    "ObjectNotFoundError",
    "ParsedUri",
    "Storage",
    "StorageError",
    "TransientStorageError",
    "join",
    "parse_uri",
]
