"""The policy every model handler of the jobs shares: one element is one forward pass, the model may be shared by
the machine's processes, and only the model steps ask for GPU workers.

The handlers (DPMesh, the person detector, the keypoint model) differ in what they load and run; what Beam asks
of them besides (batching, sharing, resource hints, metrics namespace, the tag that names a loaded model among
processes) is the same and lives here once. This module imports Beam's ML base, which imports torch: only the
handler modules import it, never the per-shard steps.
"""

from typing import Generic, Protocol, TypeVar

from apache_beam.ml.inference.base import ModelHandler

from pipelines.common.model_host import CallGate, OverlapProbe, resolve_concurrent_calls
from pipelines.common.shared_model import model_tag
from pipelines.config import ConfigError, Device, ShareMode, config_to_dict


ExampleT = TypeVar("ExampleT")
PredictionT = TypeVar("PredictionT")
ModelT = TypeVar("ModelT")


class SharedModelConfig(Protocol):
    """What the policy reads of a handler's model config (``ModelConfig``, ``DetectorConfig``)."""

    device: Device
    share_across_processes: str
    threads: int
    concurrent_calls: int | None
    debug_overlap_s: float


class PerBatchModelHandler(ModelHandler[ExampleT, PredictionT, ModelT], Generic[ExampleT, PredictionT, ModelT]):
    """A Beam ``ModelHandler`` whose elements are already model batches, cut in shard order by the reader (so every
    run computes each item in the same batch and gives the same bits).

    Subclasses set ``kind`` (names the model in shared-model tags) and ``metrics_namespace``, and implement
    ``load_model`` and ``run_inference``.

    Args:
        cfg: The model's config; its device and ``share_across_processes`` decide sharing, and all of it the tag.
        resource_hints: Beam resource hints of the model step (the accelerator on Dataflow; empty otherwise).
    """

    kind = ""
    metrics_namespace = ""

    def __init__(self, cfg: SharedModelConfig, resource_hints: dict[str, str] | None = None) -> None:
        super().__init__(min_batch_size=1, max_batch_size=1)  # each element is a model batch already
        self._cfg = cfg
        self._resource_hints = dict(resource_hints or {})

    def model_tag(self) -> str:
        """Names this model configuration among the processes of a machine (see ``acquire_model``)."""
        return model_tag(self.kind, config_to_dict(self._cfg))

    def share_model_across_processes(self) -> bool:
        return ShareMode(self._cfg.share_across_processes).enabled(self._cfg.device)

    def call_gate(self) -> CallGate:
        """The gate a loaded model's calls pass through: ``concurrent_calls`` resolved for the device.

        Raises:
            ConfigError: the overlap probe is on and the resolved limit is 1 (calls could never meet).
        """
        cfg = self._cfg
        limit = resolve_concurrent_calls(cfg.concurrent_calls, cfg.device.value, cfg.threads)
        if cfg.debug_overlap_s > 0 and limit < 2:
            raise ConfigError(f"debug_overlap_s needs concurrent_calls >= 2 ({self.kind} resolves to {limit})")
        return CallGate(limit, shared=self.share_model_across_processes())

    def overlap_probe(self) -> OverlapProbe | None:
        """The test hook to install mid-forward (``debug_overlap_s`` > 0), else None."""
        return OverlapProbe(self._cfg.debug_overlap_s) if self._cfg.debug_overlap_s > 0 else None

    def get_resource_hints(self) -> dict[str, str]:
        """Right fitting: the accelerator hint that puts only this step on GPU workers (empty otherwise)."""
        return dict(self._resource_hints)

    def get_metrics_namespace(self) -> str:
        return self.metrics_namespace
