"""dpmesh-export reads its markers through an index (issue 23 item 3): a rerun plans and writes its card from one
object per marker folder plus the markers the index lacks, never one GET per marker.

GETs are counted as recorded calls of ``Storage.read_bytes`` (every marker, index and small-object read goes through
it) in this process: the in-memory runner runs the card step here too.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.common.marker_index import INDEX_NAME
from pipelines.config import ExportJobConfig, compose_config
from pipelines.export.job import run as export
from pipelines.storage import Storage
from tests.fakes.corpus import make_images
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import label_shards, shard_annotated


@contextlib.contextmanager
def recorded_reads() -> Iterator[list[str]]:
    """The URIs ``Storage.read_bytes`` was called with inside the block, in call order (each call is one GET on an
    object store)."""
    reads: list[str] = []
    lock = threading.Lock()
    original: Callable[..., Any] = Storage.read_bytes

    def recording(self: Storage, uri: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            reads.append(uri)
        return original(self, uri, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Storage, "read_bytes", recording)
        yield reads


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 annotated images in shards of at most 2, labeled by the numpy stand-in (``filter=off``), with its index."""
    root = tmp_path_factory.mktemp("export_index")
    shards = shard_annotated(root, make_images(8, seed=21, width=96, height=80, persons=(1, 2)), "shard.max_samples=2")
    label_shards(shards, root / "labels", "filter=off", handler=FakeDPMeshHandler)
    return root


def _config(root: Path, out: Path) -> ExportJobConfig:
    keys = [f"input.labels={root / 'labels'}", f"input.shards={root / 'shards'}", f"output={out}", "format=crops"]
    return compose_config("dpmesh_export", [*keys, "export.crop_size=32", "log_level=WARNING"], ExportJobConfig)


def _marker_reads(reads: list[str]) -> list[str]:
    """The per-shard marker GETs among ``reads`` (label and export markers alike)."""
    return sorted(uri for uri in reads if "/_done/" in uri)


def test_a_rerun_reads_the_indexes_and_no_marker(labeled: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _config(labeled, out)
    export(cfg)
    shards = sorted(p.stem for p in (out / "_done").glob("*.json"))
    assert shards == sorted(p.stem for p in (labeled / "labels" / "_done").glob("*.json"))
    assert len(shards) >= 4
    index = json.loads(gzip.decompress((out / INDEX_NAME).read_bytes()))["markers"]
    assert sorted(index) == shards, "the card step indexed every marker"
    stats = (out / "stats.json").read_bytes()

    with recorded_reads() as reads:
        export(cfg)

    assert _marker_reads(reads) == [], "planning and the card read no marker one by one"
    assert reads.count(str(out / INDEX_NAME)) == 2  # planning, then the card step
    assert reads.count(str(labeled / "labels" / INDEX_NAME)) == 1  # planning's label lineage
    assert len(reads) <= 8, reads  # a fixed number of objects, whatever the number of shards
    assert (out / "stats.json").read_bytes() == stats, "the card from the index is the card from the markers"


def test_only_markers_the_index_lacks_are_read_one_by_one(labeled: Path, tmp_path: Path) -> None:
    """A run that died after committing a shard and before its card leaves a marker the index lacks: the next run
    reads that marker (planning, then the card step) and no other, and its card indexes it."""
    out = tmp_path / "out"
    cfg = _config(labeled, out)
    export(cfg)
    stats = (out / "stats.json").read_bytes()
    document = json.loads(gzip.decompress((out / INDEX_NAME).read_bytes()))
    lacking = sorted(document["markers"])[1]
    del document["markers"][lacking]
    (out / INDEX_NAME).write_bytes(gzip.compress(json.dumps(document).encode(), mtime=0))

    with recorded_reads() as reads:
        export(cfg)

    assert _marker_reads(reads) == [str(out / "_done" / f"{lacking}.json")] * 2
    assert (out / "stats.json").read_bytes() == stats
    with recorded_reads() as reads:
        export(cfg)
    assert _marker_reads(reads) == [], "the card step indexed it again"


def test_an_unreadable_index_costs_the_marker_reads_it_saves_and_nothing_else(labeled: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _config(labeled, out)
    export(cfg)
    markers = sorted(str(p) for p in (out / "_done").glob("*.json"))
    (out / INDEX_NAME).write_bytes(b"not an index")

    with recorded_reads() as reads:
        stats = export(cfg)

    assert _marker_reads(reads) == sorted(markers * 2)  # each marker once by planning, once by the card step
    assert stats["shards"] == len(markers)
    with recorded_reads() as reads:
        export(cfg)
    assert _marker_reads(reads) == []
