"""Transient storage faults are never permanent: reads, writes and listings through a fault-injecting proxy.

The S3 tests talk to the real server (SeaweedFS) through ``tests/fault_proxy.py``, which hurts a seeded random
fraction of requests with every fault kind (500, 503 SlowDown, delays, connection resets, truncated bodies and
one stall past the client's read timeout). Results must be byte-identical to the stored objects; a fault that
persists must raise ``TransientStorageError`` in bounded time and never return wrong bytes. The resumable reader
itself is also tested without a server, with scripted streams.
"""

import dataclasses
import io
import os
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

import pipelines.storage.resumable as resumable
from pipelines.config.storage import StorageConfig
from pipelines.storage import Storage, StorageError, join
from pipelines.storage.base import TransientStorageError
from pipelines.storage.resumable import open_resumable
from pipelines.storage.s3 import make_s3_client
from tests.fault_proxy import FAULT_KINDS, FaultPlan, FaultProxy, wait_for


MIB = 1 << 20
TAR_BLOCK = 10240  # tarfile's stream mode reads the archive in records of 20 x 512 bytes


# ---------------------------------------------------------------- the resumable reader, scripted streams


class _Stream:
    """A raw stream over ``data[offset:]`` that fails as scripted: after ``fail_after`` bytes it raises ``error``
    (or, with ``error=None``, ends early as a truncated body)."""

    def __init__(self, data: bytes, offset: int, fail_after: int | None, error: BaseException | None) -> None:
        self._data = data
        self._pos = offset
        self._stop = None if fail_after is None else offset + fail_after
        self._error = error
        self.closed = False

    def read(self, n: int) -> bytes:
        end = min(self._pos + n, len(self._data))
        if self._stop is not None:
            if self._pos >= self._stop:
                if self._error is not None:
                    raise self._error
                return b""
            end = min(end, self._stop)
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def close(self) -> None:
        self.closed = True


class _FlakyError(Exception):
    """Stands for a transient SDK error."""


def _scripted(data: bytes, script: list[tuple[int | None, BaseException | None]]) -> tuple[Callable, list[int]]:
    """``open_at`` whose n-th stream fails as ``script[n]`` says (streams past the script never fail)."""
    offsets: list[int] = []

    def open_at(offset: int) -> _Stream:
        fail_after, error = script[len(offsets)] if len(offsets) < len(script) else (None, None)
        offsets.append(offset)
        return _Stream(data, offset, fail_after, error)

    return open_at, offsets


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records the reader's backoff sleeps instead of sleeping."""
    sleeps: list[float] = []
    monkeypatch.setattr(resumable.time, "sleep", sleeps.append)
    return sleeps


def _open(open_at: Callable, size: int | None, attempts: int = 3) -> Any:
    cfg = StorageConfig(max_attempts=attempts, backoff_base_s=0.01, backoff_max_s=0.01)
    return open_resumable(
        open_at,
        size=size,
        uri="s3://b/k",
        cfg=cfg,
        is_transient=lambda e: isinstance(e, _FlakyError | ReadTimeoutError),
    )


def test_resumes_at_the_byte_where_the_stream_broke(no_sleep: list[float]) -> None:
    data = os.urandom(300_000)
    # a reset after 1000 bytes, a truncated body (clean early end) after 70_000 more, a read timeout after 5
    script = [(1000, _FlakyError("reset")), (70_000, None), (5, ReadTimeoutError(endpoint_url="x"))]
    open_at, offsets = _scripted(data, script)
    with _open(open_at, size=len(data)) as f:
        chunks = []
        while chunk := f.read(TAR_BLOCK):
            chunks.append(chunk)
    assert b"".join(chunks) == data
    assert offsets == [0, 1000, 71_000, 71_005]
    assert len(no_sleep) == 3


