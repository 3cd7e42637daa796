"""``dpmesh-label`` and ``dpmesh-refilter``: DPMesh pseudo-labels for every person of a shard set.

One element per shard flows through read -> (detect) -> batch -> infer -> score -> write -> marker inside one
fused step (:mod:`pipelines.label.job`); see README "Labeling". Importing this package loads no torch.
"""
