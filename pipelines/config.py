"""Structured configs of the pipelines' hydra apps.

Hydra composes YAML from ``pipelines/conf/`` at the edge; these dataclasses give every key a type,
so an unknown key or a value of the wrong type fails at launch with a message naming it, and
``__post_init__`` checks the values. After composition, :func:`to_job_config` turns the
``DictConfig`` into plain dataclasses with every ``${...}`` resolved on the driver: hydra never
runs on Beam workers, and only these picklable dataclasses travel to them.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipelines.annotation_formats import AnnotationFormat
from pipelines.config_storage import StorageConfig


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and how to fix it."""


class RunnerName(str, Enum):
    """Where the Beam pipeline runs."""

    direct = "direct"
    portable = "portable"
    dataflow = "dataflow"
    spark = "spark"
    flink = "flink"


class RunningMode(str, Enum):
    """Local execution modes of Beam's FnApiRunner (the engine behind the DirectRunner for batch)."""

    in_memory = "in_memory"
    multi_threading = "multi_threading"
    multi_processing = "multi_processing"


class EnvironmentType(str, Enum):
    """Where the portable runner starts SDK workers."""

    LOOPBACK = "LOOPBACK"
    EXTERNAL = "EXTERNAL"
    DOCKER = "DOCKER"
    PROCESS = "PROCESS"


