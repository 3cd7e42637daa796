"""Beam options per runner config, parsed back into apache_beam's own views, dry-run launch plans, worker images."""

import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import apache_beam as beam
import pytest
import tomllib
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner
from apache_beam.runners.runner import PipelineRunner, create_runner
from apache_beam.testing.util import assert_that, equal_to

from pipelines import options as options_module
from pipelines.common.launch import resolve_launch
from pipelines.config import ConfigError, LabelJobConfig, RunnerConfig, RunnerName, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.launch_plan import launch_plan
from pipelines.options import beam_flags, inference_resource_hints, pipeline_options, running_pipeline, unique_job_name
from pipelines.shard.job import run as shard


REPO = Path(__file__).resolve().parents[2]
IMAGE = "us-central1-docker.pkg.dev/my-project/dpmesh/dpmesh-gpu:0.1.0"
DATAFLOW = [
    "runner.dataflow.project=my-project",
    "runner.dataflow.temp_location=gs://my-project-dpmesh/tmp",
    f"runner.image={IMAGE}",
]
L4 = "type:nvidia-l4;count:1;install-nvidia-driver"
JOB_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # Dataflow's rule, written out again to check ours


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
    assert re.fullmatch(r"dpmesh-label-\d{8}-\d{6}-[0-9a-f]{6}", gcp.job_name)
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
        "LabelShards",
    ):
        assert text in out
    assert [s["name"] for s in plan["steps"]][:3] == ["ListShards", "SpreadShards", "LabelShards"]
    assert plan["options"]["WorkerOptions"]["sdk_container_image"] == IMAGE
    assert plan["problems"] == []


def test_right_fitting_dry_run_shows_which_step_gets_the_gpu(no_submit: None) -> None:
    cfg = _label(
        "runner=dataflow_gpu",
        *DATAFLOW,
        "runner.dataflow.right_fitting=true",
        "runner.dry_run=true",
        "model.device=cuda",
    )
    plan = label(cfg)
    gpu_steps = {s["name"]: s["resource_hints"] for s in plan["steps"] if s["resource_hints"]}
    assert gpu_steps == {"LabelShards": {"accelerator": L4}}  # min_ram unset; only labeling is on GPU workers
    assert "right fitting" in plan["accelerator"]
    assert not any("worker_accelerator" in f for f in plan["flags"])


def test_dry_run_flags_a_gpu_model_without_gpus(no_submit: None) -> None:
    plan = label(_label("runner=dataflow", *DATAFLOW, "runner.dry_run=true", "model.device=cuda"))
    assert any("no worker has a GPU" in p for p in plan["problems"])


def test_shard_dry_run_on_dataflow_touches_no_storage(no_submit: None, capsys: pytest.CaptureFixture[str]) -> None:
    plan = shard(_shard("runner=dataflow", *DATAFLOW, "runner.dry_run=true", "storage=gcs"))
    assert plan["model_copies"] == "no model (CPU-only job)"
    names = [s["name"] for s in plan["steps"]]
    assert names[:3] == ["ListingTasks", "SpreadListing", "List"]
    assert "WriteShards" in names
    assert "--sdk_container_image=" + IMAGE in capsys.readouterr().out