def test_read_all_and_tarfile_stream_mode(no_sleep: list[float]) -> None:
    buf = io.BytesIO()
    members = {f"{i:03d}.bin": os.urandom(20_000 + i) for i in range(12)}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    open_at, _ = _scripted(data, [(50_000, None), (77_777, _FlakyError("x"))])
    with _open(open_at, size=len(data)) as f:
        assert f.read() == data
    open_at, offsets = _scripted(data, [(123_456, _FlakyError("x")), (1, None)])
    seen = {}
    with _open(open_at, size=len(data)) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            seen[member.name] = extracted.read()
    assert seen == members
    assert offsets == [0, 123_456, 123_457]


def test_stalls_are_bounded_and_progress_resets_the_count(no_sleep: list[float]) -> None:
    data = os.urandom(10_000)
    # Four failures in a row, but each after some progress: with max_attempts=3 the read still completes.
    open_at, offsets = _scripted(data, [(100, _FlakyError("x"))] * 4)
    with _open(open_at, size=len(data), attempts=3) as f:
        assert f.read() == data
    assert offsets == [0, 100, 200, 300, 400]
    no_sleep.clear()
    # Three failures in a row at the same byte: out of attempts, with the URI and the cause in the message.
    open_at, offsets = _scripted(data, [(100, _FlakyError("x")), (0, _FlakyError("x")), (0, None)])
    f = _open(open_at, size=len(data), attempts=3)
    assert f.read(100) == data[:100]
    with pytest.raises(
        TransientStorageError, match=r"read failed for s3://b/k: transient .*3 attempts.*TruncatedBody"
    ):
        f.read(1)
    assert isinstance(TransientStorageError("x"), StorageError)
    assert TransientStorageError.transient
    assert not StorageError.transient
    assert len(no_sleep) == 2, "a backoff before each new attempt, none after the last"


def test_non_transient_errors_pass_through_and_unknown_size_trusts_eof(no_sleep: list[float]) -> None:
    data = os.urandom(5000)
    open_at, offsets = _scripted(data, [(10, PermissionError("denied"))])
    with _open(open_at, size=len(data)) as f, pytest.raises(PermissionError):
        f.read()
    assert offsets == [0]
    open_at, offsets = _scripted(data, [(10, None)])
    with _open(open_at, size=None) as f:
        assert f.read() == data[:10]  # without a size a clean end is the end
    assert not no_sleep


def test_first_stream_opens_at_once_and_is_always_closed(no_sleep: list[float]) -> None:
    streams: list[_Stream] = []

    def open_at(offset: int) -> _Stream:
        streams.append(_Stream(b"abc", offset, None, None))
        return streams[-1]

    with _open(open_at, size=3):
        assert len(streams) == 1, "open_at(0) is called when the reader is created"
    with _open(open_at, size=3) as f:
        assert f.read(1) == b"a"
    assert [s.closed for s in streams] == [True, True]

    def missing(offset: int) -> _Stream:
        raise FileNotFoundError("s3://b/k")

    with pytest.raises(FileNotFoundError):
        _open(missing, size=3)
    failures = [_FlakyError("throttled")]

    def flaky_open(offset: int) -> _Stream:
        if failures:
            raise failures.pop()
        return _Stream(b"abc", offset, None, None)

    with _open(flaky_open, size=3) as f:  # a transient error at open is retried by the first read
        assert f.read() == b"abc"
    assert len(no_sleep) == 1


def test_timeouts_are_configurable_and_validated() -> None:
    client = make_s3_client(StorageConfig(connect_timeout_s=2.5, read_timeout_s=7.0, s3_region="us-east-1"))
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (2.5, 7.0)
    assert client.meta.config.retries["total_max_attempts"] == StorageConfig().max_attempts  # first try included
    for bad in ({"read_timeout_s": 0}, {"connect_timeout_s": -1.0}, {"read_timeout_s": float("nan")}):
        with pytest.raises(ValueError, match="timeout_s must be > 0"):
            StorageConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- through the fault proxy (real S3 server)


def _tar_bytes(n_members: int, member_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n_members):
            info = tarfile.TarInfo(f"{i:05d}.jpg")
            info.size = member_size
            tar.addfile(info, io.BytesIO(rng.randbytes(member_size)))
    return buf.getvalue()


