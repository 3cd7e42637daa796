"""Where the Beam pipeline runs: the ``runner`` group (read only by :mod:`pipelines.options`)."""

import re
from dataclasses import dataclass, field
from enum import Enum

from pipelines.config.errors import ConfigError


# What Dataflow accepts as a job name (and what every other runner takes too): lower case letters, digits and
# dashes, starting with a letter and not ending with a dash; 63 characters at most.
JOB_NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
JOB_NAME_MAX_LENGTH = 63
# A dask scheduler address: ``host:port`` or ``<protocol>://host:port`` (``tcp://``, ``tls://``, ``ucx://``).
_DASK_ADDRESS = re.compile(r"([a-z]+://)?[^\s/]+:\d+")


class RunnerName(str, Enum):
    """Where the Beam pipeline runs."""

    direct = "direct"
    portable = "portable"
    dataflow = "dataflow"
    spark = "spark"
    flink = "flink"
    dask = "dask"


class RunningMode(str, Enum):
    """Local execution modes of Beam's FnApiRunner (the engine behind the DirectRunner for batch)."""

    in_memory = "in_memory"
    multi_threading = "multi_threading"
    multi_processing = "multi_processing"


class EnvironmentType(str, Enum):
    """Where the portable runner starts SDK workers."""

    LOOPBACK = "LOOPBACK"
    EXTERNAL = "EXTERNAL"
    DOCKER = "DOCKER"
    PROCESS = "PROCESS"


