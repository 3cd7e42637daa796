"""One writer per trainer format, all with the shape of :class:`~pipelines.export.formats.base.ShardWriter`."""

from pipelines.config import ExportFormat
from pipelines.export.formats.base import ShardWriter
from pipelines.export.formats.camerahmr import CameraHmrWriter
from pipelines.export.formats.crops import CropsWriter
from pipelines.export.formats.hmr2 import Hmr2Writer
from pipelines.export.formats.labels import LabelsWriter


WRITERS: dict[ExportFormat, type[ShardWriter]] = {
    ExportFormat.hmr2: Hmr2Writer,
    ExportFormat.camerahmr: CameraHmrWriter,
    ExportFormat.crops: CropsWriter,
    ExportFormat.labels: LabelsWriter,
}

__all__ = ["WRITERS", "CameraHmrWriter", "CropsWriter", "Hmr2Writer", "LabelsWriter", "ShardWriter"]
