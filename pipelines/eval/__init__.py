"""``dpmesh-eval``: measure labels against ground-truth SMPL, and how well their confidence ranks the error.

Modules, one job each: `ground_truth` (the ground-truth Parquet layout and its reader), `pw3d` (3DPW sequence
files through a restricted unpickler), `metrics` (MPJPE, PA-MPJPE, PVE in mm), `quality` (Spearman,
sparsification, AUSE), `evaluate` (join labels to ground truth, break the errors down; the `EvaluationResult`
record other tools such as the report read), `document` (the ``eval.json`` schema those tools check it against),
`job` (the command). Imports no torch unless a body model is used.
"""
