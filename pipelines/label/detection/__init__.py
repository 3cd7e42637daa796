"""Finding people in images without annotations: a person detector and a top-down keypoint model as Beam steps.

``records`` holds the small, torch-free values that leave the GPU steps; ``models`` loads and runs the two
``transformers`` models; ``handlers`` wraps them as Beam ``ModelHandler`` s; ``transforms`` is the detection
stage of ``dpmesh-label`` (see :class:`pipelines.label.detection.transforms.DetectPersons`).
"""
