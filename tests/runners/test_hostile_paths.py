"""Names from data never become paths outside the output, and outputs never overlap inputs.

* ``dpmesh-label`` turns a tar member or index row whose key is off the one grammar into an ``invalid_key`` error
  row (counts reconcile), so no later tool is handed such a key by labels it made.
* Every job refuses, with one line, an ``output=`` that is, holds or lies inside one of its inputs, or that is an
  existing file.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.common.safe_paths import safe_member_name
from pipelines.config import ConfigError, LabelJobConfig, RefilterJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.refilter.job import run as refilter
from pipelines.shard.job import run as shard
from tests.fakes.corpus import make_images, write_coco, write_corpus
from tests.fakes.digests import identities
from tests.fakes.fake_dpmesh import FakeDPMeshHandler
from tests.fakes.shard_set import label_shards, shard_annotated
from tests.fakes.writes import recorded_writes


def _shard_config(images: Path, output: Path, *more: str) -> ShardJobConfig:
    return compose_config(
        "dpmesh_shard", [f"input.images={images}", f"output={output}", "log_level=WARNING", *more], ShardJobConfig
    )


def _label_config(shards: Path, output: Path, *more: str) -> LabelJobConfig:
    overrides = [f"input.shards={shards}", f"output={output}", "log_level=WARNING", "progress_interval_s=0", *more]
    return compose_config("dpmesh_label", overrides, LabelJobConfig)


def _fake_label(cfg: LabelJobConfig) -> dict:
    return label(cfg, handler=FakeDPMeshHandler(cfg.model))


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def labeled_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four annotated images in shards of two, and a labeled copy (fake model)."""
    root = tmp_path_factory.mktemp("hostile")
    images = make_images(4, seed=5, width=160, height=120, persons=(1, 1))
    shards = shard_annotated(root, images, "shard.max_samples=2")
    label_shards(shards, root / "labels", handler=FakeDPMeshHandler)
    return root


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_keys_off_the_grammar_become_invalid_key_rows(labeled_set: Path, tmp_path: Path) -> None:
    root = tmp_path / "case"
    shards = root / "in" / "shards"
    shutil.copytree(labeled_set / "shards", shards)
    target = sorted(shards.glob("shard-*.tar"))[0]
    with tarfile.open(target) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    image = next(data for name, data in members if name.endswith(".jpg"))
    annotation = next(data for name, data in members if name.endswith(".json"))
    hostile = ["bad key", "dir/nested", "caf\u00e9-%41", "x" * 97]  # a space, a folder, non-ASCII and %, too long
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            _member(tar, name, data)
        for key in hostile:
            _member(tar, f"{key}.jpg", image)
            _member(tar, f"{key}.json", annotation)
    index_path = target.with_suffix(".parquet")
    index = pq.read_table(index_path)
    planted = {"../../../x/victim": 2}  # an index row no tar member can match, holding two persons
    extra = index.slice(0, 1).to_pylist()[0] | {"key": "../../../x/victim", "n_persons": 2}
    pq.write_table(pa.concat_tables([index, pa.Table.from_pylist([extra], schema=index.schema)]), index_path)
    before = _files_under(tmp_path)

    output = root / "out" / "labels"
    summary = _fake_label(_label_config(shards, output))

    assert summary["reconciled"]
    errors = pq.read_table(output / "errors" / f"{target.stem}.parquet").to_pylist()
    invalid = [e for e in errors if e["reason"] == "invalid_key"]
    assert {e["key"] for e in invalid} == {*hostile, *planted}
    assert sum(1 for e in invalid if e["key"] in planted) == 2  # one row per person the index row claims
    labeled = pq.read_table(output / "annotations" / f"{target.stem}.parquet").to_pylist()
    labeled += pq.read_table(output / "rejected" / f"{target.stem}.parquet").to_pylist()
    assert labeled
    assert not {r["image_key"] for r in labeled} & {*hostile, *planted}
    written = _files_under(tmp_path) - before
    assert written
    assert all(name.startswith("case/out/labels/") for name in written), sorted(written)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_every_job_refuses_an_output_that_overlaps_its_input(labeled_set: Path, tmp_path: Path, where: str) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(labeled_set / "shards", shards)
    labels = tmp_path / "labels"
    shutil.copytree(labeled_set / "labels", labels)
    images = tmp_path / "images"
    shutil.copytree(labeled_set / "images", images)
    before = identities(p for p in tmp_path.rglob("*") if p.is_file())

    def place(source: Path) -> Path:
        return {"same": source, "inside": source / "out", "holds": source.parent}[where]

    relation = {"same": "is", "inside": "lies inside", "holds": "contains"}[where]
    with recorded_writes() as writes:
        with pytest.raises(ConfigError, match=rf"output=.* {relation} input\.images="):
            shard(_shard_config(images, place(images)))
        with pytest.raises(ConfigError, match=rf"output=.* {relation} input\.shards="):
            _fake_label(_label_config(shards, place(shards)))
        refilter_cfg = compose_config(
            "dpmesh_refilter", [f"input={labels}", f"output={place(labels)}", "log_level=WARNING"], RefilterJobConfig
        )
        with pytest.raises(ConfigError, match=rf"output=.* {relation} input="):
            refilter(refilter_cfg)
    assert (writes.written, writes.deleted) == ([], []), "a refused launch writes nothing"
    after = identities(p for p in tmp_path.rglob("*") if p.is_file())
    assert after == before, "and every file is the one it was"


