"""Storage configuration: how URIs of each scheme are reached. Credentials never live here."""

from dataclasses import dataclass
from enum import Enum


class RetryMode(str, Enum):
    """botocore retry strategies (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html)."""

    standard = "standard"
    adaptive = "adaptive"


class AddressingStyle(str, Enum):
    """S3 bucket addressing; S3-compatible servers usually need ``path``."""

    auto = "auto"
    path = "path"
    virtual = "virtual"


@dataclass
class StorageConfig:
    """Options for local paths, ``s3://`` and ``gs://`` URIs.

    Credentials come from the environment or the cloud identity (boto3's and google-auth's default
    chains), never from this config, so the config can be logged and hashed safely.

    Attributes:
        s3_endpoint_url: Endpoint override for S3-compatible servers (SeaweedFS, MinIO, Ceph); ``None`` = AWS.
        s3_region: Region name passed to boto3; ``None`` lets boto3 decide.
        s3_addressing_style: Bucket addressing style for S3.
        gcs_project: Project for the GCS client; ``None`` = from the environment.
        gcs_endpoint_url: Endpoint override for GCS emulators and GCS-compatible servers
            (``http://127.0.0.1:9023``); ``None`` = Google. When set, requests are sent without credentials
            (anonymous), as emulators expect.
        max_attempts: Attempts (first try included) for transient errors (throttling, 5xx, connection resets,
            timeouts, truncated bodies), with exponential backoff and jitter, in each retry layer: per HTTP
            request (botocore), per operation (ours), and per stall of a streamed read (attempts in a row
            without a byte of progress). When they run out, ``TransientStorageError`` is raised.
        retry_mode: botocore retry strategy; ``adaptive`` also rate-limits the client after throttling.
        backoff_base_s: First backoff delay in seconds for our own retry loop; doubles per attempt.
        backoff_max_s: Upper bound of one backoff delay in seconds.
        connect_timeout_s: Seconds to wait for a TCP connection to the S3 endpoint before the attempt counts
            as a transient failure.
        read_timeout_s: Seconds to wait for any bytes of a response (headers or the next part of a streamed
            body) before the attempt counts as a transient failure; a stalled stream is then resumed.
    """

    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: AddressingStyle = AddressingStyle.auto
    gcs_project: str | None = None
    gcs_endpoint_url: str | None = None
    max_attempts: int = 8
    retry_mode: RetryMode = RetryMode.adaptive
    backoff_base_s: float = 0.2
    backoff_max_s: float = 20.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"storage.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"storage.backoff_base_s ({self.backoff_base_s}) must be >= 0 and <= storage.backoff_max_s "
                f"({self.backoff_max_s})"
            )
        for name in ("connect_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"storage.{name} must be > 0 seconds, got {getattr(self, name)}")
