"""The ``dpmesh-export`` app config: which labels, which rows, which trainer format."""

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pipelines.config.errors import ConfigError
from pipelines.config.refilter import ReviewConflicts, review_files
from pipelines.config.runner import RunnerConfig
from pipelines.config.storage import StorageConfig
from schemas import OCCLUSION_LEVELS, QUALITY_TIERS, QualityTier


class ExportFormat(str, Enum):
    """The trainer format ``dpmesh-export`` writes (README "Exporting for training")."""

    hmr2 = "hmr2"  # 4D-Humans / HMR 2.0 WebDataset tars: <key>.jpg + <key>.data.pyd
    camerahmr = "camerahmr"  # CameraHMR npz per shard + loose upright JPEGs
    crops = "crops"  # WebDataset of square person crops + the row as JSON, for any trainer
    labels = "labels"  # a labels-only release: selected rows + each image's path, size, sha1; no image bytes


# The formats whose ``scale`` is made from the person box, the formats ``export.box_scale`` applies to.
BOX_FORMATS = (ExportFormat.hmr2, ExportFormat.camerahmr)


# The tiers of ``annotations/`` rows (``rejected/`` rows are never exported) and the occlusion levels.
_ACCEPTED_TIERS = tuple(sorted(QUALITY_TIERS - {QualityTier.REJECT.value}))
_OCCLUSION_LEVELS = tuple(sorted(OCCLUSION_LEVELS))


@dataclass
class ExportInputConfig:
    """Attributes:
    labels: The output folder of ``dpmesh-label`` (or ``dpmesh-refilter``): ``annotations/``, ``_done/``.
    shards: The shard set the labels were made from: ``shard-NNNNNN.tar`` + ``shard-NNNNNN.parquet`` (index).
    images: With ``from_release`` only: a copy of the corpus the release was labeled from, laid out as it was
        sharded (the release's image ``path``s are relative to it); every image is checked against its sha1.
    """

    labels: str | None = None
    shards: str | None = None
    images: str | None = None


@dataclass
class SelectConfig:
    """Which accepted rows are exported; every condition given must hold.

    Attributes:
        tiers: ``quality_tier`` values to keep (``gold``, ``silver``, ``bronze``); empty keeps all three.
        min_confidence: Keep rows with ``confidence >= min_confidence``.
        occlusion_levels: ``occlusion_level`` values to keep (``none``, ``partial``, ``heavy``); needs labels that
            carry the occlusion columns (refused at launch otherwise).
        where: A DuckDB SQL boolean expression over the annotation columns, e.g.
            ``"n_kp_valid >= 12 AND crowding_iou > 0.3"``; checked against the schema at launch.
    """

    tiers: list[str] = field(default_factory=list)
    min_confidence: float | None = None
    occlusion_levels: list[str] = field(default_factory=list)
    where: str | None = None

    def __post_init__(self) -> None:
        bad = [t for t in self.tiers if t not in _ACCEPTED_TIERS]
        if bad:
            raise ConfigError(f"select.tiers: {bad[0]!r} is not one of {', '.join(_ACCEPTED_TIERS)}")
        bad = [o for o in self.occlusion_levels if o not in _OCCLUSION_LEVELS]
        if bad:
            raise ConfigError(f"select.occlusion_levels: {bad[0]!r} is not one of {', '.join(_OCCLUSION_LEVELS)}")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"select.min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.where is not None and not self.where.strip():
            self.where = None


