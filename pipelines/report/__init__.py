"""``dpmesh-report``: a static HTML report over a label output (plots, and a gallery with SMPL mesh overlays).

Modules: ``data`` (reading the label output and shard crops), ``plots`` (matplotlib figures), ``mesh`` (posing the
body model), ``render`` (headless OpenGL), ``gallery`` (tiles), ``eval_section`` (a ``dpmesh-eval`` result),
``html`` (the page), ``assets`` (its files: names from data checked, URLs encoded) and ``job`` (the command).
Importing this package loads no torch.
"""
