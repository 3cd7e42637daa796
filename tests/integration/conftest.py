"""Fixtures for pipeline runs: a Beam job service for the portable runner."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def beam_job_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``localhost:<port>`` of Beam's local job service (pure Python), started for the session."""
    port_file = Path(tmp_path_factory.mktemp("jobservice")) / "port"
    log = open(port_file.with_suffix(".log"), "wb")  # noqa: SIM115 (closed below)
    command = [
        sys.executable,
        "-m",
        "apache_beam.runners.portability.local_job_service_main",
        "--port=0",
        f"--port_file={port_file}",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            raise RuntimeError(f"Beam job service did not start: {port_file.with_suffix('.log').read_text()[-2000:]}")
        time.sleep(0.2)
    try:
        yield f"localhost:{port_file.read_text().strip()}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def beam_worker_pool(tmp_path: Path) -> Iterator[str]:
    """``localhost:<port>`` of Beam's SDK worker pool (``worker_pool_main``), for ``environment_type=EXTERNAL``.

    Function-scoped and started from the test's environment at that moment, so workers see the credentials a
    fixture such as ``s3_env`` put there (request it first), as workers on a cluster read their own environment.
    """
    import socket

    port = _free_port()
    log_path = tmp_path / "worker_pool.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed below)
    command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]
    # The pool starts workers as `python -c ...` from PATH: make that this interpreter.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("localhost", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.close()
                raise RuntimeError(f"Beam worker pool did not start: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.2)
    try:
        yield f"localhost:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