@dataclass
class ExportOptionsConfig:
    """How images are written.

    Attributes:
        crop_size: Side of the square person crops of ``format=crops`` (px).
        jpeg_quality: JPEG quality (1-95) of every image written (full images and crops).
        box_scale: Factor on the person box's width and height, about its centre, in the ``scale`` of
            ``format=hmr2`` and ``format=camerahmr`` (1.0: the tight box ``bbox_xyxy``; 4D-Humans' and SPIN's
            preprocessing pad keypoint boxes by 1.2). Another value is another export config (config hash).
    """

    crop_size: int = 256
    jpeg_quality: int = 95
    box_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 16 <= self.crop_size <= 4096:
            raise ConfigError(f"export.crop_size must be in [16, 4096], got {self.crop_size}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"export.jpeg_quality must be in [1, 95], got {self.jpeg_quality}")
        if not 0.5 <= self.box_scale <= 4.0:
            raise ConfigError(f"export.box_scale must be in [0.5, 4], got {self.box_scale} (1.2 pads as 4D-Humans)")


# A split's name is a sub-folder of the output: short, lower-case, not "_"-led (the output's own folders, _done and
# _tmp, are) and not "images" (format=camerahmr's image folder).
_SPLIT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_RESERVED_SPLIT_NAMES = ("images",)
# How far the fractions may sum from 1 (they are typed in decimals).
_FRACTION_SUM_TOLERANCE = 1e-6


@dataclass
class SplitConfig:
    """Train / val / test splits that keep whole groups together (README "Exporting for training", "Splits").

    Attributes:
        fractions: ``"<name>:<fraction>,..."``, e.g. ``"train:0.9,val:0.05,test:0.05"`` (the command line's
            ``split=train:0.9,...`` is short for ``split.fractions='train:0.9,...'``); fractions of the groups, each
            in (0, 1], summing to 1. None (the default) exports no splits: the output is what it always was.
        group_by: A Python regular expression searched in each image's ``source_uri``; images whose match (its first
            group if it has one, else the whole match) is the same form one group, e.g. a video id
            ``"/videos/([^/]+)/"`` or a photo session. Images in a near-duplicate group keep that group; images it
            does not match are each their own group.
    """

    fractions: str | None = None
    group_by: str | None = None

    def __post_init__(self) -> None:
        if self.fractions is not None and not self.fractions.strip():
            self.fractions = None
        if self.group_by is not None and not self.group_by:
            self.group_by = None
        self.parts()  # refused here, at launch, with the value named
        if self.group_by is not None:
            if self.fractions is None:
                raise ConfigError("split.group_by needs split=<name>:<fraction>,... (e.g. split=train:0.9,val:0.1)")
            try:
                re.compile(self.group_by)
            except re.error as exc:
                raise ConfigError(f"split.group_by={self.group_by!r} is not a regular expression: {exc}") from None

    @property
    def enabled(self) -> bool:
        """Whether the export writes splits."""
        return self.fractions is not None

    def parts(self) -> tuple[tuple[str, float], ...]:
        """``((name, fraction), ...)`` in the order given; empty without splits.

        Raises:
            ConfigError: a part that is not ``name:fraction``, a name that cannot be a folder, a repeated name, a
                fraction outside (0, 1], or fractions that do not sum to 1.
        """
        if self.fractions is None:
            return ()
        refuse = f"split={self.fractions!r}: "
        parts: list[tuple[str, float]] = []
        for item in self.fractions.split(","):
            name, sep, value = item.strip().partition(":")
            try:
                fraction = float(value) if sep else math.nan
            except ValueError:
                fraction = math.nan
            if not math.isfinite(fraction):
                raise ConfigError(refuse + f"{item.strip()!r} is not <name>:<fraction> (e.g. train:0.9,val:0.1)")
            if not _SPLIT_NAME.fullmatch(name) or name in _RESERVED_SPLIT_NAMES:
                raise ConfigError(
                    refuse + f"{name!r} cannot name a split folder: 1-32 of a-z, 0-9, '_', '-', not '_'-led, "
                    f"not {', '.join(_RESERVED_SPLIT_NAMES)}"
                )
            if not 0.0 < fraction <= 1.0:
                raise ConfigError(refuse + f"the fraction of {name!r} must be in (0, 1], got {fraction}")
            parts.append((name, fraction))
        names = [name for name, _ in parts]
        if len(set(names)) != len(names):
            raise ConfigError(refuse + "a split is named twice")
        total = math.fsum(fraction for _, fraction in parts)
        if abs(total - 1.0) > _FRACTION_SUM_TOLERANCE:
            raise ConfigError(refuse + f"the fractions sum to {total:g}, not 1")
        return tuple(parts)


@dataclass
class ExportJobConfig:
    """The ``dpmesh-export`` app: labels + shards in, a training-ready dataset out, one shard at a time.

    Attributes:
        format: ``hmr2``, ``camerahmr``, ``crops`` or ``labels`` (a labels-only release).
        from_release: A ``format=labels`` release to rebuild from, instead of ``input.labels`` + ``input.shards``;
            the images come from ``input.images``.
        split: Train / val / test splits by group (:class:`SplitConfig`); none by default.
        overwrite: Re-export every shard (an output holding another config's export is refused without it).
        review: ``review.json`` files of ``input.labels`` (as ``dpmesh-refilter review=``, format in
            `pipelines.common.reviews`): a reviewed reject is not exported (reason ``reviewed_reject``), a reviewed
            accept is exported whatever its score, in the tier its confidence earns. A review of another label run
            is refused unless every person it decided is still in ``input.labels`` (same sample id, shard, model).
        review_conflicts: When the files disagree about a person: ``refuse`` (default) or ``skip`` those persons
            (each listed in ``stats.json``); never resolved silently.
    """

    input: ExportInputConfig = field(default_factory=ExportInputConfig)
    output: str = "???"
    from_release: str | None = None
    format: ExportFormat = ExportFormat.hmr2
    select: SelectConfig = field(default_factory=SelectConfig)
    export: ExportOptionsConfig = field(default_factory=ExportOptionsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    overwrite: bool = False
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    # One file or a list, as dpmesh-refilter's (``review=r.json`` or ``review=[a,b]``): a list of strings after init.
    review: Any = field(default_factory=list)
    review_conflicts: ReviewConflicts = ReviewConflicts.refuse
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.review = review_files(self.review)

    def validate(self) -> None:
        """Cross-field checks: one source of labels and images; ``export.box_scale`` only where a box is written."""
        given = {k: v for k, v in (("input.labels", self.input.labels), ("input.shards", self.input.shards)) if v}
        if self.from_release:
            if given:
                raise ConfigError(
                    f"from_release rebuilds from the release alone: drop {' and '.join(given)} (the release holds "
                    "the labels; input.images the images)"
                )
            if not self.input.images:
                raise ConfigError(
                    "from_release needs input.images=<a copy of the corpus the release names> (its images are "
                    "checked against the release's sha1s)"
                )
        else:
            missing = [k for k in ("input.labels", "input.shards") if k not in given]
            if missing:
                raise ConfigError(
                    f"{' and '.join(missing)} must be given (or from_release=<a labels release> "
                    "input.images=<the images>)"
                )
            if self.input.images:
                raise ConfigError("input.images is read only with from_release: the images come from input.shards")
        if self.review and self.from_release:
            raise ConfigError(
                "review= applies to input.labels, not a rebuild from a release: apply the review when making the "
                "release (dpmesh-export format=labels review=...)"
            )
        if self.split.enabled and self.format == ExportFormat.labels:
            raise ConfigError(
                "split= does not apply to format=labels: a release keeps the rows as labeled; split when rebuilding "
                "from it (from_release=<release> format=hmr2 split=...)"
            )
        if self.export.box_scale != 1.0 and self.format not in BOX_FORMATS:
            writes = "DPMesh's square crop_bbox_xywh" if self.format == ExportFormat.crops else "the rows as labeled"
            raise ConfigError(
                f"export.box_scale applies to format=hmr2|camerahmr; format={self.format.value} writes {writes} "
                "(a release's rebuild takes export.box_scale)"
            )
