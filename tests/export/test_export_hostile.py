"""dpmesh-export on hostile input (issue 20): keys that try to leave the output folder, SQL statements in
``select.where``, an output over an input, labels exported against another shard set, annotations gone, NaN / inf in
label rows, an output that is a file, and a kill mid-export. Each ends as a one-line launch error or as counted,
named error rows; nothing is written or deleted outside ``output=``. In-memory runner, tiny model labels.
"""

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import ConfigError, ExportJobConfig, ShardJobConfig, compose_config
from pipelines.export import scratch
from pipelines.export.job import report
from pipelines.export.job import run as export
from pipelines.shard.job import run as shard
from pipelines.storage import Storage
from tests.fakes.corpus import make_images
from tests.fakes.digests import digests
from tests.fakes.kill import kill_after_write
from tests.fakes.shard_set import label_shards, shard_annotated


ESCAPE = "../../../x/EXPORT"  # from <out>/images/ (camerahmr) three levels up lands beside the output's parent
VICTIM = "../../../x/victim"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 annotated images (same size, 1-2 persons) in several shards, labeled with the tiny model, ``filter=off``."""
    root = tmp_path_factory.mktemp("hostile_export")
    shards = shard_annotated(root, make_images(8, seed=5, width=96, height=80, persons=(1, 2)), "shard.max_samples=2")
    label_shards(shards, root / "labels", "filter=off")
    return root


def _shard_args(root: Path, output: Path) -> list[str]:
    return [
        f"input.images={root / 'images'}",
        f"input.annotations={root / 'coco.json'}",
        f"output={output}",
        "shard.max_samples=2",
        "log_level=WARNING",
    ]


def _inputs(source: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the labels and shards this test may spoil."""
    labels, shards = tmp_path / "in" / "labels", tmp_path / "in" / "shards"
    shutil.copytree(source / "labels", labels)
    shutil.copytree(source / "shards", shards)
    return labels, shards


def _config(labels: Path, shards: Path, out: Path | str, fmt: str, *more: str) -> ExportJobConfig:
    base = [f"input.labels={labels}", f"input.shards={shards}", f"output={out}", f"format={fmt}"]
    return compose_config("dpmesh_export", [*base, "log_level=WARNING", *more], ExportJobConfig)


def _accepted(labels: Path) -> dict[str, int]:
    """Accepted persons per labeled shard, from the label markers."""
    return {
        p.stem: json.loads(p.read_text())["counts"]["persons_accepted"] for p in sorted((labels / "_done").glob("*"))
    }


def _busiest(labels: Path) -> str:
    """The labeled shard with the most accepted persons."""
    counts = _accepted(labels)
    return max(sorted(counts), key=lambda name: counts[name])


def _rewrite(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _plant_escaping_key(labels: Path, shards: Path, shard_name: str, key: str, with_labels: bool) -> int:
    """Adds an index row ``key`` (pointing at the shard's first image) and, ``with_labels``, copies of that image's
    label rows under ``key``. Returns how many label rows were planted."""
    index_path = shards / f"{shard_name}.parquet"
    index = pq.read_table(index_path)
    rows = index.to_pylist()
    _rewrite(index_path, [*rows, {**rows[0], "key": key}], index.schema)
    if not with_labels:
        return 0
    labels_path = labels / "annotations" / f"{shard_name}.parquet"
    table = pq.read_table(labels_path)
    people = [r for r in table.to_pylist() if r["image_key"] == rows[0]["key"]]
    planted = [{**r, "image_key": key, "sample_id": f"{key}_p{r['person_idx']}"} for r in people]
    _rewrite(labels_path, [*table.to_pylist(), *planted], table.schema)
    return len(planted)


def _files_outside(root: Path, *inside: Path) -> list[Path]:
    """Files under ``root`` that are in none of ``inside``."""
    return [p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(i) for i in inside)]


