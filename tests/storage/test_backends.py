"""Behaviour of ``pipelines.storage`` that every backend shares, one suite run on each: local paths, a real S3
server (SeaweedFS, tests/s3_server.py) and a GCS API server (the emulator, tests/gcs_server.py, reached through
``StorageConfig.gcs_endpoint_url`` only).

What only one backend has (S3 retries and pagination, GCS resumable uploads and ranged reads, local temporary
files and list order) is in test_local.py, test_s3.py and test_gcs.py beside this file; faults injected by a proxy
in front of the S3 server are in test_storage_faults.py.
"""

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.config.storage import StorageConfig
from pipelines.storage import ObjectInfo, Storage, join


BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.s3), pytest.param("gcs", marks=pytest.mark.gcs)]
MIB = 1 << 20


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, str]:
    """``(storage, root URI)`` for an empty root on each backend: a folder, a fresh S3 bucket, a fresh GCS bucket."""
    if request.param == "local":
        return Storage(StorageConfig()), str(tmp_path / "root")
    cfg: StorageConfig = request.getfixturevalue(f"{request.param}_storage_config")
    return Storage(cfg), request.getfixturevalue(f"{request.param}_bucket")


def _uris(infos: Iterator[ObjectInfo]) -> list[str]:
    return [info.uri for info in infos]


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_write_read_round_trip_and_atomic_overwrite(store: tuple[Storage, str]) -> None:
    storage, root = store
    uri = join(root, "a", "b", "obj.bin")
    storage.write_bytes(uri, b"first")
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"
    with storage.open_read(uri) as f:
        assert f.read() == b"second"
    storage.write_bytes(join(root, "empty"), b"")
    assert storage.read_bytes(join(root, "empty")) == b""
    with storage.open_read(join(root, "empty")) as f:
        assert f.read() == b""
    # Only whole objects ever appear: the listing holds exactly what was written, no upload or temporary leftovers.
    assert list(storage.list(root)) == [ObjectInfo(join(root, "a/b/obj.bin"), 6), ObjectInfo(join(root, "empty"), 0)]


def test_atomic_write_leaves_no_temp_file(store: tuple[Storage, str]) -> None:
    storage, root = store
    for i in range(3):
        storage.write_bytes(join(root, f"f{i}"), b"x" * i)
    assert _uris(storage.list(root)) == [join(root, f"f{i}") for i in range(3)]
    if "://" not in root:
        assert sorted(os.listdir(root)) == ["f0", "f1", "f2"], "nothing else on disk either"


def test_exists_size_delete(store: tuple[Storage, str]) -> None:
    storage, root = store
    uri = join(root, "dir", "obj")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"12345")
    assert storage.exists(uri)
    assert storage.size(uri) == 5
    assert not storage.exists(join(root, "dir")), "directories are not objects"
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # missing is not an error


@pytest.mark.parametrize("op", ["read_bytes", "open_read", "size"])
def test_missing_object_raises_file_not_found_with_uri(store: tuple[Storage, str], op: str) -> None:
    storage, root = store
    uri = join(root, "nope", "missing.bin")
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        getattr(storage, op)(uri)


def test_list_is_recursive_sorted_lazy_and_directory_scoped(store: tuple[Storage, str]) -> None:
    storage, root = store
    keys = ["d/b/2", "d/a", "d/b/1", "d/c/x/y", "d2/z", "top"]
    for key in keys:
        storage.write_bytes(join(root, key), key.encode())
    listing = storage.list(join(root, "d"))
    assert isinstance(listing, Iterator)
    assert list(listing) == [ObjectInfo(join(root, k), len(k)) for k in ["d/a", "d/b/1", "d/b/2", "d/c/x/y"]]
    assert _uris(storage.list(root + "/")) == [join(root, k) for k in sorted(keys)]
    assert list(storage.list(join(root, "nothing-here"))) == []


def test_read_range_reads_the_bytes_at_an_offset(store: tuple[Storage, str]) -> None:
    storage, root = store
    data = bytes(range(256)) * 40
    storage.write_bytes(join(root, "big.bin"), data)
    assert storage.read_range(join(root, "big.bin"), 1000, 300) == data[1000:1300]
    assert storage.read_range(join(root, "big.bin"), len(data) - 5, 100) == data[-5:]  # short at the end
    assert storage.read_range(join(root, "big.bin"), 7, 0) == b""
    with pytest.raises(FileNotFoundError):
        storage.read_range(join(root, "missing.bin"), 0, 10)


