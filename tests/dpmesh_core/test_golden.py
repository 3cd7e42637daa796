"""Golden output slice of the seeded tiny model, and bitwise determinism within one process."""

from __future__ import annotations

import json

import pytest
import torch

from dpmesh_core.model import DPMesh, DPMeshOutput
from tests.golden.regenerate_tiny_slice import (
    GOLDEN_PATH,
    REGENERATE_COMMAND,
    build_model,
    golden_inputs,
    slice_outputs,
)


ATOL = 1e-4  # loose enough for any CPU thread count, tight enough to catch a changed computation


@pytest.fixture(scope="module")
def first_run() -> tuple[DPMesh, DPMeshOutput]:
    model = build_model()
    with torch.inference_mode():
        return model, model(**golden_inputs())


def test_tiny_output_slice_matches_golden(first_run: tuple[DPMesh, DPMeshOutput]) -> None:
    assert GOLDEN_PATH.is_file(), f"{GOLDEN_PATH.name} missing: create it with `{REGENERATE_COMMAND}`"
    expected = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))["outputs"]
    actual = slice_outputs(first_run[1])
    assert sorted(actual) == sorted(expected), f"golden keys differ; regenerate with `{REGENERATE_COMMAND}`"
    for name, values in expected.items():
        torch.testing.assert_close(
            torch.tensor(actual[name]),
            torch.tensor(values),
            atol=ATOL,
            rtol=0,
            msg=lambda m, name=name: (
                f"{name} differs from {GOLDEN_PATH.name}:\n{m}\nIf the change is intended, regenerate the golden "
                f"file with `{REGENERATE_COMMAND}` (from the repository root) and review the diff."
            ),
        )


def test_tiny_forward_is_bitwise_deterministic(first_run: tuple[DPMesh, DPMeshOutput]) -> None:
    model, first = first_run
    with torch.inference_mode():
        second = model(**golden_inputs())
    for name in ("smpl_pose", "smpl_shape", "cam_trans", "joint_img", "vertices", "joints30", "pose_latent"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