@dataclass
class DataflowConfig:
    """Dataflow options (``runner=dataflow``); see ``infra/README.md`` for a walk-through.

    Attributes:
        project: Google Cloud project that runs the job.
        region: Dataflow regional endpoint, e.g. ``us-central1`` (pick one that has the GPU type).
        temp_location: ``gs://`` prefix for temporary files.
        staging_location: ``gs://`` prefix for staged artifacts; ``None`` lets Beam use ``temp_location``.
        service_account_email: Worker service account; ``None`` = the project's Compute Engine default.
        machine_type: Worker machine type, e.g. ``g2-standard-8`` (L4 GPUs come with G2 machines) or
            ``n1-standard-8`` (T4).
        disk_size_gb: Worker boot disk; GPU images are large, Dataflow recommends >= 50 GB with GPUs.
        num_workers: Initial workers; ``None`` lets Dataflow choose.
        max_num_workers: Autoscaling ceiling; ``None`` = Dataflow's default.
        accelerator: GPU type, e.g. ``nvidia-l4`` or ``nvidia-tesla-t4``; ``None`` = CPU workers only.
        accelerator_count: GPUs per worker (or per inference worker with ``right_fitting``).
        use_nvidia_mps: Add ``use_nvidia_mps`` to ``worker_accelerator``: only useful when more than one
            model copy shares a GPU (we load one per GPU); not with ``right_fitting``.
        right_fitting: Put only the inference step on GPU workers through a resource hint instead of giving
            every worker a GPU with ``worker_accelerator`` (the two must not be combined).
        min_ram: ``min_ram`` resource hint of the inference step with ``right_fitting``, e.g. ``32GB``.
        network: VPC network name; ``None`` = ``default``.
        subnetwork: Subnetwork, e.g. ``regions/us-central1/subnetworks/dpmesh``.
        use_public_ips: ``False`` gives workers private IPs only (needs Private Google Access).
        labels: Job labels as ``key=value``, e.g. for cost attribution.
    """

    project: str | None = None
    region: str | None = None
    temp_location: str | None = None
    staging_location: str | None = None
    service_account_email: str | None = None
    machine_type: str | None = None
    disk_size_gb: int | None = None
    num_workers: int | None = None
    max_num_workers: int | None = None
    accelerator: str | None = None
    accelerator_count: int = 1
    use_nvidia_mps: bool = False
    right_fitting: bool = False
    min_ram: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    use_public_ips: bool = True
    labels: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raises ConfigError naming the first missing or inconsistent ``runner.dataflow.*`` value."""
        for name in ("project", "region", "temp_location"):
            if not getattr(self, name):
                raise ConfigError(f"runner=dataflow needs runner.dataflow.{name}")
        for name in ("temp_location", "staging_location"):
            value = getattr(self, name)
            if value is not None and not value.startswith("gs://"):
                raise ConfigError(f"runner.dataflow.{name} must be a gs:// prefix, got {value!r}")
        for name in ("disk_size_gb", "num_workers", "max_num_workers", "accelerator_count"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"runner.dataflow.{name} must be >= 1, got {value}")
        if self.right_fitting and not self.accelerator:
            raise ConfigError("runner.dataflow.right_fitting=true needs runner.dataflow.accelerator=<gpu type>")
        if self.right_fitting and self.use_nvidia_mps:
            raise ConfigError("runner.dataflow.use_nvidia_mps is a worker_accelerator option: not with right_fitting")
        if self.use_nvidia_mps and not self.accelerator:
            raise ConfigError("runner.dataflow.use_nvidia_mps=true needs runner.dataflow.accelerator=<gpu type>")
        if self.min_ram and not self.right_fitting:
            raise ConfigError(
                "runner.dataflow.min_ram is a right-fitting hint: set runner.dataflow.right_fitting=true"
            )
        for label in self.labels:
            if "=" not in label:
                raise ConfigError(f"runner.dataflow.labels entries are key=value, got {label!r}")


@dataclass
class RunnerConfig:
    """Beam runner selection and its options; :mod:`pipelines.options` is the only reader.

    Attributes:
        name: Which runner: ``direct``, ``portable``, ``dataflow``, ``spark``, ``flink`` or ``dask``. ``spark`` and
            ``flink`` are the portable runner against the Beam job server of a Spark or Flink cluster; ``dask`` is
            Beam's DaskRunner on dask.distributed.
        job_name: The job's name; ``None`` (the default) gives every launch a unique one,
            ``<app>-<UTC yyyymmdd-hhmmss>-<6 hex>``, so that launches into one Dataflow project never collide.
            An explicit name must match ``[a-z]([-a-z0-9]*[a-z0-9])?`` and have at most 63 characters.
        running_mode: Local execution mode (``direct`` only).
        num_workers: Local worker count for ``multi_threading``/``multi_processing`` (``direct`` only).
        job_endpoint: ``host:port`` of a Beam job service (``portable``, ``spark``, ``flink``).
        environment_type: Where SDK workers run (``portable``, ``spark``, ``flink``).
        environment_config: Worker pool address for ``EXTERNAL``; image for ``DOCKER`` (default: ``image``).
        image: The worker container image (``infra/``): Dataflow's ``sdk_container_image``, and the DOCKER
            environment's image on ``portable``/``spark``/``flink``.
        sdk_worker_parallelism: SDK worker processes per cluster worker node (``portable``/``spark``/``flink``);
            0 lets the runner choose. Each process holds its own model copy there.
        parallelism: Flink job parallelism (``flink`` only; Spark takes it from the cluster's configuration).
        max_parallelism: Flink maximum parallelism (``flink`` only).
        address: ``host:port`` (or ``tcp://host:port``) of a running dask scheduler (``dask`` only); ``None`` lets
            the DaskRunner start a ``LocalCluster`` on this machine for the run.
        partitions: How many dask partitions (tasks) the DaskRunner splits each ``beam.Create`` into (``dask``
            only). It is the DaskRunner's only source of parallelism, as it ignores Reshuffle: set it to the number
            of shards to label them in parallel. ``None`` = Beam's default of 128 elements per partition.
        dataflow: Dataflow options (``dataflow`` only).
        dry_run: Build the pipeline and print the launch plan (options, steps, image); submit nothing.
        extra_options: Raw Beam flags appended last, for options this config does not model.
    """

    name: RunnerName = RunnerName.direct
    job_name: str | None = None
    running_mode: RunningMode = RunningMode.in_memory
    num_workers: int = 1
    job_endpoint: str | None = None
    environment_type: EnvironmentType = EnvironmentType.LOOPBACK
    environment_config: str | None = None
    image: str | None = None
    sdk_worker_parallelism: int | None = None
    parallelism: int | None = None
    max_parallelism: int | None = None
    address: str | None = None
    partitions: int | None = None
    dataflow: DataflowConfig = field(default_factory=DataflowConfig)
    dry_run: bool = False
    extra_options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"runner.num_workers must be >= 1, got {self.num_workers}")
        if self.name in _JOB_SERVER_RUNNERS and not self.job_endpoint:
            raise ConfigError(
                f"runner={self.name.value} needs runner.job_endpoint=<host:port> of a Beam job service"
                + ("" if self.name == RunnerName.portable else f" running next to the {self.name.value} cluster")
            )
        if self.environment_type == EnvironmentType.EXTERNAL and not self.environment_config:
            raise ConfigError("runner.environment_type=EXTERNAL needs runner.environment_config=<host:port>")
        if (
            self.name in _JOB_SERVER_RUNNERS
            and self.environment_type == EnvironmentType.DOCKER
            and not (self.environment_config or self.image)
        ):
            raise ConfigError(
                f"runner={self.name.value} with environment_type=DOCKER needs runner.image=<worker image>"
            )
        if self.sdk_worker_parallelism is not None and self.sdk_worker_parallelism < 0:
            raise ConfigError(f"runner.sdk_worker_parallelism must be >= 0, got {self.sdk_worker_parallelism}")
        for name in ("parallelism", "max_parallelism"):
            value = getattr(self, name)
            if value is not None and self.name != RunnerName.flink:
                raise ConfigError(
                    f"runner.{name} is a Flink option; on Spark set spark.default.parallelism on the cluster"
                )
            if value is not None and value < 1:
                raise ConfigError(f"runner.{name} must be >= 1, got {value}")
        self._check_job_name()
        self._check_dask()
        if self.name == RunnerName.dataflow:
            self.dataflow.check()
            if not self.image:
                raise ConfigError(
                    "runner=dataflow needs runner.image=<worker image>: workers need this project installed "
                    "(see infra/README.md)"
                )

    def _check_job_name(self) -> None:
        name = self.job_name
        if name is None:
            return
        if not JOB_NAME_PATTERN.fullmatch(name) or len(name) > JOB_NAME_MAX_LENGTH:
            raise ConfigError(
                f"runner.job_name={name!r} is not a valid job name: use lower case letters, digits and dashes, "
                f"start with a letter, end with a letter or digit, at most {JOB_NAME_MAX_LENGTH} characters "
                "(or leave runner.job_name unset for a unique generated name)"
            )

    def _check_dask(self) -> None:
        if self.partitions is not None and self.name != RunnerName.dask:
            raise ConfigError(f"runner.partitions is a runner=dask option: drop it for runner={self.name.value}")
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"runner.partitions must be >= 1, got {self.partitions}")
        if self.address is None:
            return
        if self.name != RunnerName.dask:
            raise ConfigError(
                f"runner.address is the dask scheduler of runner=dask, not an option of runner={self.name.value}: "
                "drop runner.address"
                + (" (a Beam job service goes in runner.job_endpoint)" if self.name in _JOB_SERVER_RUNNERS else "")
                + ", or set runner=dask"
            )
        if not _DASK_ADDRESS.fullmatch(self.address):
            raise ConfigError(
                f"runner.address={self.address!r} is not a dask scheduler address: use host:port or "
                "tcp://host:port (leave it unset for a LocalCluster on this machine)"
            )


_JOB_SERVER_RUNNERS = (RunnerName.portable, RunnerName.spark, RunnerName.flink)