def test_one_level_lists_direct_objects_and_subfolders_only(store: tuple[Storage, str]) -> None:
    storage, root = store
    for key in ["d/b/2", "d/a", "d/c/x/y", "d2/z", "d/e"]:
        storage.write_bytes(join(root, key), key.encode())
    assert list(storage.list_top(join(root, "d"))) == [ObjectInfo(join(root, k), len(k)) for k in ["d/a", "d/e"]]
    assert storage.subfolders(join(root, "d")) == (join(root, "d/b") + "/", join(root, "d/c") + "/")
    assert storage.subfolders(join(root, "d/b")) == ()
    assert list(storage.list_top(join(root, "nothing-here"))) == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("a/*.tar", ["a/x.tar"]),
        ("a/**.tar", ["a/b/c/z.tar", "a/b/y.tar", "a/x.tar"]),
        ("a/**/*.tar", ["a/b/c/z.tar", "a/b/y.tar", "a/x.tar"]),
        ("a/*/y.tar", ["a/b/y.tar"]),
        ("a/?.t*", ["a/x.tar", "a/x.txt"]),
        ("a/[wx].tar", ["a/x.tar"]),
        ("a/x.tar", ["a/x.tar"]),
    ],
)
def test_glob(store: tuple[Storage, str], pattern: str, expected: list[str]) -> None:
    storage, root = store
    for key in ["a/x.tar", "a/x.txt", "a/b/y.tar", "a/b/c/z.tar", "ab/x.tar"]:
        storage.write_bytes(join(root, key), b"")
    assert _uris(storage.glob(join(root, pattern))) == [join(root, k) for k in expected]


def test_object_names_are_quoted(store: tuple[Storage, str]) -> None:
    storage, root = store
    uri = join(root, "odd names", "a b#c?d%20e+f.jpg")
    storage.write_bytes(uri, b"odd")
    assert storage.read_bytes(uri) == b"odd"
    with storage.open_read(uri) as f:
        assert f.read() == b"odd"
    assert _uris(storage.glob(join(root, "odd names", "*.jpg"))) == [uri]


def test_upload_file_round_trips_and_refuses_a_missing_source(store: tuple[Storage, str], tmp_path: Path) -> None:
    storage, root = store
    src = tmp_path / "big.bin"
    data = os.urandom(MIB + 123)
    src.write_bytes(data)
    uri = join(root, "up", "big.bin")
    storage.upload_file(str(src), uri)
    assert storage.size(uri) == len(data)
    assert hashlib.sha256(storage.read_bytes(uri)).digest() == hashlib.sha256(data).digest()
    with pytest.raises(FileNotFoundError):
        storage.upload_file(str(tmp_path / "absent"), join(root, "x"))


def test_open_read_streams_into_tarfile(store: tuple[Storage, str]) -> None:
    storage, root = store
    members = {f"{i:04d}.txt": os.urandom(3000 + i) for i in range(20)}
    uri = join(root, "shard-00000.tar")
    storage.write_bytes(uri, _tar(members))
    seen = {}
    with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            seen[member.name] = extracted.read()
    assert seen == members


def test_concurrent_writers_and_readers_share_one_storage(store: tuple[Storage, str]) -> None:
    storage, root = store
    payloads = {join(root, "many", f"{i:03d}"): os.urandom(1000 + i) for i in range(40)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: storage.write_bytes(*item), payloads.items()))
        assert dict(zip(payloads, pool.map(storage.read_bytes, payloads), strict=True)) == payloads


def test_pickled_storage_works_after_use(store: tuple[Storage, str]) -> None:
    storage, root = store
    uri = join(root, "p")
    storage.write_bytes(uri, b"before")  # creates the client
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read_bytes(uri) == b"before"
    clone.write_bytes(uri, b"after")
    assert storage.read_bytes(uri) == b"after"


@pytest.mark.parametrize(
    "backend", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("gcs", marks=pytest.mark.gcs)]
)
@pytest.mark.parametrize("op", ["read_bytes", "open_read", "size", "list"])
def test_missing_bucket_raises_file_not_found(request: pytest.FixtureRequest, backend: str, op: str) -> None:
    if backend == "s3":
        request.getfixturevalue("s3_env")
    storage = Storage(request.getfixturevalue(f"{backend}_storage_config"))
    scheme = {"s3": "s3", "gcs": "gs"}[backend]
    call = (lambda uri: list(storage.list(uri))) if op == "list" else getattr(storage, op)
    with pytest.raises(FileNotFoundError, match="no-such-bucket-4b1d"):
        call(f"{scheme}://no-such-bucket-4b1d/k")
    assert not storage.exists(f"{scheme}://no-such-bucket-4b1d/k")
