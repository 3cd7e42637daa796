"""``dpmesh-shard``: turn an image corpus into WebDataset shards with Beam.

Writes ``<output>/shard-NNNNNN.tar`` + ``shard-NNNNNN.parquet`` (index) per shard, a commit marker per
shard under ``_shards/``, then ``_errors.parquet`` and ``_manifest.json`` last. See README "Output layout".

The graph::

    Create(listing tasks) -> Reshuffle -> List (per top-level folder) -> [join annotations by file name]
      -> [mode=append: compare with the set's index files by key partition: new and changed files go on]
      -> bucket count from the listing's count and sizes -> GroupByKey(bucket): one element per planned bucket
      -> WriteShards (read once, check, hash, perceptual hash, [benchmark guard], tar, index, marker; per shard)
      -> duplicates from the index files (shuffle on sha1)
      -> near-duplicate groups from the index files' perceptual hashes (shuffle on hash bands)
      -> manifest (one small record per shard)

Only metadata crosses the shuffles; each image is read once. A rerun over an output a killed run left keeps
every shard whose marker matches the plan and writes the others (see :mod:`pipelines.shard.write`).
``mode=append`` adds a generation to a finished set (README "Growing a corpus"; :mod:`pipelines.shard.compare`).

Run it as ``dpmesh-shard input.images=<dir|glob|prefix> output=<uri> [key=value ...]``, or from
Python with :func:`run` and a :class:`~pipelines.config.ShardJobConfig`.
"""

import json
import logging
import math
import time
from dataclasses import replace
from typing import Any

import apache_beam as beam
from apache_beam.transforms.combiners import ToList

import pipelines
from pipelines.cli import hydra_app
from pipelines.common.intent import record_intent, recorded_intent, refuse_another_run
from pipelines.common.launch import resolve_launch
from pipelines.common.safe_paths import check_output_location
from pipelines.common.shard_set import GENERATIONS_FOLDER, MANIFEST_NAME, NEAR_DUPLICATES_NAME
from pipelines.config import CompareMode, ConfigError, ShardJobConfig, ShardMode, config_hash, config_to_dict
from pipelines.shard.annotation_check import check_annotation_file
from pipelines.shard.coco import join_name
from pipelines.shard.compare import CompareFn, partition_of, set_partitions
from pipelines.shard.exclude import BenchmarkHashes, load_benchmark
from pipelines.shard.finish import (
    BUCKETS_KIND,
    DUPLICATES_KIND,
    ERRORS_NAME,
    NEAR_DUPLICATES_KIND,
    SHARD_KIND,
    DuplicateGroupsFn,
    ManifestRecord,
    RunContext,
    WriteManifestFn,
    index_hashes,
    index_sha1s,
    repeated_sha1s,
)
from pipelines.shard.generations import HeldShard, SetState, read_set_state
from pipelines.shard.listing import ListingTask, list_corpus, listing_tasks
from pipelines.shard.near_duplicates import (
    GroupEdgesFn,
    HashBatch,
    KeptGroupMembers,
    band_partitions,
    kept_group_edges,
    partition_edges,
    spread_bits_for,
)
from pipelines.shard.plan import PlannedBatch, PlannedFile, bucket_of, count_and_bytes, num_buckets
from pipelines.shard.publish import remove_stale_temporaries
from pipelines.shard.steps import (
    AttachAnnotationsFn,
    HashFileFn,
    ListTaskFn,
    drops_of_group,
    mark_dropped,
    read_annotations,
)
from pipelines.shard.write import MARKERS_FOLDER, ShardDone, WriteShardsFn
from pipelines.storage import ObjectNotFoundError, Storage, join


logger = logging.getLogger(__name__)

APP = "dpmesh-shard"


