"""``dpmesh-export``: labels + shards (or a labels release + images) to training-ready datasets, and a PyTorch dataset
over labels + shards.

One module per job: :mod:`~pipelines.export.selection` (which rows; ``select.where`` held to one SQL expression),
:mod:`~pipelines.export.checks` (what is checked before a shard, a row or an index row is trusted: lineage, keys,
finite values; the one home of the export's problem reasons), :mod:`~pipelines.export.joints44` (COCO-17 to the 44
joints of 4D-Humans / CameraHMR), :mod:`~pipelines.export.records` (the typed person and image records every writer
takes), :mod:`~pipelines.export.crop` (square person crops), :mod:`~pipelines.export.formats` (one writer per trainer
format; every name from data through the safe join), :mod:`~pipelines.export.scratch` (the output's own temp folder),
:mod:`~pipelines.export.release` (a labels-only release and what a rebuild from it stands on),
:mod:`~pipelines.export.image_sources` (a unit's images, from its shard tar or a rebuild's folder, proven by sha1
before they are decoded), :mod:`~pipelines.export.plan` (the units and which are pending),
:mod:`~pipelines.export.export_shard` (one shard: check, select, read, write, marker),
:mod:`~pipelines.export.finish` (provenance, ``stats.json`` and the dataset card), :mod:`~pipelines.export.job`
(launch checks, the resolved launch, the Beam job) and :mod:`~pipelines.export.torch_dataset` (the only module here
that imports torch). Image bytes come out of the shard tars by ``tar_offset`` through
:mod:`pipelines.common.shard_members`.
"""
