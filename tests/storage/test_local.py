"""What only local paths do in ``pipelines.storage``: a failed write keeps the old file and leaves no temporary file
behind (and listings skip a killed writer's), listings follow full path string order, ``file://`` URIs stay as
given. The behaviour every backend shares is in test_backends.py."""

import os
from pathlib import Path

import pytest

from pipelines.storage import Storage
from pipelines.storage.local import TEMP_PREFIX


def test_failed_local_write_keeps_old_object_and_no_temp(tmp_path: Path) -> None:
    storage = Storage()
    uri = str(tmp_path / "obj")
    storage.write_bytes(uri, b"old")
    with pytest.raises(TypeError):
        storage.write_bytes(uri, "not bytes")  # type: ignore[arg-type]
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["obj"]
    (tmp_path / f"{TEMP_PREFIX}crashed").write_bytes(b"partial")  # a temp file left by a killed writer
    assert [o.uri for o in storage.list(str(tmp_path))] == [uri]


def test_local_list_order_is_full_path_string_order(tmp_path: Path) -> None:
    # "a-c" < "a/b" as strings ('-' < '/'): a plain directory walk would yield a/b first. (SeaweedFS lists in
    # directory-walk order here, unlike AWS, so this case is only pinned for local paths.)
    storage = Storage()
    for key in ["a/b", "a-c", "a0", "a/a/x"]:
        storage.write_bytes(str(tmp_path / key), b"")
    assert [o.uri for o in storage.list(str(tmp_path))] == [str(tmp_path / k) for k in ["a-c", "a/a/x", "a/b", "a0"]]


def test_local_list_keeps_file_scheme(tmp_path: Path) -> None:
    storage = Storage()
    storage.write_bytes(f"file://{tmp_path}/x/y", b"1")
    assert [o.uri for o in storage.list(f"file://{tmp_path}")] == [f"file://{tmp_path}/x/y"]
    assert storage.read_bytes(str(tmp_path / "x" / "y")) == b"1"