def test_keys_that_leave_the_output_are_counted_never_written(source: Path, tmp_path: Path) -> None:
    labels, shards = _inputs(source, tmp_path)
    name = _busiest(labels)
    planted = _plant_escaping_key(labels, shards, name, ESCAPE, with_labels=True)
    out = tmp_path / "a" / "b" / "out"
    cfg = _config(labels, shards, out, "camerahmr")

    stats = export(cfg)

    assert _files_outside(tmp_path, tmp_path / "in", out) == [], "nothing is written outside output="
    assert stats["skipped_by_reason"] == {"invalid_key": planted}
    assert stats["counts"]["index_keys_invalid"] == 1
    assert stats["reconciled"] is True
    assert stats["counts"]["persons"] == sum(_accepted(labels).values())  # every genuine person still exported
    assert {e["reason"] for e in stats["errors"]} == {"invalid_key"}
    assert all(e["shard"] == name for e in stats["errors"])
    assert "invalid_key" in (out / "README.md").read_text()
    assert "invalid_key" in report(stats, cfg)
    names = {str(n) for npz in out.glob("shard-*.npz") for n in np.load(npz)["imgname"]}
    assert all(n.startswith("images/") and ".." not in n for n in names)


def test_a_reexport_deletes_only_what_it_can_name_inside_the_output(source: Path, tmp_path: Path) -> None:
    labels, shards = _inputs(source, tmp_path)
    out = tmp_path / "a" / "b" / "out"
    export(_config(labels, shards, out, "camerahmr"))
    victim = Path(os.path.normpath(out / "images" / f"{VICTIM}.jpg"))
    assert not victim.is_relative_to(out)
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"someone else's file")
    _plant_escaping_key(labels, shards, _busiest(labels), VICTIM, with_labels=False)

    stats = export(_config(labels, shards, out, "camerahmr", "overwrite=true"))

    assert victim.read_bytes() == b"someone else's file"
    assert stats["counts"]["index_keys_invalid"] == 1
    loose = {f"images/{p.name}" for p in (out / "images").iterdir()}
    named = {str(n) for npz in out.glob("shard-*.npz") for n in np.load(npz)["imgname"]}
    assert loose == named


@pytest.mark.parametrize("fmt", ["hmr2", "crops"])
def test_tar_members_are_plain_names(source: Path, tmp_path: Path, fmt: str) -> None:
    labels, shards = _inputs(source, tmp_path)
    planted = _plant_escaping_key(labels, shards, _busiest(labels), ESCAPE, with_labels=True)
    out = tmp_path / "out"

    stats = export(_config(labels, shards, out, fmt))

    members = []
    for path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            members += tar.getnames()
    assert members
    assert all("/" not in m and ".." not in m and m.split(".", 1)[0] for m in members), members
    assert stats["skipped_by_reason"] == {"invalid_key": planted}


def test_a_where_holding_statements_is_refused_before_any_sql_runs(source: Path, tmp_path: Path) -> None:
    labels, shards = _inputs(source, tmp_path)
    planted_file = tmp_path / "pwned.csv"
    secret = tmp_path / "secret.txt"
    secret.write_text("x\n")
    out = tmp_path / "out"
    attempts = {
        f"true); COPY (SELECT 42) TO '{planted_file}'; SELECT 1 WHERE (true": "';'",
        f"true) TO '{planted_file}' --": "not one SQL expression",
        f"confidence > (SELECT count(*) FROM read_text('{secret}'))": "subquery",
        "confidence > 0, 1": "not one SQL expression",
    }
    for where, message in attempts.items():
        with pytest.raises(ConfigError, match=message) as raised:
            export(_config(labels, shards, out, "hmr2", f"select.where={json.dumps(where)}"))
        assert "\n" not in str(raised.value)
        assert "select.where=" in str(raised.value)
    # A later launch check failing (output= an existing file) changes nothing: the expression is refused first.
    existing = tmp_path / "existing"
    existing.write_text("")
    where = f"true); COPY (SELECT 42) TO '{planted_file}'; SELECT 1 WHERE (true"
    with pytest.raises(ConfigError, match=r"select\.where"):
        export(_config(labels, shards, existing, "hmr2", f"select.where={json.dumps(where)}"))
    assert not planted_file.exists()
    assert not out.exists()


