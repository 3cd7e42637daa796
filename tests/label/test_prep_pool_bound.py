"""The preparation pool is bounded: however slowly the model takes what the reader emits, no more than two samples
per preparation thread are read and decoded ahead of it, so a worker's memory does not grow with the shard."""

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dpmesh_core.config import official_config
from pipelines.common.label_units import ShardReport, ShardTask
from pipelines.config.label import CropMode
from pipelines.label.persons import PersonTask
from pipelines.label.read import _SAMPLES_AHEAD_PER_THREAD, ShardReader
from pipelines.storage import Storage
from tests.fakes.corpus import make_images
from tests.fakes.shard_set import shard_annotated


@pytest.mark.parametrize("threads", [1, 3])
def test_the_pool_prepares_a_bounded_number_of_samples_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    shards = shard_annotated(tmp_path, make_images(24, seed=3, width=160, height=120, persons=(1, 2)))
    entry = json.loads((shards / "_manifest.json").read_text())["shards"][0]
    task = ShardTask(str(shards / f"{entry['shard']}.tar"), entry["shard"], entry)
    read, prepared, emitted = [0], [0], [0]
    sample, prepare, emit = ShardReader._sample, ShardReader._prepare, ShardReader._emit

    def counting_sample(self: ShardReader, *args: Any) -> Any:
        read[0] += 1
        return sample(self, *args)

    def counting_prepare(self: ShardReader, *args: Any) -> Any:
        prepared[0] += 1
        time.sleep(0.01)  # slower than reading the next sample: the pool fills up to its bound
        return prepare(self, *args)

    def counting_emit(self: ShardReader, *args: Any) -> Any:
        emitted[0] += 1
        return emit(self, *args)

    monkeypatch.setattr(ShardReader, "_sample", counting_sample)
    monkeypatch.setattr(ShardReader, "_prepare", counting_prepare)
    monkeypatch.setattr(ShardReader, "_emit", counting_emit)
    reader = ShardReader(
        Storage(), None, geometry=official_config().crop_geometry, crop_mode=CropMode.fast, prep_threads=threads
    )
    ahead = []
    persons = 0
    for item in reader.read(task, ShardReport()):  # taken one at a time, as slowly as the model takes them
        ahead.append(read[0] - emitted[0])  # read from the tar (bytes held, pixels maybe) and not yet emitted
        persons += isinstance(item, PersonTask)
    assert emitted[0] == prepared[0] == read[0] == entry["samples"] == 24
    assert persons > 24, "every sample's persons came out"
    assert max(ahead) <= threads * _SAMPLES_AHEAD_PER_THREAD, ahead  # whatever the shard's length
    assert max(ahead) >= 2, "the pool did read ahead while preparing"