def run_info(cfg: ShardJobConfig, annotation_report: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the manifest and file metadata record about this run (no secrets: storage holds none)."""
    info = {
        "created_by": "dpmesh-shard",
        "pipeline_version": pipelines.__version__,
        "config_hash": config_hash(cfg),
        "config": {k: v for k, v in config_to_dict(cfg).items() if k in ("input", "output", "shard")},
    }
    if annotation_report is not None:
        info["annotation_file"] = annotation_report
    return info


_SHARDS_PER_COMPARE_PARTITION = 8  # held shards whose samples one comparison partition holds (bounded memory)


def build_pipeline(
    p: beam.Pipeline,
    cfg: ShardJobConfig,
    annotation_report: dict[str, Any] | None = None,
    listing: list[ListingTask] | None = None,
    state: SetState | None = None,
    benchmark: BenchmarkHashes | None = None,
) -> None:
    """Adds the sharding steps to ``p``; ``listing`` is the input's :func:`listing_tasks` (one stand-in task when
    None, as for a dry run, which touches no storage); ``state`` the set an append grows (None: a new set);
    ``benchmark`` the benchmark overlap guard's list (None without one).

    Every step has one output, the records it passes on mixed with the :class:`ManifestRecord` reports it
    makes; the next step keeps its records with ``Filter(isinstance, ...)``. The only side input is the
    bucket count (one integer). That shape (no tagged outputs) is what gives the same bytes on Beam's
    DaskRunner as on the others: see README "Dask".
    """
    state = state or SetState()
    info = run_info(cfg, annotation_report)
    file_metadata = {"pipeline_version": info["pipeline_version"], "config_hash": info["config_hash"]}
    per_file = not state.appending or bool(cfg.input.annotations) or cfg.shard.drop_duplicates
    compare_partitions = max(1, math.ceil(len(state.held) / _SHARDS_PER_COMPARE_PARTITION))
    listed = (
        p
        | "ListingTasks" >> beam.Create(listing or [ListingTask(None)])
        | "SpreadListing" >> beam.Reshuffle()
        | "List" >> beam.ParDo(ListTaskFn(cfg.storage, cfg.input, None if per_file else compare_partitions))
    )
    reports = [listed]
    files = listed | "ListedFiles" >> _only(PlannedFile if per_file else PlannedBatch)
    if cfg.input.annotations:
        joined = _attach_annotations(p, cfg, files)
        reports.append(joined)
        files = joined | "AnnotatedFiles" >> _only(PlannedFile)
    duplicate_groups = None
    if cfg.shard.drop_duplicates:
        files, duplicate_groups = _drop_duplicates(cfg, files)
    kept_hashes = kept_groups = None
    if state.appending:
        compared = _compare_with_set(p, cfg, state, files, compare_partitions)
        reports.append(compared)
        files = compared | "NewAndChanged" >> _only(PlannedFile)
        kept_hashes = compared | "KeptLiveHashes" >> _only(HashBatch)
        kept_groups = compared | "KeptGroupMembers" >> _only(KeptGroupMembers)
    buckets = (
        files
        | "CountAndBytes" >> beam.Map(lambda f: (1, f.planned_bytes))
        | "SumTotals" >> beam.CombineGlobally(count_and_bytes).without_defaults()  # a default needs a side input
        | "NumBuckets" >> beam.Map(num_buckets, cfg.shard)
    )
    done = (
        files
        | "AssignBucket" >> beam.Map(lambda f, n: ((bucket_of(f.key, n), n), f), n=beam.pvalue.AsSingleton(buckets))
        | "GroupByBucket" >> beam.GroupByKey()
        | "WriteShards"
        >> beam.ParDo(WriteShardsFn(cfg.storage, cfg.shard, cfg.output, file_metadata, state.first_shard, benchmark))
    )
    if duplicate_groups is None:
        duplicate_groups = (
            done
            | "IndexSha1s" >> beam.FlatMap(index_sha1s, cfg.storage, cfg.output)
            | "GroupBySha1Partition" >> beam.GroupByKey()
            | "RepeatedSha1s" >> beam.FlatMap(repeated_sha1s)
        )
    duplicates = (
        duplicate_groups
        | "CombineDuplicates" >> beam.CombineGlobally(DuplicateGroupsFn()).without_defaults()
        | "DuplicatesRecord" >> beam.Map(lambda d: ManifestRecord(DUPLICATES_KIND, d))
    )
    reports += [
        done | "ShardRecords" >> beam.Map(lambda d: ManifestRecord(SHARD_KIND, d)),
        buckets | "BucketsRecord" >> beam.Map(lambda n: ManifestRecord(BUCKETS_KIND, n)),
        duplicates,
        _near_duplicate_groups(cfg, state, done, kept_hashes, kept_groups),
    ]
    # The manifest step needs the earlier manifest, not the held shards (which the comparison read from the indexes).
    summary = benchmark.summary() if benchmark else None
    context = RunContext(replace(state, held=()), cfg.near_duplicates.threshold, summary)
    _ = (
        reports
        | "AllOutputs" >> beam.Flatten()
        | "ManifestRecords" >> _only(ManifestRecord)
        | "CollectRecords" >> ToList().without_defaults()  # List always reports, so never empty
        | "WriteManifest" >> beam.ParDo(WriteManifestFn(cfg.storage, cfg.output, info, context))
    )


def _compare_with_set(p: beam.Pipeline, cfg: ShardJobConfig, state: SetState, files: Any, partitions: int) -> Any:
    """``mode=append``: the listed files (one by one, or in :class:`PlannedBatch` es) against the set's live samples
    and, unless the grouping is redone, their near-duplicate groups, by key partition (see
    :mod:`pipelines.shard.compare`): files to shard, kept samples' hashes and group members, and reports, in one
    output."""
    spread = spread_bits_for(state.live_before)
    with_sha1 = cfg.input.compare == CompareMode.sha1
    sources: list[HeldShard | str] = [*state.held, *([] if state.regroup else [NEAR_DUPLICATES_NAME])]
    held = (
        p
        | "HeldShardsAndGroups" >> beam.Create(sources)
        | "ReadHeldIndexesAndGroups" >> beam.FlatMap(set_partitions, cfg.storage, cfg.output, partitions, with_sha1)
    )
    sides = [held, files | "KeyByPartition" >> beam.Map(_keyed_by_partition, partitions)]
    compare = CompareFn(cfg.storage, cfg.output, cfg.input, state.generation, spread, partitions, state.regroup)
    return (
        sides
        | "HeldAndListed" >> beam.Flatten()
        | "GroupByKeyPartition" >> beam.GroupByKey()
        | "Compare" >> beam.ParDo(compare)
    )


def _keyed_by_partition(files: PlannedFile | PlannedBatch, partitions: int) -> tuple[int, PlannedFile | PlannedBatch]:
    if isinstance(files, PlannedBatch):
        return files.partition, files
    return partition_of(files.key, partitions), files


def _near_duplicate_groups(cfg: ShardJobConfig, state: SetState, done: Any, kept_hashes: Any, kept_groups: Any) -> Any:
    """The near-duplicate groups of the live set (one :class:`ManifestRecord`, none when there are none): hashes of
    the shards written now and, when appending, of the samples kept live, searched by band partition for the edges
    of the new samples; with the edges within the set's groups that stay; union-find (see
    :mod:`pipelines.shard.near_duplicates`)."""
    threshold = cfg.near_duplicates.threshold
    spread = spread_bits_for(state.live_before) if state.appending else None
    per_bucket = cfg.shard.max_samples * cfg.shard.fill_target
    hashes = done | "IndexHashes" >> beam.FlatMap(index_hashes, cfg.storage, cfg.output, spread, per_bucket)
    if kept_hashes is not None:
        hashes = (hashes, kept_hashes) | "AllLiveHashes" >> beam.Flatten()
    edges = (
        hashes
        | "BandPartitions" >> beam.FlatMap(band_partitions, threshold)
        | "GroupByBand" >> beam.GroupByKey()
        | "VerifiedEdges" >> beam.FlatMap(partition_edges, threshold)
    )
    if kept_groups is not None:
        kept_edges = (
            kept_groups
            | "KeyByGroupBucket" >> beam.Map(lambda members: (members.bucket, members))
            | "GroupByGroupBucket" >> beam.GroupByKey()
            | "KeptGroupEdges" >> beam.FlatMap(kept_group_edges, threshold)
        )
        edges = (edges, kept_edges) | "AllEdges" >> beam.Flatten()
    return (
        edges
        | "GroupEdges" >> beam.CombineGlobally(GroupEdgesFn()).without_defaults()
        | "NearDuplicatesRecord" >> beam.Map(lambda groups: ManifestRecord(NEAR_DUPLICATES_KIND, groups))
    )


def _only(kind: type) -> "beam.PTransform[Any, Any]":
    """Keeps the elements of type ``kind``, the records a step passes on, and tells Beam's type checks so."""
    keep: beam.PTransform[Any, Any] = beam.Filter(isinstance, kind).with_output_types(kind)
    return keep


