"""Beam options per runner config, parsed back into apache_beam's own views, dry-run launch plans, worker images."""

import re
from pathlib import Path

import apache_beam as beam
import pytest
import tomllib
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.runner import PipelineRunner

from pipelines.config import ConfigError, LabelJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.options import beam_flags, inference_resource_hints, pipeline_options
from pipelines.shard_images import run as shard


REPO = Path(__file__).resolve().parents[2]
IMAGE = "us-central1-docker.pkg.dev/my-project/dpmesh/dpmesh-gpu:0.1.0"
DATAFLOW = [
    "runner.dataflow.project=my-project",
    "runner.dataflow.temp_location=gs://my-project-dpmesh/tmp",
    f"runner.image={IMAGE}",
]
L4 = "type:nvidia-l4;count:1;install-nvidia-driver"


def _shard(*overrides: str) -> ShardJobConfig:
    return compose_config(
        "dpmesh_shard", ["input.images=gs://corpus/images", "output=gs://corpus/shards", *overrides], ShardJobConfig
    )


def _label(*overrides: str) -> LabelJobConfig:
    return compose_config(
        "dpmesh_label", ["input.shards=gs://corpus/shards", "output=gs://corpus/labels", *overrides], LabelJobConfig
    )


@pytest.fixture
def no_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to run or submit a pipeline fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run tried to run a pipeline")

    monkeypatch.setattr(beam.Pipeline, "run", refuse)
    monkeypatch.setattr(PipelineRunner, "run_pipeline", refuse)


def test_direct_options() -> None:
    options = pipeline_options(
        _shard("runner.running_mode=multi_processing", "runner.num_workers=2").runner, job_name="j"
    )
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert options.view_as(DirectOptions).direct_num_workers == 2


def test_dataflow_gpu_options_parse_into_beams_views() -> None:
    cfg = _label(
        "runner=dataflow_gpu", *DATAFLOW, "runner.dataflow.num_workers=2", "runner.dataflow.labels=['team=ml']"
    )
    options = pipeline_options(cfg.runner, job_name="dpmesh-label")
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == ("my-project", "us-central1", "gs://my-project-dpmesh/tmp")
    assert gcp.staging_location is None
    assert gcp.job_name == "dpmesh-label"
    assert gcp.labels == ["team=ml"]
    assert gcp.dataflow_service_options == [f"worker_accelerator={L4}"]
    worker = options.view_as(WorkerOptions)
    assert worker.sdk_container_image == IMAGE
    assert (worker.machine_type, worker.disk_size_gb, worker.num_workers, worker.max_num_workers) == (
        "g2-standard-8",
        50,
        2,
        4,
    )
    assert options.view_as(DebugOptions).experiments == ["use_runner_v2"]
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (
        options.view_as(StandardOptions).resource_hints == []
    )  # never pipeline-wide: that would put all steps on GPUs
    assert not options.view_as(SetupOptions).save_main_session  # code ships in the image, not pickled
    assert inference_resource_hints(cfg.runner) == {}


def test_dataflow_mps_and_private_network() -> None:
    cfg = _label(
        "runner=dataflow_gpu",
        *DATAFLOW,
        "runner.dataflow.use_nvidia_mps=true",
        "runner.dataflow.use_public_ips=false",
        "runner.dataflow.subnetwork=regions/us-central1/subnetworks/dpmesh",
        "runner.dataflow.staging_location=gs://b-1/staging",
    )
    options = pipeline_options(cfg.runner, job_name="dpmesh-label")
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [f"worker_accelerator={L4};use_nvidia_mps"]
    assert options.view_as(GoogleCloudOptions).staging_location == "gs://b-1/staging"
    assert options.view_as(WorkerOptions).use_public_ips is False
    assert options.view_as(WorkerOptions).subnetwork == "regions/us-central1/subnetworks/dpmesh"


def test_right_fitting_puts_the_gpu_on_a_hint_never_on_worker_accelerator() -> None:
    cfg = _label(
        "runner=dataflow_gpu", *DATAFLOW, "runner.dataflow.right_fitting=true", "runner.dataflow.min_ram=32GB"
    )
    flags = beam_flags(cfg.runner, job_name="dpmesh-label")
    assert not any("worker_accelerator" in f for f in flags)
    assert pipeline_options(cfg.runner, job_name="x").view_as(GoogleCloudOptions).dataflow_service_options is None
    assert inference_resource_hints(cfg.runner) == {"accelerator": L4, "min_ram": "32GB"}
    beam.transforms.resources.parse_resource_hints(inference_resource_hints(cfg.runner))  # Beam accepts them


