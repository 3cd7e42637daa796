"""Rewrite ``tests/golden/dpmesh_core/tiny_slice.json``: the only way that golden file should change.

Run from the repository root: ``python -m tests.golden.regenerate_tiny_slice``. Review the diff: a changed value
means the tiny model (same code paths as the full-size one) now computes something else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dpmesh_core.model import DPMesh, DPMeshOutput


GOLDEN_PATH = Path(__file__).resolve().parent / "dpmesh_core" / "tiny_slice.json"
REGENERATE_COMMAND = "python -m tests.golden.regenerate_tiny_slice"
SEED = 0
# name -> slice of the output tensor kept in the golden file (small, but touching every head and the SMPL forward).
SLICES: dict[str, tuple[slice, ...]] = {
    "smpl_pose": (slice(None), slice(0, 6)),
    "smpl_shape": (slice(None),),
    "cam_trans": (slice(None),),
    "joint_img": (slice(None), slice(0, 3)),
    "vertices": (slice(None), slice(0, 4)),
}


def golden_inputs() -> dict[str, torch.Tensor]:
    """Seeded inputs for the tiny config: images `(2, 3, 128, 128)`, joints `(2, 30, 3)` in its 16-grid, mask
    `(2, 30, 1)`, one focal per sample."""
    from tests.fakes.tiny_dpmesh import tiny_inputs

    inputs = tiny_inputs(batch=2, seed=SEED)
    inputs["focal"] = torch.tensor([1200.0, 1650.0])  # two focals: the per-sample camera path is covered
    return inputs


def build_model() -> DPMesh:
    """The seeded tiny model: `DPMesh.tiny(seed=0)` with its zero-initialised layers (ControlNet zero convs, ...)
    redrawn from a seeded generator so that every path contributes (see `tests.fakes.tiny_dpmesh`)."""
    from tests.fakes.tiny_dpmesh import build_tiny_dpmesh

    return build_tiny_dpmesh(seed=SEED)


def slice_outputs(out: DPMeshOutput) -> dict[str, list[object]]:
    """The golden slices of one forward's outputs, as nested lists."""
    return {name: getattr(out, name)[index].tolist() for name, index in SLICES.items()}


def compute_slice() -> dict[str, list[object]]:
    """Build the seeded tiny model, run it once on `golden_inputs()` and return the golden slices."""
    model = build_model()
    with torch.inference_mode():
        return slice_outputs(model(**golden_inputs()))


def main() -> int:
    """Write the golden slice file."""
    values = compute_slice()
    header = {"_generated_by": REGENERATE_COMMAND, "torch_version": torch.__version__.split("+")[0], "seed": SEED}
    # one line per output: small diffs on regeneration
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in header.items()]
    body = ",\n".join(f"    {json.dumps(name)}: {json.dumps(value)}" for name, value in values.items())
    text = "{\n" + ",\n".join(lines) + ',\n  "outputs": {\n' + body + "\n  }\n}\n"
    json.loads(text)  # stays valid JSON
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {GOLDEN_PATH.relative_to(Path.cwd()) if GOLDEN_PATH.is_relative_to(Path.cwd()) else GOLDEN_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
