"""Official checkpoint loading: full-size key coverage on meta tensors, and a real tiny file end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dpmesh_core.checkpoint import (
    Provenance,
    convert_official_state_dict,
    fold_lora,
    is_ignored,
)
from dpmesh_core.config import official_config, tiny_config
from dpmesh_core.errors import CheckpointKeyError
from dpmesh_core.loading import load_network_strict
from dpmesh_core.model import DPMesh
from tests.fakes.official_layout import KEYS_TSV, official_meta_state_dict, tiny_official_state_dict
from tests.fakes.tiny_dpmesh import build_tiny_dpmesh, tiny_inputs
from tests.fakes.tiny_smpl import make_fake_smpl_data


pytestmark = pytest.mark.skipif(not KEYS_TSV.is_file(), reason=f"{KEYS_TSV} not available")


@pytest.fixture(scope="module")
def meta_state() -> dict[str, torch.Tensor]:
    return official_meta_state_dict()


def _meta_model() -> DPMesh:
    return DPMesh(official_config(), make_fake_smpl_data(), network_device="meta")


def test_full_size_keys_all_used_or_ignored(meta_state: dict[str, torch.Tensor]) -> None:
    assert len(meta_state) == 3573
    model = _meta_model()
    converted = convert_official_state_dict(meta_state, model.backbone)
    load_network_strict(model, converted.network, assign=True)
    assert len(converted.network) == len(model.network_state_dict())
    assert sorted(converted.smpl) == sorted(
        ["th_shapedirs", "th_posedirs", "th_v_template", "th_J_regressor", "th_weights", "th_faces"]
    )
    assert all(is_ignored(k) for k in converted.ignored)
    assert sum(k.startswith("backbone.sd_model.cond_stage_model.") for k in converted.ignored) == 197
    assert model.head.cascade_shape_out[1].weight.shape == (10, 266)
    assert model.backbone.controlnet.conv_in.weight.shape == (320, 34, 3, 3)


def test_unknown_key_is_named(meta_state: dict[str, torch.Tensor]) -> None:
    state = dict(meta_state)
    state["module.backbone.sd_model.control_model.input_hint_block.0.weight"] = torch.empty(16, 3, 3, 3, device="meta")
    with pytest.raises(CheckpointKeyError, match=re.escape("input_hint_block.0.weight")):
        convert_official_state_dict(state, _meta_model().backbone)
    state = dict(meta_state)
    state["module.head_extra.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointKeyError, match=re.escape("head_extra.weight")):
        convert_official_state_dict(state, _meta_model().backbone)


def test_missing_key_is_named(meta_state: dict[str, torch.Tensor]) -> None:
    state = dict(meta_state)
    del state["module.transformer.decoder.joint_img_regress.3.bias"]
    model = _meta_model()
    converted = convert_official_state_dict(state, model.backbone)
    with pytest.raises(CheckpointKeyError, match=re.escape("head.transformer.decoder.joint_img_regress.3.bias")):
        load_network_strict(model, converted.network, assign=True)


def test_incomplete_lora_triple_is_named(meta_state: dict[str, torch.Tensor]) -> None:
    state = dict(meta_state)
    block = "module.backbone.sd_model.model.diffusion_model.input_blocks.1.1.transformer_blocks.0"
    key = f"{block}.attn1.to_q.lora_down.weight"
    del state[key]
    with pytest.raises(CheckpointKeyError, match=re.escape("attn1.to_q")):
        convert_official_state_dict(state, _meta_model().backbone)


def test_fold_lora_math() -> None:
    gen = torch.Generator().manual_seed(0)
    linear, bias = torch.randn(5, 4, generator=gen), torch.randn(5, generator=gen)
    up, down = torch.randn(5, 2, generator=gen), torch.randn(2, 4, generator=gen)
    state = {"x.linear.weight": linear, "x.linear.bias": bias, "x.lora_up.weight": up, "x.lora_down.weight": down}
    folded = fold_lora(state, Provenance())
    assert sorted(folded) == ["x.bias", "x.weight"]
    x = torch.randn(3, 4, generator=gen)
    torch.testing.assert_close(x @ folded["x.weight"].T + folded["x.bias"], x @ linear.T + bias + (x @ down.T) @ up.T)


def test_tiny_official_layout_end_to_end(tmp_path: Path) -> None:
    model = build_tiny_dpmesh(seed=2)
    path = tmp_path / "tiny_best_ckpt.pth.tar"
    torch.save(tiny_official_state_dict(model), path)
    loaded = DPMesh.from_official_checkpoint(path, config=tiny_config())
    assert loaded.model_id.startswith("sha256:")
    inputs = tiny_inputs(batch=2)
    with torch.inference_mode():
        a, b = model(**inputs), loaded(**inputs)
    for name in ("smpl_pose", "smpl_shape", "cam_trans", "joint_img", "vertices"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(loaded.body_model.data.v_template, model.body_model.data.v_template)
