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
class RunnerConfig:
    """Beam runner selection and its options; :mod:`pipelines.options` is the only reader.

    Attributes:
        name: Which runner. ``dataflow``, ``spark`` and ``flink`` are declared but not yet supported.
        running_mode: Local execution mode (``direct`` only).
        num_workers: Local worker count for ``multi_threading``/``multi_processing`` (``direct`` only).
        job_endpoint: ``host:port`` of a Beam job service (``portable``).
        environment_type: Where SDK workers run (``portable``).
        environment_config: Worker pool address for ``EXTERNAL``, image for ``DOCKER``.
        extra_options: Raw Beam flags appended last, for options this config does not model.
    """

    name: RunnerName = RunnerName.direct
    running_mode: RunningMode = RunningMode.in_memory
    num_workers: int = 1
    job_endpoint: str | None = None
    environment_type: EnvironmentType = EnvironmentType.LOOPBACK
    environment_config: str | None = None
    extra_options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"runner.num_workers must be >= 1, got {self.num_workers}")
        if self.name == RunnerName.portable and not self.job_endpoint:
            raise ConfigError("runner=portable needs runner.job_endpoint=<host:port> of a Beam job service")
        if self.environment_type == EnvironmentType.EXTERNAL and not self.environment_config:
            raise ConfigError("runner.environment_type=EXTERNAL needs runner.environment_config=<host:port>")


@dataclass
class InputConfig:
    """What to shard: exactly one of ``images`` and ``manifest``.

    Attributes:
        images: A directory, a glob (``*`` within a path segment, ``**`` across) or an object-store prefix.
        manifest: A text file (one URI per line; relative lines resolve against the manifest's folder) or a
            Parquet file with a ``uri`` or ``source_uri`` column.
        annotations: Optional COCO-format person keypoint file, joined to images by file name.
        extensions: If set, only files with these extensions (lower case, no dot) are inputs; by default
            every listed file is an input, and non-images are reported, not skipped silently.
    """

    images: str | None = None
    manifest: str | None = None
    annotations: str | None = None
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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"model.batch_size must be >= 1, got {self.batch_size}")

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


@dataclass
class DetectorConfig:
    """Person and keypoint source."""

    name: DetectorName = DetectorName.annotations


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
