"""Finding people in images without annotations: a person detector and a top-down keypoint model as Beam steps.

``records`` holds the small, torch-free values that leave the models; ``models`` loads and runs the two
``transformers`` models; ``handlers`` wraps them as Beam ``ModelHandler`` s whose models are used through methods
only; ``shard_detector`` runs them on a shard's images inside the per-shard labeling step.
"""
