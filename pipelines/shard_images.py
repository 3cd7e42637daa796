"""``dpmesh-shard``: turn an image corpus into WebDataset shards with Beam.

Writes ``<output>/shard-NNNNNN.tar`` + ``shard-NNNNNN.parquet`` (index) per shard, then
``_errors.parquet`` and ``_manifest.json`` last. See README "Output layout".

Run it as ``dpmesh-shard input.images=<dir|glob|prefix> output=<uri> [key=value ...]``, or from
Python with :func:`run` and a :class:`~pipelines.config.ShardJobConfig`.
"""

import json
import logging
import time
from typing import Any

import apache_beam as beam
from apache_beam.transforms.combiners import ToList

import pipelines
from pipelines.cli import hydra_app
from pipelines.coco_annotations import join_name
from pipelines.config import ConfigError, ShardJobConfig, config_hash, config_to_dict
from pipelines.corpus import SourceFile, list_corpus
from pipelines.keys import stable_bucket
from pipelines.options import pipeline_options, release_runner
from pipelines.shard_format import ShardSample
from pipelines.storage import Storage, join
from pipelines.transforms.shard_manifest import (
    BUCKETS_KIND,
    ERRORS_NAME,
    MANIFEST_NAME,
    ManifestRecord,
    WriteManifestFn,
)
from pipelines.transforms.sharding import (
    AttachAnnotationsFn,
    ListCorpusFn,
    ProbeFileFn,
    ResolveDuplicatesFn,
    WriteBucketFn,
    count_and_bytes,
    num_buckets,
    read_annotations,
)


logger = logging.getLogger(__name__)


def run_info(cfg: ShardJobConfig) -> dict[str, Any]:
    """What the manifest and file metadata record about this run (no secrets: storage holds none)."""
    return {
        "created_by": "dpmesh-shard",
        "pipeline_version": pipelines.__version__,
        "config_hash": config_hash(cfg),
        "config": {k: v for k, v in config_to_dict(cfg).items() if k in ("input", "output", "shard")},
    }


def build_pipeline(p: beam.Pipeline, cfg: ShardJobConfig) -> None:
    """Adds the sharding steps to ``p``.

    Every step has one output, the records it passes on mixed with the :class:`ManifestRecord` reports it
    makes; the next step keeps its records with ``Filter(isinstance, ...)``, and the reports of all steps meet
    in one list that the manifest step writes. That shape (no tagged outputs, no side input but the bucket
    count) is what gives the same bytes on Beam's DaskRunner as on the others: see README "Dask".
    """
    info = run_info(cfg)
    file_metadata = {"pipeline_version": info["pipeline_version"], "config_hash": info["config_hash"]}
    listed = p | "Start" >> beam.Create([None]) | "ListCorpus" >> beam.ParDo(ListCorpusFn(cfg.storage, cfg.input))
    sources = listed | "SpreadFiles" >> beam.Reshuffle() | "SourceFiles" >> _only(SourceFile)
    probed = sources | "ProbeImages" >> beam.ParDo(ProbeFileFn(cfg.storage, cfg.shard))
    deduped = (
        probed
        | "ProbedSamples" >> _only(ShardSample)
        | "KeyBySha1" >> beam.Map(lambda s: (s.sha1, s))
        | "GroupBySha1" >> beam.GroupByKey()
        | "ResolveDuplicates" >> beam.ParDo(ResolveDuplicatesFn(cfg.shard.drop_duplicates))
    )
    reports = [listed, probed, deduped]
    samples = deduped | "UniqueSamples" >> _only(ShardSample)
    if cfg.input.annotations:
        joined = _attach_annotations(p, cfg, samples)
        reports.append(joined)
        samples = joined | "AnnotatedSamples" >> _only(ShardSample)
    buckets = (
        samples
        | "CountAndBytes" >> beam.Map(lambda s: (1, s.bytes))
        | "SumTotals" >> beam.CombineGlobally(count_and_bytes).without_defaults()  # a default needs a side input
        | "NumBuckets" >> beam.Map(num_buckets, cfg.shard)
    )
    written = (
        samples
        | "AssignBucket"
        >> beam.Map(lambda s, n: ((stable_bucket(s.key, n), n), s), n=beam.pvalue.AsSingleton(buckets))
        | "GroupByBucket" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteBucketFn(cfg.storage, cfg.shard, cfg.output, file_metadata))
    )
    reports += [written, buckets | "BucketsRecord" >> beam.Map(lambda n: ManifestRecord(BUCKETS_KIND, n))]
    _ = (
        reports
        | "AllOutputs" >> beam.Flatten()
        | "ManifestRecords" >> _only(ManifestRecord)
        | "CollectRecords" >> ToList().without_defaults()  # ListCorpus always reports, so never empty
        | "WriteManifest" >> beam.ParDo(WriteManifestFn(cfg.storage, cfg.output, info))
    )