def test_dataflow_cpu_shard_options() -> None:
    cfg = _shard("runner=dataflow", *DATAFLOW)
    options = pipeline_options(cfg.runner, job_name="dpmesh-shard")
    assert options.view_as(GoogleCloudOptions).dataflow_service_options is None
    assert options.view_as(WorkerOptions).machine_type == "n2-standard-4"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["runner=dataflow", f"runner.image={IMAGE}"], "runner.dataflow.project"),
        (["runner=dataflow", *DATAFLOW, "runner.dataflow.temp_location=/tmp/x"], "gs:// prefix"),
        (["runner=dataflow", *DATAFLOW[:2]], "runner.image"),
        (["runner=dataflow", *DATAFLOW, "runner.dataflow.right_fitting=true"], "accelerator"),
        (
            [
                "runner=dataflow_gpu",
                *DATAFLOW,
                "runner.dataflow.right_fitting=true",
                "runner.dataflow.use_nvidia_mps=true",
            ],
            "use_nvidia_mps",
        ),
        (["runner=dataflow_gpu", *DATAFLOW, "runner.dataflow.min_ram=8GB"], "right_fitting"),
        (["runner=spark", f"runner.image={IMAGE}"], "runner.job_endpoint"),
        (["runner=spark", "runner.job_endpoint=spark-master:8099"], "runner.image"),
        (
            ["runner=spark", "runner.job_endpoint=h:8099", f"runner.image={IMAGE}", "runner.parallelism=8"],
            "Flink option",
        ),
    ],
)
def test_incomplete_or_conflicting_runner_configs_fail_at_launch(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _label(*overrides)


@pytest.mark.parametrize("name", ["spark", "flink"])
def test_spark_and_flink_use_the_portable_runner_with_the_worker_image(name: str) -> None:
    extra = ["runner.parallelism=16", "runner.max_parallelism=64"] if name == "flink" else []
    cfg = _label(f"runner={name}", "runner.job_endpoint=jobserver:8099", f"runner.image={IMAGE}", *extra)
    options = pipeline_options(cfg.runner, job_name="dpmesh-label")
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    portable = options.view_as(PortableOptions)
    assert (portable.job_endpoint, portable.environment_type, portable.environment_config) == (
        "jobserver:8099",
        "DOCKER",
        IMAGE,
    )
    assert int(portable.sdk_worker_parallelism) == 1
    if name == "flink":
        assert (
            options.view_as(FlinkRunnerOptions).parallelism,
            options.view_as(FlinkRunnerOptions).max_parallelism,
        ) == (16, 64)
    else:
        assert "--parallelism" not in " ".join(beam_flags(cfg.runner, job_name="j"))


def test_portable_external_worker_pool_and_extra_options() -> None:
    cfg = _shard(
        "runner=portable",
        "runner.job_endpoint=localhost:8099",
        "runner.environment_type=EXTERNAL",
        "runner.environment_config=localhost:50000",
        "runner.extra_options=['--environment_cache_millis=1000']",
    )
    portable = pipeline_options(cfg.runner, job_name="j").view_as(PortableOptions)
    assert (portable.environment_type, portable.environment_config) == ("EXTERNAL", "localhost:50000")
    assert int(portable.environment_cache_millis) == 1000


def test_dataflow_dry_run_plan_for_labeling(no_submit: None, capsys: pytest.CaptureFixture[str]) -> None:
    plan = label(_label("runner=dataflow_gpu", *DATAFLOW, "runner.dry_run=true", "model.device=cuda", "storage=gcs"))
    out = capsys.readouterr().out
    assert plan["submitted"] is False
    assert plan["image"] == IMAGE
    assert plan["beam_runner"] == "DataflowRunner"
    for text in (
        "dry run: nothing submitted",
        IMAGE,
        "--experiments=use_runner_v2",
        f"worker_accelerator={L4}",
        "GoogleCloudOptions",
        "WorkerOptions",
        "sdk_container_image",
        "DPMesh",
        "RunInference",
        "ReadShards",
    ):
        assert text in out
    assert [s["name"] for s in plan["steps"]][:3] == ["ListShards", "SpreadShards", "ReadShards"]
    assert plan["options"]["WorkerOptions"]["sdk_container_image"] == IMAGE
    assert plan["problems"] == []


def test_right_fitting_dry_run_shows_which_step_gets_the_gpu(no_submit: None) -> None:
    from apache_beam.ml.inference.base import ModelHandler

    from pipelines.label.model_handler import DPMeshModelHandler

    cfg = _label(
        "runner=dataflow_gpu",
        *DATAFLOW,
        "runner.dataflow.right_fitting=true",
        "runner.dry_run=true",
        "model.device=cuda",
    )

    class Hinted(DPMeshModelHandler):
        def get_resource_hints(self) -> dict:
            return inference_resource_hints(cfg.runner)

    handler: ModelHandler = Hinted(cfg.model, cfg.storage)
    plan = label(cfg, handler=handler)
    gpu_steps = {s["name"]: s["resource_hints"] for s in plan["steps"] if s["resource_hints"]}
    assert gpu_steps == {"DPMesh": {"accelerator": L4}}  # min_ram unset; only inference is on GPU workers
    assert "right fitting" in plan["accelerator"]
    assert not any("worker_accelerator" in f for f in plan["flags"])


def test_dry_run_flags_a_gpu_model_without_gpus(no_submit: None) -> None:
    plan = label(_label("runner=dataflow", *DATAFLOW, "runner.dry_run=true", "model.device=cuda"))
    assert any("no worker has a GPU" in p for p in plan["problems"])


def test_shard_dry_run_on_dataflow_touches_no_storage(no_submit: None, capsys: pytest.CaptureFixture[str]) -> None:
    plan = shard(_shard("runner=dataflow", *DATAFLOW, "runner.dry_run=true", "storage=gcs"))
    assert plan["model_copies"] == "no model (CPU-only job)"
    names = [s["name"] for s in plan["steps"]]
    assert names[:3] == ["Start", "ListCorpus", "SpreadFiles"]
    assert "WriteShards" in names
    assert "--sdk_container_image=" + IMAGE in capsys.readouterr().out


@pytest.mark.parametrize("name", ["spark", "flink"])
def test_spark_and_flink_dry_run_plans(name: str, no_submit: None, capsys: pytest.CaptureFixture[str]) -> None:
    plan = label(
        _label(f"runner={name}", "runner.job_endpoint=jobserver:8099", f"runner.image={IMAGE}", "runner.dry_run=true")
    )
    out = capsys.readouterr().out
    assert plan["beam_runner"] == "PortableRunner"
    assert plan["image"] == IMAGE
    assert plan["options"]["PortableOptions"]["environment_type"] == "DOCKER"
    assert "--job_endpoint=jobserver:8099" in out
    assert "DPMesh" in out
    if name == "flink":
        assert "FlinkRunnerOptions" in plan["options"]


def _dockerfile(kind: str) -> str:
    return (REPO / "infra" / "docker" / f"Dockerfile.{kind}").read_text()


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_worker_images_pin_what_pyproject_and_beam_pin(kind: str) -> None:
    """The images cannot be built here (no Docker engine): check what can be checked statically."""
    text = _dockerfile(kind)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_pin = next(d for d in pyproject["dependencies"] if d.startswith("torch=="))
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in text
    assert f"ARG BEAM_VERSION={beam.__version__}" in text
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam" in text
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in text
    assert text.rstrip().endswith('ENTRYPOINT ["/opt/apache/beam/boot"]')
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in text
    assert "python -m pip install ." in text
    beam_pin = next(d for d in pyproject["dependencies"] if d.startswith("apache-beam"))
    assert beam_pin.split("~=")[1].rsplit(".", 1)[0] == beam.__version__.rsplit(".", 1)[0]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    for image in re.findall(r"^FROM (\S+)", text, flags=re.M):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.search(r":[\w.-]*\d", image), f"base image {image} has no pinned tag"
    if kind == "gpu":
        assert "nvidia/cuda:" in text
        assert "-runtime-" in text
        assert "download.pytorch.org/whl/${TORCH_CUDA}" in text
    else:
        assert "nvidia" not in text
        assert "download.pytorch.org/whl/cpu" in text