def _attach_annotations(p: beam.Pipeline, cfg: ShardJobConfig, files: Any) -> Any:
    """Joins persons to listed files by file name: files (some now annotated) and join reports."""
    annotations = (
        p
        | "AnnotationFile" >> beam.Create([cfg.input.annotations])
        | "ReadAnnotations" >> beam.FlatMap(read_annotations, cfg.storage, cfg.input.annotation_format.value)
    )
    images_by_name = files | "KeyByFileName" >> beam.Map(lambda f: (join_name(f.source.relpath), f))
    return (
        {"images": images_by_name, "annotations": annotations}
        | "JoinAnnotations" >> beam.CoGroupByKey()
        | "AttachAnnotations" >> beam.ParDo(AttachAnnotationsFn())
    )


def _drop_duplicates(cfg: ShardJobConfig, files: Any) -> tuple[Any, Any]:
    """``shard.drop_duplicates``: hash every file first (one extra read each) and mark all but the smallest key
    of each byte-identical group as dropped; returns the marked files and the ``(sha1, keys)`` groups."""
    found = (
        files
        | "HashFiles" >> beam.ParDo(HashFileFn(cfg.storage, cfg.shard))
        | "GroupHashes" >> beam.GroupByKey()
        | "DropsOfGroups" >> beam.FlatMap(drops_of_group)
    )
    groups = found | "GroupsOnly" >> beam.Filter(lambda kv: kv[0] == "") | "Group" >> beam.Map(lambda kv: kv[1])
    drops = found | "DropsOnly" >> beam.Filter(lambda kv: kv[0] != "")
    marked = (
        {"files": files | "KeyByKey" >> beam.Map(lambda f: (f.key, f)), "drops": drops}
        | "JoinDrops" >> beam.CoGroupByKey()
        | "MarkDropped" >> beam.FlatMap(mark_dropped)
    )
    return marked, groups


