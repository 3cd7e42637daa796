"""Which bucket of the join a person falls in: a pure function of an identity both sides can compute.

``dpmesh-eval`` partitions the ground truth and the label rows by the same key (a partitioned hash join): a label
row and the ground-truth person it matches must land in the same bucket, whichever join key matches them
(`pipelines.eval.ground_truth.JoinKeys`). The identity hashed depends on the join keys the ground truth uses
(`identity_rule`):

* ``image_key + person_idx`` only (`SAME_IMAGE_KEY`): the label's ``image_key``, the ground truth's.
* ``sample_id``, with or without ``image_key + person_idx`` (`SAME_IMAGE`): the image. A ground-truth
  ``sample_id`` ``<key>_p<n>`` names image ``<key>``, a ground-truth ``image_key`` names itself; a label row's image
  is the key of its ``sample_id`` (its ``image_key`` when it has no sample id). A label written by ``dpmesh-label``
  has ``sample_id = <image_key>_p<person_idx>``, so both kinds of ground truth meet it in one bucket.
* ``image_path + person_idx`` only (`SAME_FILE_NAME`): the file name (last path segment). A ground-truth path
  matches a suffix of the label's ``source_uri`` at a ``/`` boundary, so both end in the same file name.
* Paths mixed with ids: no identity serves both, so there is one bucket (`ONE_BUCKET`; memory then grows with the
  ground truth: split such ground truth in two runs if it is large).
"""

from __future__ import annotations

import re

from pipelines.eval.ground_truth import IMAGE_KEY, IMAGE_PATH, SAMPLE_ID
from pipelines.eval.samples import stable_hash64


SAME_IMAGE, SAME_IMAGE_KEY, SAME_FILE_NAME, ONE_BUCKET = "image", "image_key", "file_name", "one_bucket"
_SAMPLE_ID = re.compile(r"(.*)_p[0-9]+")


def identity_rule(kinds: set[int]) -> str:
    """The identity the join hashes for ground truth using the join ``kinds`` (module docstring)."""
    if IMAGE_PATH in kinds:
        return SAME_FILE_NAME if kinds == {IMAGE_PATH} else ONE_BUCKET
    return SAME_IMAGE_KEY if kinds == {IMAGE_KEY} else SAME_IMAGE


def image_of_sample_id(sample_id: str) -> str:
    """``<key>`` of ``<key>_p<n>``; any other text is its own image."""
    found = _SAMPLE_ID.fullmatch(sample_id)
    return found.group(1) if found else sample_id


def file_name(path: str) -> str:
    """The last segment of a path or URI (either separator)."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def ground_truth_identity(rule: str, kind: int, key: str) -> str:
    """The identity of a ground-truth person of join ``kind`` and ``key`` (`GroundTruthTable.key`)."""
    if rule == ONE_BUCKET:
        return ""
    if kind == SAMPLE_ID:
        return image_of_sample_id(key)
    return key if kind == IMAGE_KEY else file_name(key)


def label_identity(rule: str, sample_id: object, image_key: object, source_uri: object) -> str:
    """The identity of a label row (its values as read, any type) under ``rule``."""
    if rule == SAME_IMAGE:
        if isinstance(sample_id, str):
            return image_of_sample_id(sample_id)
        return image_key if isinstance(image_key, str) else ""
    if rule == SAME_IMAGE_KEY:
        return image_key if isinstance(image_key, str) else ""
    if rule == SAME_FILE_NAME:
        return file_name(source_uri) if isinstance(source_uri, str) else ""
    return ""


def bucket_of(identity: str, buckets: int) -> int:
    """The bucket of an identity among ``buckets`` (a stable hash, the same on every machine and run)."""
    return 0 if buckets <= 1 else stable_hash64(identity) % buckets
