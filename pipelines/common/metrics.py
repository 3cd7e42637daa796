"""Beam metric names: one namespace per stage, so a runner's metrics page groups each stage's counters.

Torch-free, so that the steps which count (and the tests that read the counts) import no model code.
"""

from typing import Any

from apache_beam.metrics import Metrics


SHARD_METRICS = "dpmesh_shard"  # dpmesh-shard's writing step
LABEL_METRICS = "dpmesh"  # dpmesh-label's per-shard step and the DPMesh handler
DETECTION_METRICS = "dpmesh_detection"  # the person detector and keypoint handlers
EXPORT_METRICS = "dpmesh_export"  # dpmesh-export's per-shard step


def counter(namespace: str, name: str) -> Any:
    """The Beam counter ``name`` in ``namespace`` (one of the constants above)."""
    return Metrics.counter(namespace, name)