def check_annotations(cfg: ShardJobConfig, storage: Storage) -> dict[str, Any] | None:
    """Launch-time check of ``input.annotations``: the manifest's report on it, or None without one.

    Raises:
        ConfigError: one line naming the file, the field and the fix.
    """
    uri = cfg.input.annotations
    if not uri:
        return None
    try:
        content = storage.read_bytes(uri)
    except ObjectNotFoundError:
        raise ConfigError(f"input.annotations={uri!r} does not exist") from None
    try:
        report = check_annotation_file(content, cfg.input.annotation_format)
    except ValueError as exc:
        raise ConfigError(
            f"input.annotations={uri!r}: {exc}; fix the file, or set input.annotation_format=coco|crowdpose|aic"
        ) from None
    if report["annotations_without_image"]:
        logger.warning(
            "%s: %d annotations name an image_id that no image lists (e.g. %s); they are left out",
            uri,
            report["annotations_without_image"],
            ", ".join(report["image_ids_without_image"]),
        )
    return report


def prepare_output(cfg: ShardJobConfig, storage: Storage) -> SetState:
    """Launch-time checks of input and output; removes what ``overwrite=true`` replaces and what killed runs left.
    Returns the set the run starts from (empty for a new set).

    An output holding a complete shard set (``_manifest.json``) is refused unless ``overwrite=true`` or
    ``mode=append`` (which adds a generation to it). One holding the shards of a killed run with the same config is
    resumed: finished shards are kept (see :mod:`pipelines.shard.write`), unmarked ones redone. Which config wrote the
    files is the output's recorded intent (:mod:`pipelines.common.intent`, written here before the first shard);
    files of another config, or of none that can be told, are refused.

    Raises:
        ConfigError: naming the value to change.
    """
    inputs = {"input.images": cfg.input.images, "input.manifest": cfg.input.manifest}
    others = {"input.annotations": cfg.input.annotations, "exclude.images": cfg.exclude.images}
    check_output_location(storage, cfg.output, {**inputs, **others, "exclude.hashes": cfg.exclude.hashes})
    if next(iter(list_corpus(storage, cfg.input)), None) is None:
        where = cfg.input.images or cfg.input.manifest
        raise ConfigError(f"the input {where!r} lists no files; check input.images / input.manifest")
    markers = [o.uri for o in storage.list(join(cfg.output, MARKERS_FOLDER)) if o.uri.endswith(".json")]
    if cfg.mode == ShardMode.append:
        return _prepare_append(cfg, storage, markers)
    previous = [o.uri for o in storage.glob(join(cfg.output, "shard-*")) if o.uri.endswith((".tar", ".parquet"))]
    if storage.exists(join(cfg.output, MANIFEST_NAME)) and not cfg.overwrite:
        raise ConfigError(
            f"output={cfg.output!r} already holds a complete shard set; choose another output, pass overwrite=true, "
            "or add a generation to it with mode=append"
        )
    if (previous or markers) and not cfg.overwrite:
        # Which run the files belong to: the intent recorded before the first shard (a kill before any marker leaves
        # tars only), else a marker (outputs written before intents were recorded).
        earlier = recorded_intent(storage, cfg.output)
        if earlier is None and markers:
            earlier = json.loads(storage.read_bytes(markers[0])).get("config_hash")
        if earlier != config_hash(cfg):
            raise refuse_another_run(cfg.output, "shards")
        logger.info("dpmesh-shard: resuming into %s: %d shards finished earlier are kept", cfg.output, len(markers))
    if cfg.overwrite:
        generations = [o.uri for o in storage.list(join(cfg.output, GENERATIONS_FOLDER))]
        set_files = [join(cfg.output, n) for n in (MANIFEST_NAME, ERRORS_NAME, NEAR_DUPLICATES_NAME)]
        for uri in [*previous, *markers, *generations, *set_files]:
            storage.delete(uri)
    remove_stale_temporaries(cfg.output, folders=("", MARKERS_FOLDER))
    record_intent(storage, cfg.output, APP, config_hash(cfg))  # before the first shard is written
    return SetState()


