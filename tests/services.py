"""Services for pipeline runs, as fixtures (tests/conftest.py loads them): Beam's local job service (portable
runner), an SDK worker pool (EXTERNAL) and a dask cluster."""

import contextlib
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class DaskCluster:
    """A dask scheduler and its worker processes started by :func:`dask_cluster`."""

    address: str  # 127.0.0.1:<port>, what runner.address takes
    scheduler_log: Path
    worker_logs: tuple[Path, ...]


_REPO_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run the block in ``path`` (the processes it starts keep it); ``contextlib.chdir`` needs Python 3.11."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A real dask cluster on 127.0.0.1: ``dask scheduler`` and two ``dask worker`` processes, one thread each.

    Every process is this interpreter started at the repository root with the root on ``PYTHONPATH``, so workers
    import this checkout's ``pipelines``, as a cluster's workers import the project installed on them. Workers run
    without a nanny, so stopping the fixture stops the very process that runs tasks. A worker counts as up once
    its log says it registered with the scheduler.
    """
    folder = Path(tmp_path_factory.mktemp("dask"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    path = os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    scheduler = [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port)]

    def listening() -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return address
        except OSError:
            return None

    def registered(log: Path) -> Callable[[], str | None]:
        return lambda: address if log.exists() and "Registered to:" in log.read_text(errors="replace") else None

    worker_logs = tuple(folder / f"worker-{i}.log" for i in range(2))
    scheduler_log = folder / "scheduler.log"
    with contextlib.ExitStack() as stack:
        with _working_directory(_REPO_ROOT):  # only while starting them: the tests keep their own cwd
            stack.enter_context(
                background_service("dask scheduler", [*scheduler, "--no-dashboard"], scheduler_log, listening, env)
            )
            for i, log in enumerate(worker_logs):
                worker = [sys.executable, "-m", "dask", "worker", f"tcp://{address}", "--host", "127.0.0.1"]
                worker += ["--nthreads", "1", "--nworkers", "1", "--no-nanny", "--no-dashboard"]
                worker += ["--name", f"worker-{i}", "--local-directory", str(folder / f"worker-{i}")]
                stack.enter_context(background_service(f"dask worker {i}", worker, log, registered(log), env))
        try:
            yield DaskCluster(address, scheduler_log, worker_logs)
        finally:
            _close_leftover_dask_clients()


def _close_leftover_dask_clients() -> None:
    """Closes dask clients a job left open (Beam's DaskRunner does unless the job runs in ``running_pipeline``),
    so that none keeps reconnecting to a scheduler this fixture is about to stop."""
    import distributed  # here: only dask tests need it

    for _ in range(100):  # default_client() gives the newest open client until none is left
        try:
            distributed.default_client().close()
        except ValueError:
            return