@dataclass
class DataflowConfig:
    """Dataflow options (``runner=dataflow``); see ``infra/README.md`` for a walk-through.

    Attributes:
        project: Google Cloud project that runs the job.
        region: Dataflow regional endpoint, e.g. ``us-central1`` (pick one that has the GPU type).
        temp_location: ``gs://`` prefix for temporary files.
        staging_location: ``gs://`` prefix for staged artifacts; ``None`` lets Beam use ``temp_location``.
        service_account_email: Worker service account; ``None`` = the project's Compute Engine default.
        machine_type: Worker machine type, e.g. ``g2-standard-8`` (L4 GPUs come with G2 machines) or
            ``n1-standard-8`` (T4).
        disk_size_gb: Worker boot disk; GPU images are large, Dataflow recommends >= 50 GB with GPUs.
        num_workers: Initial workers; ``None`` lets Dataflow choose.
        max_num_workers: Autoscaling ceiling; ``None`` = Dataflow's default.
        accelerator: GPU type, e.g. ``nvidia-l4`` or ``nvidia-tesla-t4``; ``None`` = CPU workers only.
        accelerator_count: GPUs per worker (or per inference worker with ``right_fitting``).
        use_nvidia_mps: Add ``use_nvidia_mps`` to ``worker_accelerator``: only useful when more than one
            model copy shares a GPU (we load one per GPU); not with ``right_fitting``.
        right_fitting: Put only the inference step on GPU workers through a resource hint instead of giving
            every worker a GPU with ``worker_accelerator`` (the two must not be combined).
        min_ram: ``min_ram`` resource hint of the inference step with ``right_fitting``, e.g. ``32GB``.
        network: VPC network name; ``None`` = ``default``.
        subnetwork: Subnetwork, e.g. ``regions/us-central1/subnetworks/dpmesh``.
        use_public_ips: ``False`` gives workers private IPs only (needs Private Google Access).
        labels: Job labels as ``key=value``, e.g. for cost attribution.
    """

    project: str | None = None
    region: str | None = None
    temp_location: str | None = None
    staging_location: str | None = None
    service_account_email: str | None = None
    machine_type: str | None = None
    disk_size_gb: int | None = None
    num_workers: int | None = None
    max_num_workers: int | None = None
    accelerator: str | None = None
    accelerator_count: int = 1
    use_nvidia_mps: bool = False
    right_fitting: bool = False
    min_ram: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    use_public_ips: bool = True
    labels: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raises ConfigError naming the first missing or inconsistent ``runner.dataflow.*`` value."""
        for name in ("project", "region", "temp_location"):
            if not getattr(self, name):
                raise ConfigError(f"runner=dataflow needs runner.dataflow.{name}")
        for name in ("temp_location", "staging_location"):
            value = getattr(self, name)
            if value is not None and not value.startswith("gs://"):
                raise ConfigError(f"runner.dataflow.{name} must be a gs:// prefix, got {value!r}")
        for name in ("disk_size_gb", "num_workers", "max_num_workers", "accelerator_count"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"runner.dataflow.{name} must be >= 1, got {value}")
        if self.right_fitting and not self.accelerator:
            raise ConfigError("runner.dataflow.right_fitting=true needs runner.dataflow.accelerator=<gpu type>")
        if self.right_fitting and self.use_nvidia_mps:
            raise ConfigError("runner.dataflow.use_nvidia_mps is a worker_accelerator option: not with right_fitting")
        if self.use_nvidia_mps and not self.accelerator:
            raise ConfigError("runner.dataflow.use_nvidia_mps=true needs runner.dataflow.accelerator=<gpu type>")
        if self.min_ram and not self.right_fitting:
            raise ConfigError(
                "runner.dataflow.min_ram is a right-fitting hint: set runner.dataflow.right_fitting=true"
            )
        for label in self.labels:
            if "=" not in label:
                raise ConfigError(f"runner.dataflow.labels entries are key=value, got {label!r}")


@dataclass
class RunnerConfig:
    """Beam runner selection and its options; :mod:`pipelines.options` is the only reader.

    Attributes:
        name: Which runner: ``direct``, ``portable``, ``dataflow``, ``spark`` or ``flink``. ``spark`` and
            ``flink`` are the portable runner against the Beam job server of a Spark or Flink cluster.
        running_mode: Local execution mode (``direct`` only).
        num_workers: Local worker count for ``multi_threading``/``multi_processing`` (``direct`` only).
        job_endpoint: ``host:port`` of a Beam job service (``portable``, ``spark``, ``flink``).
        environment_type: Where SDK workers run (``portable``, ``spark``, ``flink``).
        environment_config: Worker pool address for ``EXTERNAL``; image for ``DOCKER`` (default: ``image``).
        image: The worker container image (``infra/``): Dataflow's ``sdk_container_image``, and the DOCKER
            environment's image on ``portable``/``spark``/``flink``.
        sdk_worker_parallelism: SDK worker processes per cluster worker node (``portable``/``spark``/``flink``);
            0 lets the runner choose. Each process holds its own model copy there.
        parallelism: Flink job parallelism (``flink`` only; Spark takes it from the cluster's configuration).
        max_parallelism: Flink maximum parallelism (``flink`` only).
        dataflow: Dataflow options (``dataflow`` only).
        dry_run: Build the pipeline and print the launch plan (options, steps, image); submit nothing.
        extra_options: Raw Beam flags appended last, for options this config does not model.
    """

    name: RunnerName = RunnerName.direct
    running_mode: RunningMode = RunningMode.in_memory
    num_workers: int = 1
    job_endpoint: str | None = None
    environment_type: EnvironmentType = EnvironmentType.LOOPBACK
    environment_config: str | None = None
    image: str | None = None
    sdk_worker_parallelism: int | None = None
    parallelism: int | None = None
    max_parallelism: int | None = None
    dataflow: DataflowConfig = field(default_factory=DataflowConfig)
    dry_run: bool = False
    extra_options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"runner.num_workers must be >= 1, got {self.num_workers}")
        if self.name in _JOB_SERVER_RUNNERS and not self.job_endpoint:
            raise ConfigError(
                f"runner={self.name.value} needs runner.job_endpoint=<host:port> of a Beam job service"
                + ("" if self.name == RunnerName.portable else f" running next to the {self.name.value} cluster")
            )
        if self.environment_type == EnvironmentType.EXTERNAL and not self.environment_config:
            raise ConfigError("runner.environment_type=EXTERNAL needs runner.environment_config=<host:port>")
        if (
            self.name in _JOB_SERVER_RUNNERS
            and self.environment_type == EnvironmentType.DOCKER
            and not (self.environment_config or self.image)
        ):
            raise ConfigError(
                f"runner={self.name.value} with environment_type=DOCKER needs runner.image=<worker image>"
            )
        if self.sdk_worker_parallelism is not None and self.sdk_worker_parallelism < 0:
            raise ConfigError(f"runner.sdk_worker_parallelism must be >= 0, got {self.sdk_worker_parallelism}")
        for name in ("parallelism", "max_parallelism"):
            value = getattr(self, name)
            if value is not None and self.name != RunnerName.flink:
                raise ConfigError(
                    f"runner.{name} is a Flink option; on Spark set spark.default.parallelism on the cluster"
                )
            if value is not None and value < 1:
                raise ConfigError(f"runner.{name} must be >= 1, got {value}")
        if self.name == RunnerName.dataflow:
            self.dataflow.check()
            if not self.image:
                raise ConfigError(
                    "runner=dataflow needs runner.image=<worker image>: workers need this project installed "
                    "(see infra/README.md)"
                )


_JOB_SERVER_RUNNERS = (RunnerName.portable, RunnerName.spark, RunnerName.flink)


@dataclass
class InputConfig:
    """What to shard: exactly one of ``images`` and ``manifest``.

    Attributes:
        images: A directory, a glob (``*`` within a path segment, ``**`` across) or an object-store prefix.
        manifest: A text file (one URI per line; relative lines resolve against the manifest's folder) or a
            Parquet file with a ``uri`` or ``source_uri`` column.
        annotations: Optional person keypoint file, joined to images by file name.
        annotation_format: Its format: ``coco`` (COCO, OCHuman), ``crowdpose`` (14 joints) or ``aic`` (AI
            Challenger, 14 joints), each mapped to COCO-17; ``auto`` tells them apart from the file and fails
            at launch when it cannot (see ``pipelines.annotation_formats``).
        extensions: If set, only files with these extensions (lower case, no dot) are inputs; by default
            every listed file is an input, and non-images are reported, not skipped silently.
    """

    images: str | None = None
    manifest: str | None = None
    annotations: str | None = None
    annotation_format: AnnotationFormat = AnnotationFormat.auto
    extensions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.extensions = [ext.lower().lstrip(".") for ext in self.extensions]

    def validate(self) -> None:
        """Cross-field checks (run after composition: defaults alone are incomplete on purpose)."""
        if (self.images is None) == (self.manifest is None):
            raise ConfigError("set exactly one of input.images=<dir|glob|prefix> and input.manifest=<txt|parquet>")


class ValidateMode(str, Enum):
    """How much of each image ``dpmesh-shard`` checks before sharding it."""

    decode = "decode"  # decode the pixels (JPEG at 1/8 scale): truncated or corrupt data is caught here
    header = "header"  # header, size and EXIF only: faster, for corpora already known to decode


@dataclass
class ShardConfig:
    """Shard sizing and per-image limits of ``dpmesh-shard``.

    Attributes:
        max_samples: Most samples (images) in one shard.
        max_bytes: Most image bytes in one shard.
        fill_target: Fraction of the caps an average shard is planned at. Keys are spread over shards by a
            digest, so shards vary in size; the headroom keeps almost all under the caps, and a shard that
            would still exceed one spills its tail into an overflow shard (see README, "Output layout").
        max_file_bytes: Larger files are reported as ``file_too_large`` instead of being read whole.
        max_image_pixels: Images with more pixels are reported as ``decompression_bomb``.
        drop_duplicates: Keep one of each set of byte-identical files (the smallest key); the others are
            reported with reason ``duplicate``. Off by default: duplicates are sharded and reported.
        validate: ``decode`` (default) decodes every image so that only decodable images are sharded;
            ``header`` trusts the pixel data and checks header, size and EXIF only.
    """

    max_samples: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    fill_target: float = 0.8
    max_file_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    drop_duplicates: bool = False
    validate: ValidateMode = ValidateMode.decode

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_bytes", "max_file_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"shard.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.1 <= self.fill_target <= 1.0:
            raise ConfigError(f"shard.fill_target must be in [0.1, 1.0], got {self.fill_target}")


@dataclass
class ShardJobConfig:
    """The ``dpmesh-shard`` app: corpus in, WebDataset shards + indexes + manifest out."""

    input: InputConfig = field(default_factory=InputConfig)
    output: str = "???"
    overwrite: bool = False
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    log_level: str = "INFO"


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

    def __post_init__(self) -> None:
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
    """

    preset: FilterPreset = FilterPreset.default
    flip_consistency: bool = False
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
        skip = ("preset", "flip_consistency")
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

    def __post_init__(self) -> None:
        for name in ("batch_size", "pose_batch_size", "max_persons"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detector.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"detector.min_score must be in [0, 1], got {self.min_score}")

    @property
    def detects(self) -> bool:
        """Whether any image goes through the detector."""
        return self.name != DetectorName.annotations


@dataclass
class LabelInputConfig:
    """Attributes:
    shards: A directory, prefix or glob of ``shard-*.tar`` written by ``dpmesh-shard``.
    max_image_pixels: Images with more pixels are errors (``decompression_bomb``), not decoded.
    """

    shards: str = "???"
    max_image_pixels: int = 100_000_000


@dataclass
class LabelJobConfig:
    """The ``dpmesh-label`` app: shards in, per-shard annotations / rejected / errors Parquet out.

    Attributes:
        wave_size: Shards per Beam pipeline run. A batch pipeline only writes a shard's outputs once all its
            upstream work is done, so shards are labeled in waves: every wave's shards are committed (markers
            written) before the next wave starts, and a crash loses at most one wave. 0 = one wave.
    """

    input: LabelInputConfig = field(default_factory=LabelInputConfig)
    output: str = "???"
    overwrite: bool = False
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    wave_size: int = 16
    progress_interval_s: float = 10.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.wave_size < 0:
            raise ConfigError(f"wave_size must be >= 0 (0 = every shard in one pipeline), got {self.wave_size}")


@dataclass
class RefilterJobConfig:
    """The ``dpmesh-refilter`` app.

    Attributes:
        input: The output folder of a ``dpmesh-label`` run (its ``annotations/``, ``rejected/``, ``errors/``,
            ``_done/``).
        output: Where the re-split labels go (a new folder; the input is never modified).
    """

    input: str = "???"
    output: str = "???"
    overwrite: bool = False
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    log_level: str = "INFO"


def compose_config(config_name: str, overrides: list[str], config_type: type["ConfigT"]) -> "ConfigT":
    """Compose an app config from ``pipelines/conf`` with command-line style overrides, from Python.

    The same composition and validation as the console scripts, for tests and notebooks.
    """
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module("pipelines.conf", version_base="1.3"):
        return to_job_config(compose(config_name, overrides=overrides), config_type)


def register_configs() -> None:
    """Register the structured schemas so the YAML defaults lists can extend them."""
    store = ConfigStore.instance()
    store.store(name="shard_schema", node=ShardJobConfig)
    store.store(name="label_schema", node=LabelJobConfig)
    store.store(name="refilter_schema", node=RefilterJobConfig)


ConfigT = TypeVar("ConfigT")


def to_job_config(cfg: DictConfig, config_type: type[ConfigT]) -> ConfigT:
    """Resolve a composed config on the driver into plain dataclasses, re-raising problems as ConfigError.

    ``OmegaConf.to_object`` builds the dataclasses, which runs every ``__post_init__`` check.
    """
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # omegaconf wraps __post_init__ errors and reports type errors itself
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else exc
        raise ConfigError(str(cause).split("\n    full_key")[0]) from exc
    if not isinstance(obj, config_type):
        raise ConfigError(f"expected a {config_type.__name__} config, got {type(obj).__name__}")
    _validate_tree(obj)
    return obj


def _validate_tree(obj: Any) -> None:
    """Call ``validate()`` on every config dataclass of the tree that defines one."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        _validate_tree(getattr(obj, f.name))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (enums as their values)."""
    result = _jsonable(cfg)
    if not isinstance(result, dict):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return result


_NOT_CONTENT = ("output", "runner", "storage", "log_level", "overwrite", "progress_interval_s", "wave_size")


def config_hash(cfg: Any, *, exclude: tuple[str, ...] = _NOT_CONTENT) -> str:
    """A short stable fingerprint of the parts of a config that change outputs.

    Where and how the job runs (output location, runner, storage endpoints, logging) does not change what
    it writes, so those are left out by default: the same corpus sharded locally or on Dataflow, into any
    folder, hashes alike and gives identical files.
    """
    content = {k: v for k, v in config_to_dict(cfg).items() if k not in exclude}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]