def test_an_output_over_an_input_is_refused_at_launch(source: Path, tmp_path: Path) -> None:
    labels, shards = _inputs(source, tmp_path)
    before = {p: p.read_bytes() for p in shards.iterdir() if p.is_file()}
    cases = {
        shards: "is input.shards",
        labels / "export": "lies inside input.labels",
        tmp_path / "in": "contains input.labels",
    }
    for out, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            export(_config(labels, shards, out, "hmr2"))
    assert {p: p.read_bytes() for p in shards.iterdir() if p.is_file()} == before
    assert not (labels / "export").exists()
    assert not (shards / "_done").exists()


def test_an_existing_file_as_output_is_one_line_from_the_command(source: Path, tmp_path: Path) -> None:
    existing = tmp_path / "dataset.tar"
    existing.write_bytes(b"not a folder")
    args = [f"input.labels={source / 'labels'}", f"input.shards={source / 'shards'}", f"output={existing}"]
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.export.job", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dpmesh-export: configuration error: output=")
    assert "existing file" in lines[0]
    assert existing.read_bytes() == b"not a folder"


def _swap_two_images(source: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """The source shard set with the shards holding two images replaced by a resharding of the corpus in which those
    two images' contents are exchanged (same names, so the same keys and shards, other pixels). Returns the set and
    the replaced shards' names."""
    root = tmp_path / "swapped"
    shutil.copytree(source / "images", root / "images")
    shutil.copy(source / "coco.json", root / "coco.json")
    first, second = sorted((root / "images").iterdir())[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    shard(compose_config("dpmesh_shard", _shard_args(root, root / "shards"), ShardJobConfig))
    stems = (first.stem, second.stem)
    changed = sorted(
        index.stem
        for index in (root / "shards").glob("shard-*.parquet")
        if any(key.startswith(stems) for key in pq.read_table(index)["key"].to_pylist())
    )
    mixed = tmp_path / "mixed"
    shutil.copytree(source / "shards", mixed)
    manifest = json.loads((mixed / "_manifest.json").read_text())
    resharded = {e["shard"]: e for e in json.loads((root / "shards" / "_manifest.json").read_text())["shards"]}
    manifest["shards"] = [resharded[e["shard"]] if e["shard"] in changed else e for e in manifest["shards"]]
    (mixed / "_manifest.json").write_text(json.dumps(manifest))
    for name in changed:
        for suffix in (".tar", ".parquet"):
            shutil.copy(root / "shards" / f"{name}{suffix}", mixed / f"{name}{suffix}")
    return mixed, changed


def test_labels_exported_against_another_shard_set_export_nothing_from_changed_shards(
    source: Path, tmp_path: Path
) -> None:
    labels, shards = source / "labels", source / "shards"
    swapped, changed = _swap_two_images(source, tmp_path)
    accepted = _accepted(labels)
    assert changed
    assert set(changed) <= set(accepted)
    assert len(changed) < len(accepted), "some shards are unchanged"
    out = tmp_path / "out"
    export(_config(labels, shards, out, "hmr2"))  # a good export first: the refused shards' files must go
    assert all((out / f"{n}.tar").exists() for n in changed)
    cfg = _config(labels, swapped, out, "hmr2", "overwrite=true")

    stats = export(cfg)

    assert [(e["shard"], e["reason"]) for e in stats["shard_errors"]] == [(n, "lineage_mismatch") for n in changed]
    assert all("sha1" in e["error"] for e in stats["shard_errors"])
    assert stats["skipped_by_reason"] == {"lineage_mismatch": sum(accepted[n] for n in changed)}
    assert stats["counts"]["persons"] == sum(accepted.values()) - sum(accepted[n] for n in changed)
    assert stats["reconciled"] is True
    assert not any((out / f"{n}.tar").exists() for n in changed), "no training file contradicts the card"
    card = (out / "README.md").read_text()
    assert all(n in card for n in changed)
    assert "lineage_mismatch" in card
    console = report(stats, cfg)
    assert all(n in console for n in changed)
    assert "lineage_mismatch" in console

    fixed = export(_config(labels, shards, out, "hmr2"))  # pointed at the right set: the refused shards are redone
    assert fixed["shard_errors"] == []
    assert fixed["counts"]["persons"] == sum(accepted.values())
    assert all((out / f"{n}.tar").exists() for n in changed)


def test_a_marker_promising_persons_without_annotations_is_a_counted_shard_error(source: Path, tmp_path: Path) -> None:
    labels, shards = _inputs(source, tmp_path)
    accepted = _accepted(labels)
    gone = _busiest(labels)
    (labels / "annotations" / f"{gone}.parquet").unlink()

    stats = export(_config(labels, shards, tmp_path / "out", "crops"))

    assert stats["shard_errors"][0]["shard"] == gone
    assert stats["shard_errors"][0]["reason"] == "labels_missing"
    assert stats["skipped_by_reason"] == {"labels_missing": accepted[gone]}
    assert stats["counts"]["rows_in"] == sum(accepted.values())  # the card's "N of M" counts the missing rows
    assert stats["counts"]["persons"] == sum(accepted.values()) - accepted[gone]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"persons: {stats['counts']['persons']} (of {sum(accepted.values())} accepted" in card


def test_labels_or_an_index_that_are_not_parquet_refuse_their_shard_only(source: Path, tmp_path: Path) -> None:
    labels, shards = _inputs(source, tmp_path)
    accepted = _accepted(labels)
    first, second = sorted(name for name, n in accepted.items() if n)[:2]
    (labels / "annotations" / f"{first}.parquet").write_bytes(b"not parquet")
    (shards / f"{second}.parquet").write_bytes(b"PAR1 not an index")

    stats = export(_config(labels, shards, tmp_path / "out", "crops"))

    assert {(e["shard"], e["reason"]) for e in stats["shard_errors"]} == {
        (first, "labels_unreadable"),
        (second, "index_unreadable"),
    }
    assert stats["counts"]["persons"] == sum(accepted.values()) - accepted[first] - accepted[second]
    assert stats["reconciled"] is True


def test_index_rows_pointing_outside_the_tar_and_shuffled_rows_are_counted(source: Path, tmp_path: Path) -> None:
    labels, shards = _inputs(source, tmp_path)
    name = _busiest(labels)
    index_path = shards / f"{name}.parquet"
    index = pq.read_table(index_path)
    rows = index.to_pylist()
    assert len(rows) >= 2
    rows[0]["tar_offset"] = -512  # a hand-made index: a negative offset, a terabyte read
    rows[1]["bytes"] = 10**12
    _rewrite(index_path, rows, index.schema)
    labels_path = labels / "annotations" / f"{name}.parquet"
    table = pq.read_table(labels_path)
    _rewrite(labels_path, table.to_pylist()[::-1], table.schema)  # rows out of (image key, person) order
    bad = sum(1 for r in table.to_pylist() if r["image_key"] in (rows[0]["key"], rows[1]["key"]))

    stats = export(_config(labels, shards, tmp_path / "out", "hmr2"))

    assert stats["skipped_by_reason"] == {"image_mismatch": bad}
    assert {s["key"] for s in stats["skipped_images"]} == {rows[0]["key"], rows[1]["key"]}
    assert stats["counts"]["persons"] == sum(_accepted(labels).values()) - bad
    assert stats["reconciled"] is True


def _spoil(labels: Path, shard_name: str) -> list[str]:
    """Puts NaN / inf into three rows' label values; returns their sample ids."""
    path = labels / "annotations" / f"{shard_name}.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    assert len(rows) >= 3
    rows[0]["betas"] = [math.nan, *rows[0]["betas"][1:]]
    rows[1]["transl"] = [0.0, math.inf, 1.0]
    rows[2]["keypoints_2d"] = [[-math.inf, 1.0, 1.0], *rows[2]["keypoints_2d"][1:]]
    _rewrite(path, rows, table.schema)
    return [r["sample_id"] for r in rows[:3]]


def _no_nan(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_no_nan(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_no_nan(v) for v in value)
    if isinstance(value, np.ndarray):
        return not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all())
    if isinstance(value, float | np.floating):
        return math.isfinite(value)
    return True


def _refuse_constant(name: str) -> None:
    pytest.fail(f"{name} in a crop's JSON: strict JSON has no NaN or Infinity")


def _exported_values(out: Path, fmt: str) -> tuple[set[str], list[Any]]:
    """The sample ids an export holds, and every value it wrote (arrays, pickled dicts, parsed JSON)."""
    ids, values = set(), []
    if fmt == "camerahmr":
        for npz in out.glob("shard-*.npz"):
            data = np.load(npz)
            ids |= {str(s) for s in data["sample_id"]}
            values += [data[k] for k in data.files]
        return ids, values
    for path in out.glob("shard-*.tar"):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if member.name.endswith(".data.pyd"):
                    people = pickle.loads(data)  # our own export, read back
                    ids |= {p["extra_info"]["sample_id"] for p in people}
                    values.append(people)
                elif member.name.endswith(".json"):
                    document = json.loads(data, parse_constant=_refuse_constant)
                    ids.add(document["row"]["sample_id"])
                    values.append(document)
    return ids, values


@pytest.mark.parametrize("fmt", ["hmr2", "camerahmr", "crops"])
def test_non_finite_label_values_become_error_rows(source: Path, tmp_path: Path, fmt: str) -> None:
    labels, shards = _inputs(source, tmp_path)
    spoiled = _spoil(labels, _busiest(labels))
    out = tmp_path / "out"

    stats = export(_config(labels, shards, out, fmt))

    assert stats["skipped_by_reason"] == {"non_finite_label": 3}
    assert sorted(e["sample_id"] for e in stats["errors"]) == sorted(spoiled)
    assert stats["reconciled"] is True
    ids, values = _exported_values(out, fmt)
    assert ids
    assert not ids & set(spoiled)
    assert len(ids) == stats["counts"]["persons"] == sum(_accepted(labels).values()) - 3
    assert all(_no_nan(v) for v in values), "no NaN or inf in a training file"


# dpmesh-export killed (SIGKILL) at the second tar member added after its first shard marker: one shard committed
# and another's tar half built, by construction rather than by timing.
_KILL_MID_TAR = """
import os, signal, sys, threading
from pipelines.export.formats import base
from pipelines.storage import Storage
events, lock = [], threading.Lock()
write, add = Storage.write_bytes, base.TarBuilder.add
def recording_write(self, uri, data):
    write(self, uri, data)
    if "/_done/" in uri:
        with lock:
            events.append(uri)
def killing_add(self, name, data):
    add(self, name, data)
    with lock:
        if events:
            events.append(name)
            if len(events) >= 3:
                os.kill(os.getpid(), signal.SIGKILL)
Storage.write_bytes = recording_write
base.TarBuilder.add = killing_add
from pipelines.export.job import main; sys.argv[0] = 'dpmesh-export'; main()
"""


def _temporaries(out: Path, system_tmp: Path) -> list[Path]:
    """Temporary files a run has open: in the output (its scratch folder, storage-layer names) or in the system
    temp folder."""
    return [*(out / "_tmp").rglob("*"), *out.rglob(".storage-tmp-*"), *system_tmp.rglob("*.tar")]


def test_a_killed_export_resumes_byte_identical_without_temporaries(source: Path, tmp_path: Path) -> None:
    labels, shards = source / "labels", source / "shards"
    reference = tmp_path / "reference"
    export(_config(labels, shards, reference, "hmr2"))
    total = len(list(reference.glob("shard-*.tar")))
    assert total >= 3

    out, system_tmp = tmp_path / "killed", tmp_path / "system_tmp"
    system_tmp.mkdir()
    args = [f"input.labels={labels}", f"input.shards={shards}", f"output={out}", "format=hmr2", "log_level=WARNING"]
    process = subprocess.run(
        [sys.executable, "-c", _KILL_MID_TAR, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(system_tmp)},
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, "the run was not killed while building a tar after a marker"
    assert _temporaries(out, system_tmp), "the kill landed while a tar was being built"
    assert 1 <= len(list((out / "_done").glob("*.json"))) < total, "the kill lands part-way"
    assert not list(system_tmp.rglob("*.tar")), "no shard tar in the system temp folder: it lives in the output"

    resumed = export(_config(labels, shards, out, "hmr2"))

    assert not (out / "_tmp").exists(), "the killed run's scratch tar is removed"
    assert not list(out.rglob(".storage-tmp-*"))
    assert resumed["shards"] == total
    assert digests(out) == digests(reference), "the same bytes as an uninterrupted export"


@pytest.mark.s3
def test_an_object_store_export_builds_tars_in_its_own_scratch_folder(
    source: Path, s3_bucket: str, s3_server: Any
) -> None:
    out = f"{s3_bucket}/export"
    storage_overrides = [
        "storage=s3",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
    ]
    cfg = _config(source / "labels", source / "shards", out, "hmr2", *storage_overrides)
    local = Path(scratch.folder(out))
    local.mkdir(parents=True, exist_ok=True)
    (local / "shard-000000.tar-killed.part").write_bytes(b"what a killed run left")

    stats = export(cfg)

    assert stats["counts"]["persons"] == sum(_accepted(source / "labels").values())
    tars = [o.uri for o in Storage(cfg.storage).list(out) if o.uri.endswith(".tar")]
    assert len(tars) == stats["shards"]
    assert not local.exists(), "the scratch folder is cleared at launch and gone once the run is over"


# An export killed right after its first write whose URI matches argv[1] (tests/fakes/kill.py).
_KILL_AFTER_WRITE = kill_after_write("sys.argv[0] = 'dpmesh-export'\nfrom pipelines.export.job import main; main()\n")
_EXPORT_BOUNDARIES = {
    "intent": r"/_intent\.json$",
    "tar": r"/shard-\d+\.tar$",
    "marker": r"/_done/shard-\d+\.json$",
    "stats": r"/stats\.json$",
    "card": r"/README\.md$",
}


@pytest.mark.parametrize("boundary", list(_EXPORT_BOUNDARIES))
def test_an_export_killed_at_any_write_boundary_resumes_to_the_same_bytes(
    source: Path, tmp_path: Path, boundary: str
) -> None:
    labels, shards = source / "labels", source / "shards"
    reference = tmp_path / "reference"
    export(_config(labels, shards, reference, "hmr2"))
    out = tmp_path / "killed"
    args = [f"input.labels={labels}", f"input.shards={shards}", f"output={out}", "format=hmr2", "log_level=WARNING"]
    process = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_WRITE, _EXPORT_BOUNDARIES[boundary], *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert process.returncode == -signal.SIGKILL, f"the export was not killed after its first {boundary} write"
    export(_config(labels, shards, out, "hmr2"))  # no overwrite=true: the run's own unfinished work is taken up
    assert not (out / "_tmp").exists()
    assert digests(out) == digests(reference), "the same bytes as an uninterrupted export"
