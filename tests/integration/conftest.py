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
