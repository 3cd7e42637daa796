"""Shared fixtures: an offline environment for every test, the tests' one corpus (``corpus``), a real S3 server
(SeaweedFS) for ``s3`` tests and a GCS emulator (gcp-storage-emulator) for ``gcs`` tests, and a fault-injecting
proxy in front of the S3 server (``fault_proxy``, ``fault_storage_config``)."""

import dataclasses
import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from pipelines.config.storage import AddressingStyle, RetryMode, StorageConfig
from tests.fakes.corpus import Corpus, write_mixed_corpus
from tests.fault_proxy import FaultProxy
from tests.gcs_server import GcsEmulator, GcsServerInfo, delete_bucket, gcs_client
from tests.s3_server import S3ServerInfo, SeaweedS3Server, s3_client


logger = logging.getLogger(__name__)

# Beam's job service, the SDK worker pool and a dask cluster, for the job tests that run on them; the shards and
# labels the dpmesh-label and dpmesh-refilter tests start from.
pytest_plugins = ["tests.services", "tests.fakes.label_inputs"]

_LOOPBACK = "127.0.0.1,localhost,::1"


@pytest.fixture(scope="session", autouse=True)
def _offline_environment() -> Iterator[None]:
    """Nothing in a test reaches the network: hubs offline, loopback never proxied, no cloud metadata lookups."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("no_proxy", "NO_PROXY"):
            current = os.environ.get(name, "")
            mp.setenv(name, f"{current},{_LOOPBACK}" if current else _LOOPBACK)
        yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The mixed corpus of tests/fakes/corpus.py (images of three formats, partly annotated, broken files and a
    duplicate), written once per session (per xdist worker). Read-only: a test that changes it copies it first."""
    return write_mixed_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerInfo]:
    """A SeaweedFS S3 server for the whole session; a server that cannot start is a test error, not a skip.

    ``finally`` stops it at session end whatever the tests did, and also stops a server that failed to start.
    """
    server = SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3ServerInfo) -> S3ServerInfo:
    """Puts the server's credentials where boto3's default chain (and subprocesses such as Beam workers) look."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # A developer's ~/.aws must not change retries, addressing or endpoints under test.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3ServerInfo, s3_server: S3ServerInfo) -> Iterator[str]:
    """A fresh, uniquely named bucket as ``s3://<bucket>``; deleted with its contents afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    client = s3_client(s3_server)
    client.create_bucket(Bucket=name)
    yield f"s3://{name}"
    try:
        client.delete_bucket(
            Bucket=name
        )  # SeaweedFS allows deleting non-empty buckets (-s3.allowDeleteBucketNotEmpty)
    except Exception as exc:  # cleanup only; the data dir goes away with tmp_path anyway
        logger.warning("could not delete test bucket %s: %s", name, exc)


@pytest.fixture
def s3_storage_config(s3_server: S3ServerInfo) -> StorageConfig:
    """Storage config that points ``s3://`` at the test server (credentials come from ``s3_env``)."""
    return StorageConfig(
        s3_endpoint_url=s3_server.endpoint_url, s3_region=s3_server.region, s3_addressing_style=AddressingStyle.path
    )


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServerInfo]:
    """A GCS emulator (gcp-storage-emulator, data in memory) for the whole session; one that cannot start is a
    test error, not a skip. ``finally`` stops it at session end, and also one that failed to start."""
    server = GcsEmulator(tmp_path_factory.mktemp("gcs-emulator"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: GcsServerInfo) -> Iterator[str]:
    """A fresh, uniquely named bucket on the emulator as ``gs://<bucket>``; emptied and deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    gcs_client(gcs_server).create_bucket(name)
    yield f"gs://{name}"
    try:
        delete_bucket(gcs_server, name)
    except Exception as exc:  # cleanup only; the emulator keeps its data in memory and stops with the session
        logger.warning("could not delete test bucket %s: %s", name, exc)


@pytest.fixture
def gcs_storage_config(monkeypatch: pytest.MonkeyPatch, gcs_server: GcsServerInfo) -> StorageConfig:
    """Storage config that points ``gs://`` at the emulator through the config alone: no STORAGE_EMULATOR_HOST,
    and no developer credentials, which the backend must not need (or send) with an endpoint override."""
    for name in ("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    return StorageConfig(gcs_endpoint_url=gcs_server.endpoint_url)  # no project: object operations need none


@pytest.fixture
def fault_proxy(s3_server: S3ServerInfo) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's S3 server (see tests/fault_proxy.py), stopped afterwards.

    It injects nothing until the test sets a plan: ``fault_proxy.set_plan(FaultPlan(rate=0.2, stall_s=2.0))``;
    ``fault_proxy.injected`` counts the faults done per kind, ``fault_proxy.requests`` the requests seen.
    """
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def fault_storage_config(fault_proxy: FaultProxy, s3_storage_config: StorageConfig) -> StorageConfig:
    """``s3_storage_config`` pointed at ``fault_proxy``, with 1 s timeouts and fast retries so faults cost little.

    ``max_attempts=6`` makes a run of 6 failed attempts in a row (1e-6 at 10% faults) the only way to fail;
    ``standard`` retries keep botocore from slowing the client down after injected throttling.
    """
    return dataclasses.replace(
        s3_storage_config,
        s3_endpoint_url=fault_proxy.endpoint_url,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        retry_mode=RetryMode.standard,
        max_attempts=6,
        backoff_base_s=0.01,
        backoff_max_s=0.1,
    )
