"""``dpmesh-refilter``: re-split existing labels by new thresholds, without the model.

:mod:`~pipelines.refilter.job` (run, the Beam job, the command), :mod:`~pipelines.refilter.plan` (which shards are
refiltered already), :mod:`~pipelines.refilter.refilter_shard` (re-scoring and the per-shard step),
:mod:`~pipelines.refilter.finish` (the label run's lineage for the summary).
"""
