"""A GCS server for tests: ``gcp-storage-emulator`` (PyPI) on a free loopback port, with its data in memory.

The emulator speaks the GCS JSON API (media, multipart and resumable uploads, ranged downloads, listing with a
prefix, metadata, delete) and needs no credentials. It is run as ``python -m gcp_storage_emulator start`` with this
interpreter, so it works whether or not the venv's ``bin/`` is on ``PATH``.

What it does not do, and what the tests therefore cannot check on it: listing pagination (every listing is one
page, ``maxResults``/``pageToken`` are ignored), generation preconditions and ``generation=`` on downloads (a read
pinned to a generation is served the current object), ``416`` for a range past the end (it answers an empty 206),
URL-quoting object names in ``mediaLink``, and concurrency (one request at a time, HTTP/1.0).
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.s3_server import _die_with_parent


PROJECT = "test-project"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_PORT_TAKEN = "Address already in use"


@dataclass(frozen=True)
class GcsServerInfo:
    """How to reach the emulator. There are no credentials: it accepts anonymous requests.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``, for ``StorageConfig.gcs_endpoint_url``.
        project: Project name for creating buckets (the emulator accepts any).
    """

    endpoint_url: str
    project: str = PROJECT


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def emulator_command(port: int) -> list[str]:
    """The emulator's command line: loopback only, the given port, data in memory (nothing written to disk)."""
    return [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"]


def gcs_client(info: GcsServerInfo) -> Any:
    """A client for the emulator (fixture plumbing, not the code under test)."""
    # Imported here: conftest imports this module in every session, most of which never touch gs://.
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    return gcs.Client(
        project=info.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": info.endpoint_url},
    )


class GcsEmulator:
    """Starts ``gcp-storage-emulator`` and stops it; a context manager.

    Args:
        log_dir: Directory for the logs (``emulator-<attempt>.log``, one line per request) and the working
            directory of the process.
        start_timeout_s: How long to wait for the emulator to answer its health check.
    """

    def __init__(self, log_dir: Path, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / "emulator-0.log"
        self.start_timeout_s = start_timeout_s
        self.info = GcsServerInfo("")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "GcsEmulator":
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> GcsServerInfo:
        """Starts the emulator and waits until it answers; retries on a new port if the port was taken meanwhile.

        Raises:
            RuntimeError: The emulator exited or did not answer in time; the message has the log tail.
        """
        for attempt in range(attempts):
            port = free_port()
            self.log_path = self.log_dir / f"emulator-{attempt}.log"  # a fresh log: the tail tells this attempt
            self._launch(port)
            self.info = GcsServerInfo(f"http://127.0.0.1:{port}")
            try:
                self._wait_ready()
                return self.info
            except RuntimeError:
                self.stop()
                if attempt + 1 == attempts or _PORT_TAKEN not in self.log_tail():
                    raise
        raise RuntimeError("unreachable")

    def _launch(self, port: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # It must not pick up a developer's emulator or storage settings (STORAGE_BASE, PORT, HOST).
        env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_BASE", "STORAGE_DIR", "PORT", "HOST")}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                emulator_command(port),
                cwd=self.log_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def _wait_ready(self) -> None:
        """Polls ``GET /`` (the emulator's health check, body ``OK``) without any proxy."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"gcp-storage-emulator exited with {code}; log tail:\n{self.log_tail()}")
            # A port taken between our check and its bind kills its server thread but not the process.
            if _PORT_TAKEN in self.log_tail():
                raise RuntimeError(f"gcp-storage-emulator could not bind its port; log tail:\n{self.log_tail()}")
            try:
                with opener.open(self.info.endpoint_url + "/", timeout=1) as response:
                    if response.read() == b"OK":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"gcp-storage-emulator did not answer in {self.start_timeout_s:.0f} s; log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the emulator log."""
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


def delete_bucket(info: GcsServerInfo, name: str) -> None:
    """Deletes every object of bucket ``name``, then the bucket (the emulator refuses to delete a full one)."""
    client = gcs_client(info)
    for blob in client.list_blobs(name):
        with contextlib.suppress(Exception):  # one object already gone is fine; the bucket delete decides
            blob.delete()
    client.bucket(name).delete()
