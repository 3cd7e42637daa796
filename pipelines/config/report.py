"""The ``dpmesh-report`` app config: a static HTML report over a ``dpmesh-label`` output, and its review page."""

from dataclasses import dataclass, field

from pipelines.config.errors import ConfigError
from pipelines.config.runner import RunnerConfig
from pipelines.config.storage import StorageConfig


@dataclass
class ReportInputConfig:
    """Attributes:
    labels: The output folder of a ``dpmesh-label`` (or ``dpmesh-refilter``) run: local, ``s3://`` or ``gs://``.
    shards: The shard set the labels came from, for the gallery's crops; ``None`` = where the labels' markers
        say each shard was read from (``shard_uri``).
    """

    labels: str = "???"
    shards: str | None = None


@dataclass
class ReportOptions:
    """Attributes:
    per_tier: Persons drawn into the gallery per quality tier (fewer when a tier has fewer), at most
        ``pipelines.common.label_stats.GALLERY_POOL`` (32): the draw is from the uniform sample of each tier that
        the label markers keep.
    seed: Seed of the gallery draw: the same output and seed give the same gallery.
    render_mesh: Render the SMPL mesh over each crop (headless OpenGL through EGL; see README "Auditing labels").
        ``false`` draws keypoints only, for machines without Mesa.
    smpl_model: An SMPL neutral ``.npz`` (``dpmesh-convert-smpl``) to pose the rows with; ``None`` = the body
        model the labels were made with, found from the run's summary (the tiny model's synthetic body, the
        ``model.smpl_model`` file, or the ``smpl.safetensors`` of ``model.pretrained``).
    eval: A ``dpmesh-eval`` result JSON to add as the report's evaluation section; ``None`` = no such section.
    crop_px: Side of a gallery tile in pixels.
    review_px: Side of a review page's person image in pixels (JPEG; large enough to judge a mesh).
    """

    per_tier: int = 6
    seed: int = 0
    render_mesh: bool = True
    smpl_model: str | None = None
    eval: str | None = None
    crop_px: int = 256
    review_px: int = 512

    def __post_init__(self) -> None:
        from pipelines.common.label_stats import GALLERY_POOL  # here: the config package imports no job code

        if not 0 <= self.per_tier <= GALLERY_POOL:
            raise ConfigError(f"report.per_tier={self.per_tier} must be within 0..{GALLERY_POOL}")
        if not 64 <= self.crop_px <= 1024:
            raise ConfigError(f"report.crop_px={self.crop_px} must be within 64..1024")
        if not 128 <= self.review_px <= 1024:
            raise ConfigError(f"report.review_px={self.review_px} must be within 128..1024")


MAX_REVIEW = 400
"""The most persons one review page holds (a sitting's work; a page is made again, with another seed, for more)."""


@dataclass
class ReportJobConfig:
    """The ``dpmesh-report`` app: one folder with ``index.html`` and its assets, readable from disk.

    Attributes:
        output: The report folder (local, ``s3://`` or ``gs://``); files of an earlier report there are replaced.
        runner: Where the Beam step runs that computes the statistics of shards labeled before markers carried
            them (`pipelines.report.steps`); outputs labeled since need no pipeline.
        review: Persons on the review page (``review.html``, `pipelines.report.review_page`), drawn with
            ``report.seed`` stratified by confidence band and occlusion level; 0 = no review page. At most
            :data:`MAX_REVIEW`, and at most ``pipelines.common.label_stats.REVIEW_POOL`` (32) per stratum.
    """

    input: ReportInputConfig = field(default_factory=ReportInputConfig)
    output: str = "???"
    report: ReportOptions = field(default_factory=ReportOptions)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    review: int = 0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 0 <= self.review <= MAX_REVIEW:
            raise ConfigError(f"review={self.review} must be within 0..{MAX_REVIEW} (0: no review page)")