def test_refilter_dry_run_prints_its_plan_and_writes_nothing(
    no_submit: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pipelines.config import RefilterJobConfig
    from pipelines.refilter.job import run as refilter

    output = tmp_path / "refiltered"
    cfg = compose_config(
        "dpmesh_refilter",
        [
            f"input={tmp_path / 'no-labels-here'}",
            f"output={output}",
            "runner=dataflow",
            *DATAFLOW,
            "runner.dry_run=true",
        ],
        RefilterJobConfig,
    )
    plan = refilter(cfg)
    assert plan["submitted"] is False
    assert [s["name"] for s in plan["steps"]][:3] == ["Shards", "SpreadShards", "Refilter"]
    assert "dry run: nothing submitted" in capsys.readouterr().out
    assert not output.exists(), "a dry run writes nothing (it used to run the job)"


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
    assert "LabelShards" in out
    if name == "flink":
        assert "FlinkRunnerOptions" in plan["options"]


def test_dask_options_parse_into_beams_views() -> None:
    cfg = _shard("runner=dask", "runner.address=tcp://10.0.0.5:8786", "runner.partitions=12")
    flags = beam_flags(cfg.runner, app="dpmesh-shard")
    options = PipelineOptions(flags)
    runner = options.view_as(StandardOptions).runner
    assert isinstance(create_runner(runner), DaskRunner)  # Beam resolves the name (it does not know "DaskRunner")
    dask = options.view_as(DaskOptions)
    assert (dask.address, dask.npartitions) == ("tcp://10.0.0.5:8786", 12)
    job_name = options.view_as(GoogleCloudOptions).job_name
    assert dask.name == job_name  # the scheduler's logs name the client after the job
    assert f"--job_name={job_name}" in flags


def test_dask_without_an_address_leaves_the_local_cluster_to_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DPMESH_DASK_ADDRESS", raising=False)
    cfg = _label("runner=dask")
    assert (cfg.runner.name, cfg.runner.address, cfg.runner.partitions) == (RunnerName.dask, None, None)
    flags = beam_flags(cfg.runner, app="dpmesh-label")
    assert not any(f.startswith(("--dask_client_address", "--dask_npartitions")) for f in flags)
    # What the DaskRunner hands to distributed.Client(**...): no address, so Client() starts a LocalCluster.
    given = PipelineOptions(flags).view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
    assert set(given) == {"name"}


def test_dask_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPMESH_DASK_ADDRESS", "scheduler:8786")
    assert _shard("runner=dask").runner.address == "scheduler:8786"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["runner.address=127.0.0.1:8786"], "runner.address is the dask scheduler of runner=dask"),
        (["runner=portable", "runner.address=h:8786"], "runner.job_endpoint"),
        (["runner=dask", "runner.address=scheduler"], "host:port"),
        (["runner=dask", "runner.address=http://h:8786/status"], "host:port"),
        (["runner.partitions=4"], "runner.partitions is a runner=dask option"),
        (["runner=dask", "runner.partitions=0"], "runner.partitions must be >= 1"),
        (["runner.job_name=Label-Run"], "runner.job_name='Label-Run'"),
        (["runner.job_name=label_run"], "lower case letters, digits and dashes"),
        (["runner.job_name=7-label"], "start with a letter"),
        (["runner.job_name=label-"], "end with a letter or digit"),
        ([f"runner.job_name=a{'b' * 63}"], "at most 63 characters"),
    ],
)
def test_dask_and_job_name_mistakes_fail_at_launch(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _shard(*overrides)


def test_every_launch_gets_its_own_valid_job_name() -> None:
    runner = _shard().runner
    names = {PipelineOptions(beam_flags(runner, app="dpmesh-shard")).view_as(GoogleCloudOptions).job_name}
    names |= {pipeline_options(runner, app="dpmesh-shard").view_as(GoogleCloudOptions).job_name for _ in range(20)}
    assert len(names) == 21
    for name in names:
        assert JOB_NAME.fullmatch(name)
        assert len(name) <= 63
        assert re.fullmatch(r"dpmesh-shard-\d{8}-\d{6}-[0-9a-f]{6}", name)


def test_unique_job_name_is_utc_time_and_fits_dataflow_for_any_app_name() -> None:
    now = datetime(2026, 3, 4, 23, 59, 58, tzinfo=timezone.utc)
    assert unique_job_name("dpmesh-label", now=now).startswith("dpmesh-label-20260304-235958-")
    for app in ("dpmesh-label", "DPMesh_Label v2", "9lives", "", "--", "x" * 200, "a" * 39 + "-" + "b" * 30):
        name = unique_job_name(app, now=now)
        assert JOB_NAME.fullmatch(name), name
        assert len(name) <= 63, name
    assert unique_job_name("DPMesh_Label v2", now=now).startswith("dpmesh-label-v2-2026")
    assert unique_job_name("9lives", now=now).startswith("job-9lives-")


def test_an_explicit_job_name_is_used_as_given() -> None:
    cfg = _label("runner=dataflow_gpu", *DATAFLOW, "runner.job_name=nightly-label-42")
    flags = beam_flags(cfg.runner, app="dpmesh-label")
    assert "--job_name=nightly-label-42" in flags
    assert pipeline_options(cfg.runner, app="dpmesh-label").view_as(GoogleCloudOptions).job_name == "nightly-label-42"


def test_job_name_keyword_is_the_older_spelling_of_app() -> None:
    runner = RunnerConfig()
    old = pipeline_options(runner, job_name="dpmesh-refilter").view_as(GoogleCloudOptions).job_name
    assert old.startswith("dpmesh-refilter-")
    with pytest.raises(TypeError, match="app="):
        beam_flags(runner)
    with pytest.raises(TypeError, match="app="):
        beam_flags(runner, app="a", job_name="b")


def test_dask_dry_run_plan(no_submit: None, capsys: pytest.CaptureFixture[str]) -> None:
    plan = shard(_shard("runner=dask", "runner.address=10.0.0.5:8786", "runner.dry_run=true"))
    out = capsys.readouterr().out
    assert plan["beam_runner"] == "apache_beam.runners.dask.dask_runner.DaskRunner"
    assert plan["options"]["DaskOptions"]["address"] == "10.0.0.5:8786"
    job_name = next(f.split("=", 1)[1] for f in plan["flags"] if f.startswith("--job_name="))
    assert plan["options"]["DaskOptions"]["name"] == job_name  # flags and options share one generated name
    assert "dask scheduler at 10.0.0.5:8786" in out
    assert plan["problems"] == []  # the shard graph has no tagged outputs
    local = shard(_shard("runner=dask", "runner.dry_run=true"))
    assert "LocalCluster" in local["cluster"]
    assert "address" not in local["options"]["DaskOptions"]


def test_dask_dry_run_names_steps_with_tagged_outputs(no_submit: None) -> None:
    """Beam's DaskRunner merges tagged outputs into the main output: the plan says which steps have them."""

    class Split(beam.DoFn):
        def process(self, x: int) -> Iterator[object]:
            yield x if x % 2 else beam.pvalue.TaggedOutput("odd", x)

    def build(p: beam.Pipeline) -> None:
        _ = p | beam.Create([1, 2]) | "Split" >> beam.ParDo(Split()).with_outputs("odd", main="even")

    cfg = _shard("runner=dask", "runner.dry_run=true")
    plan = launch_plan(resolve_launch("tagged", cfg.runner), build)
    assert len(plan["problems"]) == 1
    assert "Split" in plan["problems"][0]
    other = resolve_launch("tagged", _shard("runner.dry_run=true").runner)
    assert launch_plan(other, build)["problems"] == []  # other runners: fine


def test_dask_dry_run_names_steps_that_would_never_run(no_submit: None) -> None:
    """Beam's DaskRunner computes only the last step and what it reads: an earlier sink is silently skipped."""

    def build(p: beam.Pipeline) -> None:
        numbers = p | "Numbers" >> beam.Create([1, 2])
        _ = numbers | "FirstSink" >> beam.Map(print)
        total = numbers | "Total" >> beam.CombineGlobally(sum)  # a side input, so reached
        _ = numbers | "LastSink" >> beam.Map(lambda x, t: x / t, t=beam.pvalue.AsSingleton(total))

    plan = launch_plan(resolve_launch("two-sinks", _shard("runner=dask", "runner.dry_run=true").runner), build)
    assert plan["problems"] == [
        "Beam's DaskRunner computes only the last step and what it reads, so these steps would never run: FirstSink"
    ]


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


def test_a_plan_leaves_no_local_temp_folder(no_submit: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Beam makes a local temp folder per Pipeline and removes it only when the pipeline runs; a plan never runs."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    launch_plan(resolve_launch("empty", _shard("runner.dry_run=true").runner), lambda p: p | beam.Create([1]))
    assert list(tmp_path.iterdir()) == []


def test_running_pipeline_runs_then_releases_and_cleans_up_after_a_failed_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every job runs in ``running_pipeline``: a block that raises before the run leaves no Beam temp folder, and
    a run's result is always released (the DaskRunner's client would otherwise outlive the job)."""
    released: list[object] = []
    monkeypatch.setattr(options_module, "release_runner", released.append)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def build_then_fail() -> None:
        with running_pipeline(pipeline_options(_shard().runner, app="test")) as p:
            _ = p | beam.Create([1])
            raise RuntimeError("bad build")

    with pytest.raises(RuntimeError, match="bad build"):
        build_then_fail()
    assert list(tmp_path.iterdir()) == []
    assert released == [None]

    with running_pipeline(pipeline_options(_shard().runner, app="test")) as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: 10 * x), equal_to([10, 20]))
    assert len(released) == 2
    assert released[1] is p.result