def test_an_output_that_is_a_file_is_refused_in_one_line(labeled_set: Path, tmp_path: Path) -> None:
    existing = tmp_path / "a-file"
    existing.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="is an existing file"):
        shard(_shard_config(labeled_set / "images", existing))
    with pytest.raises(ConfigError, match="is an existing file"):
        _fake_label(_label_config(labeled_set / "shards", existing))
    with pytest.raises(ConfigError, match="is an existing file"):
        refilter(
            compose_config(
                "dpmesh_refilter", [f"input={labeled_set / 'labels'}", f"output={existing}"], RefilterJobConfig
            )
        )
    assert existing.read_bytes() == b"keep me"


def test_unfinished_files_of_another_config_are_refused_by_their_intent(labeled_set: Path, tmp_path: Path) -> None:
    output = tmp_path / "labels"
    (output / "annotations").mkdir(parents=True)
    (output / "annotations" / "shard-000000.parquet").write_bytes(b"a killed run's unmarked file")
    (output / "_intent.json").write_text('{"config_hash": "0123456789abcdef", "created_by": "dpmesh-label"}')
    with pytest.raises(ConfigError, match=r"holds unfinished labels of another run .*overwrite=true"):
        _fake_label(_label_config(labeled_set / "shards", output))
    summary = _fake_label(_label_config(labeled_set / "shards", output, "overwrite=true"))
    assert summary["reconciled"]
    assert summary["shards"]["labeled_this_run"] == summary["shards"]["total"]


# --- generated names through every tool ----------------------------------------------------------------------

SENTINEL = "ESCAPED"  # in every generated name: a file anywhere with it in its name escaped its output


def _generated_names(count: int, seed: int) -> list[str]:
    """Names as hostile inputs hold them: unicode, separators, dots, percent and URL signs, very long, traversal."""
    rng = random.Random(seed)
    pieces = ["caf\u00e9", "\u65e5\u672c", "\U0001f600", "%41", "#?%", "a b", "..", ".", "x.y.z", "-lead", "\u202e"]
    names = [f"../../../../{SENTINEL}-up", f"{SENTINEL}/../../../x", f"/abs/{SENTINEL}", f"{SENTINEL}-" + "l" * 180]
    while len(names) < count:
        parts = [rng.choice(pieces) for _ in range(rng.randint(1, 4))]
        separator = rng.choice(["", "/", "_", "\\"])
        names.append(f"{SENTINEL}{separator.join(parts)}")
    return names