def _prepare_append(cfg: ShardJobConfig, storage: Storage, markers: list[str]) -> SetState:
    """``mode=append``: the finished set's state; the shards of an unfinished append are resumed with the same config
    only (an append with another config left them: refused, as a create run refuses another run's shards)."""
    if cfg.overwrite:
        raise ConfigError(
            "mode=append adds a generation to the set at output, overwrite=true would replace it; drop one"
        )
    state = read_set_state(storage, cfg)
    unfinished = [m for m in markers if _shard_number(m) >= state.first_shard]
    if unfinished and recorded_intent(storage, cfg.output) != config_hash(cfg):
        raise refuse_another_run(cfg.output, "shards of an unfinished generation")
    remove_stale_temporaries(cfg.output, folders=("", MARKERS_FOLDER))
    record_intent(storage, cfg.output, APP, config_hash(cfg))
    logger.info(
        "dpmesh-shard: appending generation %d to %s (%d live samples, shards from %d)",
        state.generation,
        cfg.output,
        state.live_before,
        state.first_shard,
    )
    return state


def _shard_number(uri: str) -> int:
    digits = uri.rsplit("/", 1)[-1].removesuffix(".json").rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else -1


def run(
    cfg: ShardJobConfig, *, options: beam.options.pipeline_options.PipelineOptions | None = None
) -> dict[str, Any]:
    """Runs the sharding job to completion and returns the manifest it wrote (the launch plan on a dry run)."""
    if cfg.runner.dry_run:  # build, print and return the launch plan; touch no storage, submit nothing
        return resolve_launch(APP, cfg.runner).plan(lambda p: build_pipeline(p, cfg))
    storage = Storage(cfg.storage)
    annotation_report = check_annotations(cfg, storage)
    state = prepare_output(cfg, storage)
    benchmark = load_benchmark(storage, cfg)
    started = time.monotonic()
    # The listing's tasks are the units; the DaskRunner gets its partitions from runner.partitions or its default.
    with resolve_launch(APP, cfg.runner).pipeline(options) as p:
        build_pipeline(p, cfg, annotation_report, listing_tasks(storage, cfg.input), state, benchmark)
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
    generation = (manifest.get("generations") or [{}])[-1]
    if generation.get("mode") == "append":
        lines.append(
            f"  generation {generation['generation']}: new {c['new']}, changed {c['changed']}, unchanged "
            f"{c['unchanged']}; retired {generation['retired']['superseded']} superseded + "
            f"{generation['retired']['removed']} removed; not listed and kept {c['absent_kept']}"
        )
    if "live" in manifest:
        near = manifest["near_duplicates"]
        lines.append(
            f"  live samples {manifest['live']['samples']} in {len(manifest.get('generations', []))} generation(s); "
            f"{near['samples']} in {near['groups']} near-duplicate groups (<= {near['threshold']} bits)"
        )
    if manifest.get("exclude"):
        lines.append(
            f"  benchmark overlap: {c['benchmark_overlap']} images left out "
            f"(against {manifest['exclude']['images']} benchmark images, <= {manifest['exclude']['threshold']} bits)"
        )
    if c["errors_by_reason"]:
        reasons = ", ".join(f"{k} {v}" for k, v in c["errors_by_reason"].items())
        errors_file = generation.get("errors_file", ERRORS_NAME)
        lines.append(f"  reported: {reasons}  (rows in {join(output, errors_file)})")
    for shard in manifest["shards"][:8]:
        lines.append(f"  {shard['shard']}.tar  {shard['samples']:6d} samples  {shard['tar_bytes'] / 1e6:8.2f} MB")
    if len(manifest["shards"]) > 8:
        lines.append(f"  ... {len(manifest['shards']) - 8} more shards, listed in {join(output, MANIFEST_NAME)}")
    if "elapsed_s" in manifest:
        rate = c["files_in"] / max(manifest["elapsed_s"], 1e-9)
        lines.append(f"  {manifest['elapsed_s']:.1f} s, {rate:.1f} files/s")
    return "\n".join(lines)


__all__ = ["ShardDone", "build_pipeline", "format_summary", "main", "prepare_output", "run"]

main = hydra_app(
    "dpmesh-shard", "dpmesh_shard", ShardJobConfig, run, lambda manifest, cfg: format_summary(manifest, cfg.output)
)


if __name__ == "__main__":
    main()
