"""The ``dpmesh-label`` app config: model, filter (``dpmesh-refilter`` takes it too, `pipelines.config.refilter`),
detector, and the job."""

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from pipelines.config.errors import ConfigError
from pipelines.config.runner import RunnerConfig
from pipelines.config.storage import StorageConfig


class ModelName(str, Enum):
    """Which model labels persons."""

    dpmesh = "dpmesh"  # the real DPMesh: official checkpoint or converted weights
    tiny = "tiny"  # the same architecture at tiny widths with seeded random weights (tests, demo)


class Device(str, Enum):
    """Where the model runs. CPU runs are explicit: ``cuda`` never falls back to CPU."""

    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    """Model weight and activation precision."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class ShareMode(str, Enum):
    """Whether one model copy serves every SDK process of a machine (Beam's ``MultiProcessShared``).

    Dataflow starts one SDK process per vCPU; a model copy in each would not fit on the GPU, so on ``cuda`` the
    model lives in one process and the others call it through a proxy. ``auto`` shares on ``cuda`` only; ``true``
    forces the proxied path on CPU too (it is how the tests exercise the GPU workers' code path).
    """

    auto = "auto"
    true = "true"
    false = "false"

    @classmethod
    def parse(cls, value: object, key: str) -> "ShareMode":
        """``auto``/``true``/``false``. Config fields hold the plain string: hydra turns ``=true`` into a bool,
        which an enum field would refuse.

        Raises:
            ConfigError: naming ``key`` for any other value.
        """
        text = str(value).lower()
        if text not in {mode.value for mode in cls}:
            raise ConfigError(f"{key} must be auto, true or false, got {value!r}")
        return cls(text)

    def enabled(self, device: Device) -> bool:
        """Whether to share for a model on ``device``."""
        return self == ShareMode.true or (self == ShareMode.auto and device == Device.cuda)


def check_hosting(prefix: str, concurrent_calls: int | None, debug_overlap_s: float) -> None:
    """Validates a model's hosting keys (``<prefix>.concurrent_calls``, ``<prefix>.debug_overlap_s``)."""
    if concurrent_calls is not None and concurrent_calls < 1:
        raise ConfigError(f"{prefix}.concurrent_calls must be >= 1 (or null for auto), got {concurrent_calls}")
    if debug_overlap_s < 0:
        raise ConfigError(f"{prefix}.debug_overlap_s must be >= 0, got {debug_overlap_s}")
    if debug_overlap_s > 0 and concurrent_calls is not None and concurrent_calls < 2:
        raise ConfigError(
            f"{prefix}.debug_overlap_s holds each call until another arrives: it needs {prefix}.concurrent_calls >= 2"
        )


@dataclass
class ModelConfig:
    """The labeling model.

    Attributes:
        name: ``dpmesh`` or ``tiny``.
        checkpoint: An official ``*_best_ckpt.pth.tar`` (local path or object-store URI), for ``dpmesh``.
        pretrained: A directory written by ``dpmesh-convert`` (safetensors + config.json), for ``dpmesh``;
            loads faster and without pickle. Exactly one of ``checkpoint`` and ``pretrained``.
        smpl_model: Optional SMPL neutral ``.npz`` (see ``dpmesh-convert-smpl``); by default the body
            model comes from the checkpoint's own SMPL buffers.
        device: ``cpu`` or ``cuda``; ``cuda`` without a visible GPU fails at launch.
        dtype: Weight and activation precision.
        batch_size: Persons per forward pass (the official evaluation uses 12). Batches are cut from each
            shard's persons in shard order, so every run, on every runner, computes each person in the same
            batch: results are then bit-identical across reruns (batch composition changes float rounding).
        seed: Seed of the ``tiny`` model's random weights.
        cache_dir: Where weights from object storage are copied before loading.
        fast_path: Run ``dpmesh_core.fast_path`` (weights in ``dtype``; SDPA except the 10 map layers; fp32
            heatmaps, attention maps, VPoser, SMPL and camera; fp32 outputs). Off: the plain model in ``dtype``.
        channels_last: Fast path: NHWC convolutions and images.
        compile: Fast path: ``torch.compile`` one graph per ``batch_size`` (the last partial batch is padded).
        cuda_graphs: Fast path: replay a CUDA graph per ``batch_size`` (CUDA only; padded like ``compile``).
        share_across_processes: ``auto`` (share on ``cuda``), ``true`` or ``false``; see :class:`ShareMode`.
        threads: torch intra-op CPU threads of the process that runs the model (``torch.set_num_threads``).
            Pinned rather than left to the machine because CPU kernels split work by thread count and round
            differently: with the same value, direct, multi-process and Dask runs give byte-identical Parquet.
            One per process suits Beam, which already runs one SDK process (or thread) per core.
        concurrent_calls: How many forward passes the loaded model runs at once; further calls wait their turn.
            ``null`` (auto): 1 on ``cuda`` (device memory bounded to one batch; see the README's "Model hosting"),
            on ``cpu`` the machine's cores divided by ``threads``. Rows do not depend on it.
        debug_overlap_s: Test hook (0 = off): hold every forward pass after its UNet until another pass has
            reached the same point, waiting at most this many seconds, so that concurrent calls are certain to
            overlap (see ``pipelines.common.model_host.OverlapProbe``). Needs ``concurrent_calls`` >= 2.
    """

    name: ModelName = ModelName.tiny
    checkpoint: str | None = None
    pretrained: str | None = None
    smpl_model: str | None = None
    device: Device = Device.cpu
    dtype: DType = DType.float32
    batch_size: int = 12
    seed: int = 0
    cache_dir: str = "~/.cache/dpmesh-pseudolabel"
    fast_path: bool = False
    channels_last: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    share_across_processes: str = ShareMode.auto.value
    threads: int = 1
    concurrent_calls: int | None = None
    debug_overlap_s: float = 0.0

    def __post_init__(self) -> None:
        share = ShareMode.parse(self.share_across_processes, "model.share_across_processes")
        self.share_across_processes = share.value
        check_hosting("model", self.concurrent_calls, self.debug_overlap_s)
        if self.threads < 1:
            raise ConfigError(f"model.threads must be >= 1, got {self.threads}")
        if self.batch_size < 1:
            raise ConfigError(f"model.batch_size must be >= 1, got {self.batch_size}")
        if (self.compile or self.cuda_graphs) and not self.fast_path:
            raise ConfigError("model.compile / model.cuda_graphs need model.fast_path=true")

    def validate(self) -> None:
        """``dpmesh`` needs exactly one source of weights."""
        if self.name == ModelName.dpmesh and (self.checkpoint is None) == (self.pretrained is None):
            raise ConfigError(
                "model=dpmesh needs exactly one of model.checkpoint=<official *_best_ckpt.pth.tar> and "
                "model.pretrained=<directory written by dpmesh-convert>"
            )


class FilterPreset(str, Enum):
    """Threshold presets of ``dpmesh_core.confidence`` (the one place their numbers live)."""

    default = "default"
    strict = "strict"
    off = "off"


@dataclass
class FilterConfig:
    """Confidence filtering: a preset, then any threshold overridden by name.

    Every threshold left ``None`` takes the preset's value (see ``dpmesh_core.confidence.FilterThresholds``
    for what each one means and its default); set one to override it, e.g. ``filter.max_betas_abs=2.5``.

    Attributes:
        preset: ``default`` (the anchors' recommended gates), ``strict``, or ``off`` (keeps every label,
            still scores and tiers it).
        flip_consistency: Also run every crop flipped and record ``flip_pa_mpjpe_mm`` (twice the GPU cost).
        calibration: A confidence calibration file written by ``dpmesh-eval fit_confidence=true`` (local path or
            object-store URI): the confidence becomes its fitted probability of a good label, and the tier
            cut-offs apply to that; gates and reasons are unchanged. Its sha256 is recorded in the outputs.
    """

    preset: FilterPreset = FilterPreset.default
    flip_consistency: bool = False
    calibration: str | None = None
    kp_conf_threshold: float | None = None
    min_kp_valid: int | None = None
    min_box_px: float | None = None
    max_betas_abs: float | None = None
    max_reproj_norm: float | None = None
    max_vposer_z_norm: float | None = None
    max_joint_consistency_mm: float | None = None
    max_truncation: float | None = None
    max_flip_pa_mpjpe_mm: float | None = None
    min_det_score: float | None = None
    gold_min: float | None = None
    silver_min: float | None = None
    bronze_min: float | None = None

    def overrides(self) -> dict[str, float]:
        """The thresholds set explicitly."""
        skip = ("preset", "flip_consistency", "calibration")
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }


class DetectorName(str, Enum):
    """Where persons and their 2D keypoints come from."""

    annotations = "annotations"  # the persons in each shard sample's JSON (from dpmesh-shard input.annotations)
    vitpose = "vitpose"  # a person detector (RT-DETR) and a top-down keypoint model (ViTPose) on every image
    auto = "auto"  # annotations for samples an annotation file covered (``annotated: true``), detection otherwise


@dataclass
class DetectorConfig:
    """Person and keypoint source, and for ``vitpose``/``auto`` the two models that find people.

    Weights (``detector_model``, ``pose_model``) are a local directory, an object-store prefix (copied once into
    ``cache_dir``) or a Hugging Face hub id (``from_pretrained``; cached, so runs work offline with
    ``HF_HUB_OFFLINE=1`` once downloaded). Both are ``transformers`` checkpoints: an object detector with a
    ``person`` label (RT-DETR, RT-DETRv2) and ``VitPoseForPoseEstimation`` (COCO-17 keypoints).

    Attributes:
        name: ``annotations``, ``vitpose`` or ``auto``.
        detector_model, detector_revision: Detector weights and, for a hub id, the revision (tag or commit).
        pose_model, pose_revision: Keypoint model weights and revision.
        device, dtype: Where and in which precision both models run (``cuda`` never falls back to CPU).
        batch_size: Images per detector forward pass; pose_batch_size: persons per keypoint forward pass. Both are
            cut in shard order, so reruns compute every image and person in the same batch.
        min_score: Detections of the person class below this score are not persons (detector candidates). The
            filter's ``min_det_score`` (0.5) then rejects, with ``low_det_score``, persons between the two.
        max_persons: At most this many persons per image, highest scores first.
        cache_dir: Where weights from object storage are copied before loading.
        share_across_processes: ``auto`` (share on ``cuda``), ``true`` or ``false``; see :class:`ShareMode`.
        threads: torch intra-op CPU threads of both models' calls (pinned for reproducible bits, as
            ``model.threads``).
        concurrent_calls, debug_overlap_s: As ``model.*``, for each of the two models (the probe holds the
            detector after its backbone and the keypoint model after its backbone).
    """

    name: DetectorName = DetectorName.annotations
    detector_model: str = "PekingU/rtdetr_r50vd_coco_o365"
    detector_revision: str | None = None
    pose_model: str = "usyd-community/vitpose-base-simple"
    pose_revision: str | None = None
    device: Device = Device.cpu
    dtype: DType = DType.float32
    batch_size: int = 8
    pose_batch_size: int = 32
    min_score: float = 0.3
    max_persons: int = 50
    cache_dir: str = "~/.cache/dpmesh-pseudolabel"
    share_across_processes: str = ShareMode.auto.value
    threads: int = 1
    concurrent_calls: int | None = None
    debug_overlap_s: float = 0.0

    def __post_init__(self) -> None:
        self.share_across_processes = ShareMode.parse(
            self.share_across_processes, "detector.share_across_processes"
        ).value
        check_hosting("detector", self.concurrent_calls, self.debug_overlap_s)
        for name in ("batch_size", "pose_batch_size", "max_persons", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detector.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"detector.min_score must be in [0, 1], got {self.min_score}")

    @property
    def detects(self) -> bool:
        """Whether any image goes through the detector."""
        return self.name != DetectorName.annotations


class CropMode(str, Enum):
    """How person crops are cut (``input.crop_mode``)."""

    reference = "reference"  # the official crop: full-size decode, float32 bilinear warp (OpenCV 4)
    fast = "fast"  # JPEGs decoded at 1/2-1/8 when every crop keeps >= 1 decoded px per crop px; uint8 warp


@dataclass
class LabelInputConfig:
    """Attributes:
    shards: A directory, prefix or glob of ``shard-*.tar`` written by ``dpmesh-shard``.
    max_image_pixels: Images with more pixels are errors (``decompression_bomb``), not decoded. Unset (the
        default), each shard follows the limit its shard set was made with (``shard.max_image_pixels`` in its
        ``_manifest.json``; the shard job's default for a set without one), so both jobs apply one limit.
    allow_incomplete: Label a shard set without its ``_manifest.json`` (a ``dpmesh-shard`` run that did not
        finish) or with tars the manifest does not list. Off by default: such a set is refused at launch,
        because labels of a partial set look complete. Shards labeled this way are identified by size only.
    crop_mode: ``reference`` (default): the official crop, rows identical to the official pre-processing.
        ``fast``: decodes JPEGs at reduced size where no crop loses resolution and warps uint8; several times
        less CPU per crop, crops within about 35 dB PSNR of the official ones (README "Performance").
    prep_threads: Threads that decode and crop images while the model runs (per shard being labeled); null:
        the worker's cores minus one, at least 1; 0: in the reading thread. Rows do not depend on it.
    """

    shards: str = "???"
    max_image_pixels: int | None = None
    allow_incomplete: bool = False
    crop_mode: CropMode = CropMode.reference
    prep_threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ConfigError(f"input.max_image_pixels must be >= 1 (or unset), got {self.max_image_pixels}")
        if self.prep_threads is not None and self.prep_threads < 0:
            raise ConfigError(f"input.prep_threads must be >= 0 (or null for auto), got {self.prep_threads}")


@dataclass
class LabelJobConfig:
    """The ``dpmesh-label`` app: shards in, per-shard annotations / rejected / errors Parquet out.

    One pipeline run labels every pending shard; each shard is committed (its Parquet, then its marker) as soon
    as it is done, so a crash loses at most the shards in flight.

    Attributes:
        prefetch_batches: Person batches prepared ahead of the model per shard (decoded, cropped, queued) while
            it runs; bounds a worker's memory at about ``(prefetch_batches + 1) * batch_size`` crops per thread.
    """

    input: LabelInputConfig = field(default_factory=LabelInputConfig)
    output: str = "???"
    overwrite: bool = False
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    prefetch_batches: int = 2
    progress_interval_s: float = 10.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.prefetch_batches < 1:
            raise ConfigError(f"prefetch_batches must be >= 1, got {self.prefetch_batches}")
