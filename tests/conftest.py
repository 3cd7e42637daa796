"""Shared fixtures: an offline environment for every test, and a real S3 server (SeaweedFS) for ``s3`` tests."""

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from pipelines.config.storage import AddressingStyle, StorageConfig
from tests.s3_server import S3ServerInfo, SeaweedS3Server, s3_client


logger = logging.getLogger(__name__)

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
