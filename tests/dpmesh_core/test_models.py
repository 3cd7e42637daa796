"""Tiny configuration: size, shapes, determinism, save/load round trip, lazy import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from dpmesh_core.config import DPMeshConfig, official_config, tiny_config
from dpmesh_core.model import DPMesh
from dpmesh_core.models.attention_capture import ATTN8_LAYERS, ATTN16_LAYERS, AttentionMapCaptureProcessor
from dpmesh_core.models.forward_capture import record_intermediates
from tests.fakes.tiny_dpmesh import build_tiny_dpmesh, tiny_inputs


def test_tiny_stays_tiny() -> None:
    """The tiny model is what every CPU test builds, often once per test: it must stay a few million parameters
    (4.8 M today) so building it stays cheap. A size bound, not a wall-clock one, so a busy machine cannot fail it."""
    model = DPMesh.tiny(seed=0)
    num_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < num_params < 8_000_000


def test_tiny_forward_shapes() -> None:
    model = build_tiny_dpmesh()
    with torch.inference_mode(), record_intermediates() as last:
        out = model(**tiny_inputs(batch=2))
    n = model.body_model.data.num_vertices
    expected = {"smpl_pose": (2, 72), "smpl_shape": (2, 10), "cam_trans": (2, 3), "joint_img": (2, 15, 3),
                "vertices": (2, n, 3), "joints30": (2, 30, 3), "joint_proj": (2, 30, 2), "pose_latent": (2, 32),
                "smpl_joints15_img": (2, 15, 2)}  # fmt: skip
    for name, shape in expected.items():
        assert tuple(getattr(out, name).shape) == shape, name
        assert torch.isfinite(getattr(out, name)).all(), name
    assert ((out.joint_img >= 0) & (out.joint_img <= 1)).all()
    assert (out.smpl_pose[:, 66:] == 0).all()  # hands are zero
    assert last["f16a"].shape[1] == 64 + 30
    assert last["f8a"].shape[1] == 64 + 30


def test_only_ten_layers_capture_attention() -> None:
    procs = build_tiny_dpmesh().backbone.unet.attn_processors
    capturing = {k for k, v in procs.items() if isinstance(v, AttentionMapCaptureProcessor)}
    assert len(capturing) == 10
    assert {k.split(".transformer_blocks")[0] for k in capturing} == set(ATTN16_LAYERS + ATTN8_LAYERS)


def test_attention_maps_are_distributions() -> None:
    model = build_tiny_dpmesh()
    with torch.inference_mode(), record_intermediates() as last:
        model(**tiny_inputs(batch=2))
    attn16 = last["f16a"][:, -30:]
    torch.testing.assert_close(attn16.sum(1), torch.ones_like(attn16[:, 0]), atol=1e-5, rtol=0)


def test_determinism_with_seed() -> None:
    inputs = tiny_inputs(batch=2, seed=3)
    with torch.inference_mode():
        a = build_tiny_dpmesh(seed=1)(**inputs)
        b = build_tiny_dpmesh(seed=1)(**inputs)
    assert torch.equal(a.smpl_pose, b.smpl_pose)
    assert torch.equal(a.vertices, b.vertices)


def test_per_sample_focal() -> None:
    model = build_tiny_dpmesh()
    inputs = tiny_inputs(batch=2)
    inputs["focal"] = torch.tensor([1000.0, 2000.0])
    with torch.inference_mode():
        out = model(**inputs)
        single = model(**{k: v[1:] for k, v in inputs.items()})
    torch.testing.assert_close(out.cam_trans[1:], single.cam_trans, atol=1e-5, rtol=1e-5)


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    model = build_tiny_dpmesh()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "smpl.safetensors"]
    loaded = DPMesh.from_pretrained(tmp_path)
    assert loaded.model_id == model.model_id
    inputs = tiny_inputs(batch=2)
    with torch.inference_mode():
        a, b = model(**inputs), loaded(**inputs)
    for name in ("smpl_pose", "smpl_shape", "cam_trans", "joint_img", "vertices"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_config_round_trip() -> None:
    for cfg in (official_config(), tiny_config()):
        assert DPMeshConfig.from_dict(cfg.to_dict()) == cfg
    assert official_config().fused_channels == 3580


def test_import_is_lazy() -> None:
    code = "import sys, dpmesh_core, dpmesh_core.preprocessing, dpmesh_core.joints; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_predict_full_image() -> None:
    import numpy as np

    model = build_tiny_dpmesh()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    kps = np.zeros((2, 17, 3), dtype=np.float32)
    kps[..., 0] = rng.uniform(100, 200, (2, 17))
    kps[..., 1] = rng.uniform(40, 200, (2, 17))
    kps[..., 2] = 0.9
    people = model.predict(image, kps)
    assert len(people) == 2
    person = people[0]
    assert person.body_pose.shape == (69,)
    assert person.joints_3d.shape == (24, 3)
    assert person.joints_2d_proj.shape == (17, 2)
    assert person.vposer_z.shape == (32,)
    np.testing.assert_allclose(person.principal_point, [160, 120])
    assert person.focal_length == 400.0