def _only(kind: type) -> "beam.PTransform[Any, Any]":
    """Keeps the elements of type ``kind``, the records a step passes on, and tells Beam's type checks so."""
    keep: beam.PTransform[Any, Any] = beam.Filter(isinstance, kind).with_output_types(kind)
    return keep


def _attach_annotations(p: beam.Pipeline, cfg: ShardJobConfig, samples: Any) -> Any:
    """Joins COCO persons to images by file name: samples (some now annotated) and join/annotation reports."""
    annotations = (
        p
        | "AnnotationFile" >> beam.Create([cfg.input.annotations])
        | "ReadAnnotations" >> beam.FlatMap(read_annotations, cfg.storage, cfg.input.annotation_format.value)
    )
    images_by_name = samples | "KeyByFileName" >> beam.Map(lambda s: (join_name(s.relpath), s))
    return (
        {"images": images_by_name, "annotations": annotations}
        | "JoinAnnotations" >> beam.CoGroupByKey()
        | "AttachAnnotations" >> beam.ParDo(AttachAnnotationsFn())
    )


def prepare_output(cfg: ShardJobConfig, storage: Storage) -> None:
    """Launch-time checks: the input lists at least one file, and the output holds no other shard set.

    Raises:
        ConfigError: naming the value to change.
    """
    if next(iter(list_corpus(storage, cfg.input)), None) is None:
        where = cfg.input.images or cfg.input.manifest
        raise ConfigError(f"the input {where!r} lists no files; check input.images / input.manifest")
    if cfg.input.annotations and not storage.exists(cfg.input.annotations):
        raise ConfigError(f"input.annotations={cfg.input.annotations!r} does not exist")
    previous = [o.uri for o in storage.glob(join(cfg.output, "shard-*")) if o.uri.endswith((".tar", ".parquet"))]
    has_manifest = storage.exists(join(cfg.output, MANIFEST_NAME))
    if (previous or has_manifest) and not cfg.overwrite:
        raise ConfigError(f"output={cfg.output!r} already holds shards; choose another output or pass overwrite=true")
    for uri in [*previous, join(cfg.output, MANIFEST_NAME), join(cfg.output, ERRORS_NAME)]:
        storage.delete(uri)


def run(
    cfg: ShardJobConfig, *, options: beam.options.pipeline_options.PipelineOptions | None = None
) -> dict[str, Any]:
    """Runs the sharding job to completion and returns the manifest it wrote (the launch plan on a dry run)."""
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        from pipelines.launch_plan import print_launch_plan

        return print_launch_plan("dpmesh-shard", cfg, lambda p: build_pipeline(p, cfg))
    storage = Storage(cfg.storage)
    prepare_output(cfg, storage)
    started = time.monotonic()
    with beam.Pipeline(options=options or pipeline_options(cfg.runner, app="dpmesh-shard")) as p:
        build_pipeline(p, cfg)
    release_runner(p.result)
    manifest: dict[str, Any] = json.loads(storage.read_bytes(join(cfg.output, MANIFEST_NAME)))
    manifest["elapsed_s"] = round(time.monotonic() - started, 3)
    return manifest


def format_summary(manifest: dict[str, Any], output: str) -> str:
    """A short human-readable report of a finished sharding run."""
    c = manifest["counts"]
    lines = [
        f"dpmesh-shard: {c['images_sharded']} images in {c['shards']} shards under {output}",
        f"  files in {c['files_in']} = sharded {c['images_sharded']} + reported {c['files_errored']}"
        f"  ({'reconciled' if c['reconciled'] else 'NOT RECONCILED'})",
        f"  persons {c['persons']} on {c['images_annotated']} annotated images; "
        f"{c['duplicate_files']} duplicate files in {c['duplicate_groups']} groups",
    ]
    if c["errors_by_reason"]:
        reasons = ", ".join(f"{k} {v}" for k, v in c["errors_by_reason"].items())
        lines.append(f"  reported: {reasons}  (rows in {join(output, ERRORS_NAME)})")
    for shard in manifest["shards"][:8]:
        lines.append(f"  {shard['shard']}.tar  {shard['samples']:6d} samples  {shard['tar_bytes'] / 1e6:8.2f} MB")
    if len(manifest["shards"]) > 8:
        lines.append(f"  ... {len(manifest['shards']) - 8} more shards, listed in {join(output, MANIFEST_NAME)}")
    if "elapsed_s" in manifest:
        rate = c["files_in"] / max(manifest["elapsed_s"], 1e-9)
        lines.append(f"  {manifest['elapsed_s']:.1f} s, {rate:.1f} files/s")
    return "\n".join(lines)


main = hydra_app(
    "dpmesh-shard", "dpmesh_shard", ShardJobConfig, run, lambda manifest, cfg: format_summary(manifest, cfg.output)
)


if __name__ == "__main__":
    main()