def _stream_in_tar_blocks(storage: Storage, uri: str) -> bytes:
    chunks = []
    with storage.open_read(uri) as f:
        while chunk := f.read(TAR_BLOCK):
            chunks.append(chunk)
    return b"".join(chunks)


def _drain(stream: Any, into: bytearray) -> None:
    """Reads ``stream`` to its end in tar-sized reads, appending to ``into`` (kept when a read raises)."""
    while chunk := stream.read(TAR_BLOCK):
        into += chunk


@pytest.mark.s3
def test_multi_mb_reads_survive_every_fault_kind(
    fault_proxy: FaultProxy, fault_storage_config: StorageConfig, s3_bucket: str
) -> None:
    storage = Storage(fault_storage_config)
    data = _tar_bytes(40, 150_000, seed=1)  # 6 MB: a small shard
    uri = join(s3_bucket, "shards", "shard-000000.tar")
    storage.write_bytes(uri, data)
    fault_proxy.set_plan(FaultPlan(rate=0.2, seed=11, stall_s=2.5, max_stalls=1))
    rounds = 0
    # Faults are handed out in turn, so every kind has happened after a few rounds; 30 bounds the test.
    while rounds < 30 and not all(fault_proxy.injected[k] for k in FAULT_KINDS):
        assert _stream_in_tar_blocks(storage, uri) == data
        assert storage.read_bytes(uri) == data
        with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            assert sum(len(tar.extractfile(m).read()) for m in tar) == 40 * 150_000  # type: ignore[union-attr]
        rounds += 1
    assert wait_for(lambda: all(fault_proxy.injected[k] >= 1 for k in FAULT_KINDS)), fault_proxy.injected
    assert fault_proxy.injected["stall"] == 1
    gets = fault_proxy.requests[("GET", f"/{s3_bucket.removeprefix('s3://')}/shards/shard-000000.tar")]
    assert gets > 3 * rounds, "broken streams were resumed with new (ranged) requests"


@pytest.mark.s3
def test_writes_uploads_and_listings_survive_faults(
    fault_proxy: FaultProxy, fault_storage_config: StorageConfig, s3_bucket: str, tmp_path: Path
) -> None:
    storage = Storage(fault_storage_config)
    fault_proxy.set_plan(FaultPlan(rate=0.2, seed=5, kinds=("500", "503", "delay", "reset", "stall"), stall_s=2.5))
    objects = {join(s3_bucket, "out", f"part-{i:03d}.bin"): os.urandom(1000 + i) for i in range(30)}
    for uri, payload in objects.items():
        storage.write_bytes(uri, payload)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * MIB))  # two parts: create, 2 x upload part, complete, each can be hurt
    storage.upload_file(str(big), join(s3_bucket, "out", "zz-big.bin"))
    listed = {o.uri: o.size for o in storage.list(join(s3_bucket, "out"))}
    assert listed == {**{u: len(p) for u, p in objects.items()}, join(s3_bucket, "out", "zz-big.bin"): 9 * MIB}
    assert all(storage.exists(uri) and storage.size(uri) == len(p) for uri, p in objects.items())
    kinds = fault_proxy.plan.kinds
    assert wait_for(lambda: all(fault_proxy.injected[k] >= 1 for k in kinds)), fault_proxy.injected
    fault_proxy.with_rate(0.0)
    assert all(storage.read_bytes(uri) == payload for uri, payload in objects.items())
    assert storage.read_bytes(join(s3_bucket, "out", "zz-big.bin")) == big.read_bytes()


@pytest.fixture
def persisting_config(fault_storage_config: StorageConfig) -> StorageConfig:
    """Two attempts in each layer (botocore's and ours): a persisting fault fails fast."""
    return dataclasses.replace(fault_storage_config, max_attempts=2)


