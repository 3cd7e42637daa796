"""The ``dpmesh-report`` app config: a static HTML report over a ``dpmesh-label`` output."""

from dataclasses import dataclass, field

from pipelines.config.errors import ConfigError
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
    per_tier: Persons drawn into the gallery per quality tier (fewer when a tier has fewer).
    seed: Seed of the gallery draw: the same output and seed give the same gallery.
    render_mesh: Render the SMPL mesh over each crop (headless OpenGL through EGL; see README "Auditing labels").
        ``false`` draws keypoints only, for machines without Mesa.
    smpl_model: An SMPL neutral ``.npz`` (``dpmesh-convert-smpl``) to pose the rows with; ``None`` = the body
        model the labels were made with, found from the run's summary (the tiny model's synthetic body, the
        ``model.smpl_model`` file, or the ``smpl.safetensors`` of ``model.pretrained``).
    eval: A ``dpmesh-eval`` result JSON to add as the report's evaluation section; ``None`` = no such section.
    crop_px: Side of a gallery tile in pixels.
    max_rows: At most this many rows feed the distribution plots (a seeded sample of all rows); counts always
        cover every row.
    """

    per_tier: int = 6
    seed: int = 0
    render_mesh: bool = True
    smpl_model: str | None = None
    eval: str | None = None
    crop_px: int = 256
    max_rows: int = 200_000

    def __post_init__(self) -> None:
        if self.per_tier < 0:
            raise ConfigError(f"report.per_tier={self.per_tier} must be >= 0")
        if not 64 <= self.crop_px <= 1024:
            raise ConfigError(f"report.crop_px={self.crop_px} must be within 64..1024")
        if self.max_rows < 1:
            raise ConfigError(f"report.max_rows={self.max_rows} must be >= 1")


@dataclass
class ReportJobConfig:
    """The ``dpmesh-report`` app: one folder with ``index.html`` and its assets, readable from disk.

    Attributes:
        output: The report folder (local, ``s3://`` or ``gs://``); files of an earlier report there are replaced.
    """

    input: ReportInputConfig = field(default_factory=ReportInputConfig)
    output: str = "???"
    report: ReportOptions = field(default_factory=ReportOptions)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log_level: str = "INFO"
