"""The ``dpmesh-shard`` app config: input, shard sizing, and the job."""

from dataclasses import dataclass, field
from enum import Enum

from pipelines.config.errors import ConfigError
from pipelines.config.runner import RunnerConfig
from pipelines.config.storage import StorageConfig
from pipelines.shard.annotation_formats import AnnotationFormat


class CompareMode(str, Enum):
    """How ``mode=append`` tells that a listed file whose key the set holds is unchanged."""

    size = "size"  # same listed size as the sample's: no read (an edit that keeps the byte count is not seen)
    sha1 = "sha1"  # same size, then same sha1: reads every such file once (catches any edit)


# The pixel limit of a shard set (``shard.max_image_pixels``), which dpmesh-label and the readers of labels follow.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


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
            at launch when it cannot (see ``pipelines.shard.annotation_formats``).
        extensions: If set, only files with these extensions (lower case, no dot) are inputs; by default
            every listed file is an input, and non-images are reported, not skipped silently.
        follow_symlinks: Whether a symbolic link in a local input folder that leads outside it is read. Off by
            default, so that a link cannot pull files from elsewhere on the machine into a shard; such links are
            reported (``outside_input``). Links that stay inside the input folder are always followed.
        record_removals: With ``mode=append``: a sample whose file is gone from the listing is recorded as removed
            (retired; readers leave it out). Off by default: a listing of part of a corpus removes nothing.
        compare: With ``mode=append``: ``size`` (default) takes a listed file as unchanged when the set holds its key
            with the same size (no read); ``sha1`` also reads it and compares its sha1 with the index's.
    """

    images: str | None = None
    manifest: str | None = None
    annotations: str | None = None
    annotation_format: AnnotationFormat = AnnotationFormat.auto
    extensions: list[str] = field(default_factory=list)
    follow_symlinks: bool = False
    record_removals: bool = False
    compare: CompareMode = CompareMode.size

    def __post_init__(self) -> None:
        self.extensions = [ext.lower().lstrip(".") for ext in self.extensions]

    def validate(self) -> None:
        """Cross-field checks (run after composition: defaults alone are incomplete on purpose)."""
        if (self.images is None) == (self.manifest is None):
            raise ConfigError("set exactly one of input.images=<dir|glob|prefix> and input.manifest=<txt|parquet>")


class ValidateMode(str, Enum):
    """How much of each image ``dpmesh-shard`` checks before sharding it."""

    header = "header"  # header, size, EXIF and completeness (truncation): corrupt pixels are left to labeling
    decode = "decode"  # also decode the pixels (JPEG at 1/8 scale): only decodable images are sharded


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
        validate: ``header`` (default) checks header, size, EXIF and that the file is complete (a truncated
            JPEG, PNG or WebP is caught); pixel corruption inside a complete file is then reported by
            ``dpmesh-label``, which decodes every image anyway. ``decode`` also decodes the pixels here, so that
            only decodable images are sharded (about 2x the CPU per image).
    """

    max_samples: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    fill_target: float = 0.8
    max_file_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    drop_duplicates: bool = False
    validate: ValidateMode = ValidateMode.header

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_bytes", "max_file_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"shard.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.1 <= self.fill_target <= 1.0:
            raise ConfigError(f"shard.fill_target must be in [0.1, 1.0], got {self.fill_target}")


class ShardMode(str, Enum):
    """What ``dpmesh-shard`` does with its output."""

    create = "create"  # a new shard set (an existing one is refused unless overwrite=true)
    append = "append"  # a new generation on a finished shard set: shards for new and changed files only


# Hamming bits of the 128-bit perceptual hash within which two images are near-duplicates (README "Growing a corpus":
# planted copies lie within 14 bits for 95% of them, unrelated images beyond 24).
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 20
# The search looks a band up with every flip of up to threshold // 8 bits (pipelines.shard.near_duplicates): 697
# lookups a band at 31, beyond which the search costs more than it is worth.
_MAX_THRESHOLD = 31


@dataclass
class NearDuplicateConfig:
    """Near-duplicate grouping of a shard set (``_near_duplicates.parquet``).

    Attributes:
        threshold: Two samples are near-duplicates when their perceptual hashes differ in at most this many bits
            (0-31; 0 finds identical hashes only).
    """

    threshold: int = DEFAULT_NEAR_DUPLICATE_THRESHOLD

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= _MAX_THRESHOLD:
            raise ConfigError(f"near_duplicates.threshold must be in [0, {_MAX_THRESHOLD}] bits, got {self.threshold}")


@dataclass
class ExcludeConfig:
    """Benchmark overlap guard: corpus images that are exact or near duplicates of a benchmark's are left out.

    Attributes:
        images: Folder, glob or object-store prefix of the benchmark images (hashed at launch).
        hashes: Or a precomputed list: a text file of 32-digit hex hashes (one a line, ``#`` comments), or a Parquet
            file with a ``phash`` column (16 bytes, as a shard index holds it, or 32 hex digits) and optionally
            ``sha1`` and ``name`` columns.
        threshold: Hamming bits within which a corpus image counts as a copy; None: ``near_duplicates.threshold``.
    """

    images: str | None = None
    hashes: str | None = None
    threshold: int | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= _MAX_THRESHOLD:
            raise ConfigError(f"exclude.threshold must be in [0, {_MAX_THRESHOLD}] bits, got {self.threshold}")

    @property
    def active(self) -> bool:
        return bool(self.images or self.hashes)


@dataclass
class ShardJobConfig:
    """The ``dpmesh-shard`` app: corpus in, WebDataset shards + indexes + manifest out."""

    input: InputConfig = field(default_factory=InputConfig)
    output: str = "???"
    overwrite: bool = False
    mode: ShardMode = ShardMode.create
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    near_duplicates: NearDuplicateConfig = field(default_factory=NearDuplicateConfig)
    exclude: ExcludeConfig = field(default_factory=ExcludeConfig)
    log_level: str = "INFO"

    def validate(self) -> None:
        """The output must name a folder or prefix: an empty one would write into the current folder."""
        if not self.output.strip() or self.output == "???":
            raise ConfigError(
                f"output must name a folder or object-store prefix, got {self.output!r}; set output=<uri>"
            )
        if self.exclude.images and self.exclude.hashes:
            raise ConfigError("set at most one of exclude.images=<folder|uri> and exclude.hashes=<txt|parquet>")

    @property
    def exclude_threshold(self) -> int:
        """Bits within which a corpus image is a copy of a benchmark image."""
        return self.near_duplicates.threshold if self.exclude.threshold is None else self.exclude.threshold