@pytest.mark.s3
def test_persisting_503_raises_transient_error_in_bounded_time(
    fault_proxy: FaultProxy, persisting_config: StorageConfig, s3_bucket: str, tmp_path: Path
) -> None:
    storage = Storage(persisting_config)
    uri = join(s3_bucket, "k.bin")
    storage.write_bytes(uri, b"stored")
    (tmp_path / "f").write_bytes(b"x")
    fault_proxy.set_plan(FaultPlan(rate=1.0, kinds=("503",)))
    operations: dict[str, Callable[[], object]] = {
        "read": lambda: storage.read_bytes(uri),
        "open": lambda: storage.open_read(uri),
        "write": lambda: storage.write_bytes(uri, b"new"),
        "upload": lambda: storage.upload_file(str(tmp_path / "f"), uri),
        "list": lambda: list(storage.list(s3_bucket)),
        "size": lambda: storage.size(uri),
        "exists": lambda: storage.exists(uri),
    }
    for op, call in operations.items():
        requests_before = fault_proxy.requests.total()
        with pytest.raises(TransientStorageError, match="transient error persisted") as info:
            call()
        # Bounded: a fixed number of requests, each answered at once, whatever the machine's speed.
        assert fault_proxy.requests.total() - requests_before == 2 * 2, f"{op}: botocore's 2 attempts x our 2"
        assert info.value.transient
        assert s3_bucket in str(info.value)
    fault_proxy.with_rate(0.0)
    assert storage.read_bytes(uri) == b"stored", "no write got through"


@pytest.mark.s3
def test_a_stream_cut_while_the_store_fails_raises_and_never_returns_wrong_bytes(
    fault_proxy: FaultProxy, persisting_config: StorageConfig, s3_bucket: str
) -> None:
    storage = Storage(persisting_config)
    data = os.urandom(24 * MIB)  # more than socket buffers hold: the cut lands inside the body
    uri = join(s3_bucket, "big.tar")
    storage.write_bytes(uri, data)
    stream = storage.open_read(uri)
    head = stream.read(MIB)
    fault_proxy.set_plan(FaultPlan(rate=1.0, kinds=("503",)))
    assert fault_proxy.drop_connections() >= 1
    requests_before = fault_proxy.requests.total()
    received = bytearray(head)
    with pytest.raises(TransientStorageError, match=rf"read failed for {uri}: transient error persisted"):
        _drain(stream, into=received)
    resumed = fault_proxy.requests.total() - requests_before
    assert 1 <= resumed <= 2 * 2, f"{resumed} GETs: resumed, at most botocore's 2 attempts x our 2, then the error"
    assert len(received) < len(data)
    assert received == data[: len(received)]
    stream.close()


@pytest.mark.slow  # ~10 s of deliberate stalls; the one-stall case runs in the default suite
@pytest.mark.s3
def test_stalled_server_raises_transient_error_after_the_read_timeouts(
    fault_proxy: FaultProxy, persisting_config: StorageConfig, s3_bucket: str
) -> None:
    storage = Storage(persisting_config)
    uri = join(s3_bucket, "k")
    storage.write_bytes(uri, b"v")
    fault_proxy.set_plan(FaultPlan(rate=1.0, kinds=("stall",), stall_s=30.0, max_stalls=None))
    for call in (lambda: storage.size(uri), lambda: storage.write_bytes(uri, b"w")):
        requests_before = fault_proxy.requests.total()
        with pytest.raises(TransientStorageError, match="ReadTimeoutError"):
            call()
        # botocore's 2 attempts x our 2: each a request the proxy stalled (the plan stalls every one) until the
        # client's read timeout gave up on it, and no more
        assert fault_proxy.requests.total() - requests_before == 2 * 2


@pytest.mark.s3
def test_an_object_replaced_mid_read_is_an_error_not_a_splice(
    fault_proxy: FaultProxy, fault_storage_config: StorageConfig, s3_bucket: str
) -> None:
    storage = Storage(fault_storage_config)
    uri = join(s3_bucket, "changing.tar")
    old, new = os.urandom(24 * MIB), os.urandom(24 * MIB)
    storage.write_bytes(uri, old)
    stream = storage.open_read(uri)
    received = bytearray(stream.read(MIB))
    storage.write_bytes(uri, new)
    fault_proxy.drop_connections()
    with pytest.raises(StorageError, match="changed while it was read") as info:
        _drain(stream, into=received)
    assert not info.value.transient
    assert received == old[: len(received)]
    stream.close()
