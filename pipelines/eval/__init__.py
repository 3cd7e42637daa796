"""``dpmesh-eval``: measure labels against ground-truth SMPL, and how well their confidence ranks the error; and what
people's reviews say of them (good-label rates with 95% intervals).

Stage files, as every job: `job` (run: plan -> resolve launch -> execute -> read the result; build_pipeline; main),
`plan` (the label groups; the ground truth checked and partitioned by key), `eval_shard` (the settings and the
per-unit steps: split label files by bucket, join a bucket), `finish` (merge the summaries; eval.json, eval.md,
eval_persons.json, eval_reviews.json, the calibration).

Pieces, one job each: `ground_truth` (the ground-truth layout, its row check, the join keys), `ground_truth_table`
(ground truth as columns), `ground_truth_files` (reading it a batch at a time), `pw3d` (3DPW sequence files through
a restricted unpickler), `buckets` (what the partitioned join hashes), `work_files` (rows written by bucket),
`label_columns` (label rows as arrays), `join` (one bucket's join), `person_errors` and `metrics` (MPJPE, PA-MPJPE,
PVE in mm, batched), `summary`, `samples` and `quality` (the mergeable figures: sketches, bottom-k samples,
Spearman, sparsification, AUSE and their bounds), `result` and `document` (the ``eval.json`` record, its Markdown
and its schema), `meshes` (SMPL meshes, torch on first use), `evaluate` (the same evaluation in one process, for
small sets in hand). Reviews (``review=``): `review_plan` (the files checked and combined on the driver; one unit per
shard a decision names), `review_join` (a shard's reviewed persons found in its rows), `review_rates` (the rates,
their Wilson intervals, the population-weighted figures and ``eval_reviews.json``). Imports no torch unless a body
model is used.
"""
