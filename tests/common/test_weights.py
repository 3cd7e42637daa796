"""``pipelines.weights.local_copy``: names that would escape the cache are refused, concurrent first loads share one
download, and a copy only ever appears complete.

Downloads go through the fault proxy (tests/fault_proxy.py) only to count requests per object: even spawned
worker processes are seen there. SeaweedFS refuses keys with ``.`` / ``..`` segments or NUL and collapses ``//``,
so escaping names cannot be stored on the test server; the end-to-end refusal test lists them from a storage
whose listing is doctored, everything else is the real server.
"""

import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipelines.weights as weights
from pipelines.config.storage import StorageConfig
from pipelines.storage import ObjectInfo, Storage, join, parse_uri
from pipelines.weights import local_copy, safe_relative_path
from tests.fault_proxy import FaultPlan, FaultProxy


N_PROCESSES = 4


@pytest.mark.parametrize(
    "name", ["../../x", "..", ".", "a/..", "a/../../b", "/abs/path", "", "a//b", "a/./b", "a/", "a\x00b", "\x00"]
)
def test_escaping_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"refusing to copy weights object 's3://b/w/.*could escape"):
        safe_relative_path(name, f"s3://b/w/{name}")


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("model.safetensors", "model.safetensors"),
        ("a/b/c.json", "a/b/c.json"),
        ("..hidden", "..hidden"),
        ("a..b", "a..b"),
    ],
)
def test_plain_names_are_kept(name: str, path: str) -> None:
    assert safe_relative_path(name, "s3://b/w/" + name) == path


def test_local_paths_are_returned_unchanged(tmp_path: Path) -> None:
    assert local_copy(str(tmp_path), str(tmp_path / "cache"), StorageConfig()) == str(tmp_path)
    assert local_copy(f"file://{tmp_path}/x", str(tmp_path / "cache"), StorageConfig()) == f"{tmp_path}/x"
    assert not (tmp_path / "cache").exists()


FILES = {
    "config.json": b'{"hidden": 8}',
    "model.safetensors": os.urandom(3 << 20),
    "sub/preprocessor_config.json": b"{}",
}


@pytest.fixture
def weights_prefix(fault_proxy: FaultProxy, fault_storage_config: StorageConfig, s3_bucket: str) -> str:
    """A folder of weights on the S3 server, written without faults: ``s3://<bucket>/models/tiny``."""
    prefix = join(s3_bucket, "models", "tiny")
    storage = Storage(fault_storage_config)
    for name, data in FILES.items():
        storage.write_bytes(join(prefix, name), data)
    return prefix


def _object_gets(proxy: FaultProxy, prefix: str) -> dict[str, int]:
    """GET requests per object name under ``prefix``, as the proxy saw them."""
    parsed = parse_uri(prefix)
    path = f"/{parsed.bucket}/{parsed.key}/"
    return {p.removeprefix(path): n for (m, p), n in proxy.requests.items() if m == "GET" and p.startswith(path)}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.s3
def test_copy_once_then_reuse_without_requests(
    fault_proxy: FaultProxy, fault_storage_config: StorageConfig, weights_prefix: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = local_copy(weights_prefix, str(cache), fault_storage_config)
    assert Path(path).name == "tiny"
    assert _tree(Path(path)) == FILES
    assert (Path(path).parent / weights.STAMP).exists()
    before = fault_proxy.requests.total()
    assert local_copy(weights_prefix, str(cache), fault_storage_config) == path
    assert fault_proxy.requests.total() == before, "a finished copy is reused without asking the store"
    single = local_copy(join(weights_prefix, "config.json"), str(cache), fault_storage_config)
    assert Path(single).read_bytes() == FILES["config.json"]
    assert sorted(p.name for p in cache.iterdir() if ".tmp-" in p.name) == []


class _DoctoredStorage(Storage):
    """The real storage, but its listings also hold an object whose name would escape the cache folder."""

    evil = ""

    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        yield from super().list(prefix_uri)
        yield ObjectInfo(prefix_uri.rstrip("/") + "/" + self.evil, 1)


@pytest.mark.s3
@pytest.mark.parametrize("evil", ["../../x", "/abs/path", "a/../../../etc/passwd", "sub//y", "nul\x00"])
def test_an_escaping_object_name_refuses_the_whole_copy(
    monkeypatch: pytest.MonkeyPatch,
    fault_proxy: FaultProxy,
    fault_storage_config: StorageConfig,
    weights_prefix: str,
    tmp_path: Path,
    evil: str,
) -> None:
    monkeypatch.setattr(_DoctoredStorage, "evil", evil)
    monkeypatch.setattr(weights, "Storage", _DoctoredStorage)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ValueError, match=r"refusing to copy weights object 's3://.*/models/tiny/") as info:
        local_copy(weights_prefix, str(cache), fault_storage_config)
    assert repr(evil)[1:-1] in str(info.value)
    assert _object_gets(fault_proxy, weights_prefix) == {}, "names are checked before anything is downloaded"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


@pytest.mark.s3
def test_a_failed_copy_leaves_nothing_that_looks_finished(
    monkeypatch: pytest.MonkeyPatch, fault_storage_config: StorageConfig, weights_prefix: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    real_download = weights._download
    calls: list[str] = []

    def dies_on_second_file(storage: Storage, uri: str, path: str) -> None:
        calls.append(uri)
        if len(calls) == 2:
            raise ConnectionResetError("worker lost its network")
        real_download(storage, uri, path)

    monkeypatch.setattr(weights, "_download", dies_on_second_file)
    with pytest.raises(ConnectionResetError):
        local_copy(weights_prefix, str(cache), fault_storage_config)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(weights, "_download", real_download)
    assert _tree(Path(local_copy(weights_prefix, str(cache), fault_storage_config))) == FILES


def _race(uri: str, cache: str, cfg: StorageConfig, barrier: Any, results: Any) -> None:
    """One worker process: wait for the others, then load the weights as a model handler's setup would."""
    barrier.wait(timeout=60)
    try:
        path = local_copy(uri, cache, cfg)
    except Exception as exc:  # reported, so the test fails at once instead of waiting for a result
        results.put(("error", repr(exc)))
        raise
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    digests = {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}
    results.put((path, digests))


@pytest.mark.s3
def test_concurrent_first_loads_download_once(
    fault_proxy: FaultProxy, fault_storage_config: StorageConfig, weights_prefix: str, tmp_path: Path
) -> None:
    cache = str(tmp_path / "cache")
    # Every request is slowed down (0.2-0.5 s), so the first process is still downloading when the others arrive.
    fault_proxy.set_plan(FaultPlan(rate=1.0, kinds=("delay",)))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N_PROCESSES), ctx.Queue()
    processes = [
        ctx.Process(target=_race, args=(weights_prefix, cache, fault_storage_config, barrier, results))
        for _ in range(N_PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    assert [o for o in outcomes if o[0] == "error"] == []
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len({path for path, _ in outcomes}) == 1
    expected = {name: hashlib.sha1(data).hexdigest() for name, data in FILES.items()}
    assert all(digests == expected for _, digests in outcomes)
    assert _object_gets(fault_proxy, weights_prefix) == dict.fromkeys(FILES, 1), "one download of each file"
    parsed = parse_uri(weights_prefix)
    assert fault_proxy.requests[("GET", f"/{parsed.bucket}")] == 1, "one listing: the waiters found the copy done"
    assert sorted(p.name for p in Path(cache).iterdir() if ".tmp-" in p.name) == []
