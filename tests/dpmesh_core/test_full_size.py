"""The full-size (official) architecture builds on CPU with real random tensors and runs one forward in budget."""

from __future__ import annotations

import resource
import sys
import time

import pytest
import torch

from dpmesh_core.config import official_config
from dpmesh_core.model import DPMesh
from dpmesh_core.synthetic import synthetic_smpl_data
from tests.fakes.tiny_dpmesh import tiny_inputs


PEAK_RSS_LIMIT_GIB = 16.0


def _peak_rss_gib() -> float:
    """Peak resident set size of this process so far (`ru_maxrss`: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**3 if sys.platform == "darwin" else peak / 1024**2


@pytest.mark.slow
def test_official_config_builds_and_runs_on_cpu_within_memory() -> None:
    start = time.perf_counter()
    # SMPL-sized synthetic mesh (6890 vertices) so that the body-model tensors have their real size too.
    model = DPMesh(official_config(), synthetic_smpl_data(num_vertices=6890), network_device="cpu")
    model = model.eval().requires_grad_(False)
    built = time.perf_counter()
    assert not any(t.is_meta for t in model.state_dict().values())
    num_params = sum(p.numel() for p in model.parameters())
    with torch.inference_mode():
        out = model(**tiny_inputs(batch=1, config=official_config()))
    elapsed = time.perf_counter() - start
    expected = {"smpl_pose": (1, 72), "smpl_shape": (1, 10), "cam_trans": (1, 3), "joint_img": (1, 15, 3),
                "vertices": (1, 6890, 3), "joints30": (1, 30, 3), "joint_proj": (1, 30, 2), "pose_latent": (1, 32),
                "smpl_joints15_img": (1, 15, 2)}  # fmt: skip
    for name, shape in expected.items():
        assert tuple(getattr(out, name).shape) == shape, name
        assert torch.isfinite(getattr(out, name)).all(), name
    peak = _peak_rss_gib()  # process peak: an upper bound on what building + one forward needed
    print(
        f"\nfull-size DPMesh: {num_params / 1e6:.1f} M parameters, build {built - start:.1f} s, "
        f"build + forward {elapsed:.1f} s, peak RSS {peak:.2f} GiB"
    )
    assert peak < PEAK_RSS_LIMIT_GIB, f"peak RSS {peak:.2f} GiB >= {PEAK_RSS_LIMIT_GIB} GiB"
