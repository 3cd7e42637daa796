"""Fixtures for pipeline runs: Beam's local job service (portable runner) and an SDK worker pool (EXTERNAL)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def background_service(
    name: str,
    command: list[str],
    log_path: Path,
    endpoint: Callable[[], str | None],
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start ``command``, wait (60 s at most) until ``endpoint()`` returns an address, yield it, stop the process.

    A service that exits or does not come up in time fails the test with the tail of its log.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ))
        try:
            deadline = time.monotonic() + 60
            while (address := endpoint()) is None:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield address
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def beam_job_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``localhost:<port>`` of Beam's local job service (pure Python), started for the session."""
    folder = Path(tmp_path_factory.mktemp("jobservice"))
    port_file = folder / "port"
    module = "apache_beam.runners.portability.local_job_service_main"
    command = [sys.executable, "-m", module, "--port=0", f"--port_file={port_file}"]

    def endpoint() -> str | None:
        port = port_file.read_text().strip() if port_file.exists() else ""
        return f"localhost:{port}" if port else None

    with background_service("Beam job service", command, folder / "jobservice.log", endpoint) as address:
        yield address


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def beam_worker_pool(tmp_path: Path) -> Iterator[str]:
    """``localhost:<port>`` of Beam's SDK worker pool (``worker_pool_main``), for ``environment_type=EXTERNAL``.

    Function-scoped and started from the test's environment at that moment, so workers see the credentials a
    fixture such as ``s3_env`` put there (request it first), as workers on a cluster read their own environment.
    """
    port = _free_port()
    command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]
    # The pool starts workers as `python -c ...` from PATH: make that this interpreter.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

    def endpoint() -> str | None:
        try:
            with socket.create_connection(("localhost", port), timeout=0.5):
                return f"localhost:{port}"
        except OSError:
            return None

    with background_service("Beam worker pool", command, tmp_path / "worker_pool.log", endpoint, env) as address:
        yield address