def _plant_keys(shard_tar: Path, keys: list[str]) -> None:
    """Adds a sample under each raw ``key`` to ``shard_tar`` and its index (a hand-made shard set)."""
    with tarfile.open(shard_tar) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    image = next(data for name, data in members if name.endswith(".jpg"))
    annotation = next(data for name, data in members if name.endswith(".json"))
    index_path = shard_tar.with_suffix(".parquet")
    index = pq.read_table(index_path)
    template = index.slice(0, 1).to_pylist()[0]
    with tarfile.open(shard_tar, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            _member(tar, name, data)
        for key in keys:
            _member(tar, f"{key}.jpg", image)
            _member(tar, f"{key}.json", annotation)
    rows = [template | {"key": key} for key in keys]
    pq.write_table(pa.concat_tables([index, pa.Table.from_pylist(rows, schema=index.schema)]), index_path)


def _escaped(tmp_path: Path, allowed: tuple[Path, ...]) -> list[Path]:
    """Paths named with the sentinel outside the ``allowed`` folders: under the test's temporary folder (the
    generated traversals climb four levels from outputs nested deeper than that) and at the absolute one."""
    found = [p for p in tmp_path.rglob(f"*{SENTINEL}*") if not any(p.is_relative_to(folder) for folder in allowed)]
    return found + [p for p in (Path("/abs"),) if p.exists()]


def test_generated_names_never_leave_the_output_of_any_tool(tmp_path: Path) -> None:
    from pipelines.config import ExportJobConfig, ReportJobConfig
    from pipelines.export.job import run as export
    from pipelines.report.job import run as report

    names = _generated_names(24, seed=7)
    images = make_images(len(names), seed=9, width=160, height=120, persons=(1, 2))
    for image, name in zip(images, names, strict=True):  # the corpus's own file names are the generated names
        image.file_name = f"{name.replace('/', '_').replace(chr(92), '_').strip('.') or 'x'}.jpg"
    source = tmp_path / "in"
    write_corpus(str(source / "images"), images)
    write_coco(str(source / "coco.json"), images)
    out = tmp_path / "a" / "b" / "c" / "d"  # every output four levels down: a four-level climb stays in view
    shards = out / "shards"
    shard(_shard_config(source / "images", shards, f"input.annotations={source / 'coco.json'}", "shard.max_samples=6"))
    _plant_keys(sorted(shards.glob("shard-*.tar"))[0], names)  # and the raw names as keys of a hand-made shard
    labels = out / "labels"
    summary = _fake_label(_label_config(shards, labels))
    assert summary["reconciled"]
    assert summary["errors_by_reason"]["invalid_key"] >= len(names)
    for fmt in ("crops", "hmr2", "camerahmr"):
        base = [f"input.labels={labels}", f"input.shards={shards}", f"output={out / fmt}", f"format={fmt}"]
        export(compose_config("dpmesh_export", [*base, "log_level=WARNING"], ExportJobConfig))
    report(compose_config("dpmesh_report", [f"input.labels={labels}", f"output={out / 'report'}",
                                            "report.per_tier=2", "log_level=WARNING"], ReportJobConfig))  # fmt: skip
    assert not _escaped(tmp_path, (source, out))
    outside = [
        p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(source) and not p.is_relative_to(out)
    ]
    assert not outside, outside
    exported = [tar for fmt in ("crops", "hmr2", "camerahmr") for tar in (out / fmt).rglob("*.tar")]
    assert exported
    for tar_path in exported:  # nothing a `tar -x` would place outside the folder it is unpacked in
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                safe_member_name(member.name)  # one plain segment: raises for a folder, "..", a separator


def test_a_planted_marker_is_refused_and_a_bad_summary_or_index_is_read_as_absent(
    labeled_set: Path, tmp_path: Path
) -> None:
    from pipelines.config import ExportJobConfig, ReportJobConfig
    from pipelines.export.job import run as export
    from pipelines.report.job import run as report

    labels = tmp_path / "labels"
    shutil.copytree(labeled_set / "labels", labels)
    summary = (labels / "_summary.json").read_text()
    (labels / "_summary.json").write_text("[1, 2, 3]")  # not an object: a record of the run, not the truth
    (labels / "_done_index.json.gz").write_bytes(b"not gzip")  # a cache: the markers are read instead
    refiltered = refilter(
        compose_config("dpmesh_refilter", [f"input={labels}", f"output={tmp_path / 'r'}"], RefilterJobConfig)
    )
    assert refiltered["reconciled"]
    export_args = [f"input.labels={labels}", f"input.shards={labeled_set / 'shards'}", "format=crops"]
    exported = export(compose_config("dpmesh_export", [*export_args, f"output={tmp_path / 'e'}"], ExportJobConfig))
    assert exported["counts"]["persons"] > 0
    with pytest.raises(ConfigError, match="summary does not say which body model"):  # one line, not a traceback
        report(
            compose_config("dpmesh_report", [f"input.labels={labels}", f"output={tmp_path / 'rep'}"], ReportJobConfig)
        )
    (labels / "_summary.json").write_text(summary)

    marker = sorted((labels / "_done").glob("*.json"))[0]
    planted = json.loads(marker.read_text()) | {"shard": "../../../x/evil"}  # a name later joined into paths
    marker.write_text(json.dumps(planted))
    (labels / "_done_index.json.gz").unlink()
    refused = "is not a marker this pipeline wrote"
    with pytest.raises(ConfigError, match=refused):
        refilter(
            compose_config("dpmesh_refilter", [f"input={labels}", f"output={tmp_path / 'r2'}"], RefilterJobConfig)
        )
    with pytest.raises(ConfigError, match=refused):
        export(compose_config("dpmesh_export", [*export_args, f"output={tmp_path / 'e2'}"], ExportJobConfig))
    with pytest.raises(ConfigError, match=refused):
        report(
            compose_config("dpmesh_report", [f"input.labels={labels}", f"output={tmp_path / 'rep2'}"], ReportJobConfig)
        )
    assert not (tmp_path / "x").exists()
