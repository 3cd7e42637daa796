"""`dpmesh-convert` / `dpmesh-convert-smpl` end to end on a tiny checkpoint in the official layout, and error exits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpmesh_core.config import tiny_config
from dpmesh_core.convert import HEAD_TOP_ROW, convert_smpl_main, main
from dpmesh_core.model import DPMesh
from dpmesh_core.pretrained import CONFIG_NAME, SMPL_NAME, WEIGHTS_NAME
from tests.fakes.official_layout import tiny_official_state_dict
from tests.fakes.tiny_dpmesh import build_tiny_dpmesh, tiny_inputs
from tests.fakes.tiny_smpl import make_fake_smpl_data, write_fake_official_pickle


OUTPUTS = ("smpl_pose", "smpl_shape", "cam_trans", "joint_img", "vertices", "joints30")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny_best_ckpt.pth.tar"
    torch.save(tiny_official_state_dict(build_tiny_dpmesh(seed=4)), path)
    return path


def _run(model: DPMesh) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model(**tiny_inputs(batch=1, seed=1))
    return {name: getattr(out, name) for name in OUTPUTS}


def test_convert_end_to_end(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "converted"
    assert main([str(checkpoint), str(out_dir), "--config", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, SMPL_NAME])
    reference = DPMesh.from_official_checkpoint(checkpoint, config=tiny_config())
    converted = DPMesh.from_pretrained(out_dir)
    assert converted.model_id == reference.model_id
    assert reference.model_id in printed
    assert f"{sum(p.numel() for p in reference.parameters()):,}" in printed
    assert f"dpmesh-label model=dpmesh model.pretrained={out_dir}" in printed
    for name in (CONFIG_NAME, WEIGHTS_NAME, SMPL_NAME):
        assert name in printed
    ref_state, conv_state = reference.network_state_dict(), converted.network_state_dict()
    assert sorted(conv_state) == sorted(ref_state)
    for key, value in ref_state.items():
        assert torch.equal(conv_state[key], value), key  # the saved weights are bit-identical
    # outputs: equal up to float rounding (tensor layouts differ: mmap'd views vs contiguous safetensors)
    expected, actual = _run(reference), _run(converted)
    for name in OUTPUTS:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


def test_convert_with_smpl_npz_and_head_top(checkpoint: Path, tmp_path: Path) -> None:
    smpl = make_fake_smpl_data(num_vertices=40, seed=6)
    pkl, npz = tmp_path / "SMPL_NEUTRAL.pkl", tmp_path / "smpl_neutral.npz"
    write_fake_official_pickle(pkl, smpl)
    assert convert_smpl_main([str(pkl), str(npz)]) == 0
    extra = np.random.default_rng(0).dirichlet(np.ones(40), size=9).astype(np.float32)
    np.save(tmp_path / "J_regressor_extra.npy", extra)
    out_dir = tmp_path / "converted"
    argv = [str(checkpoint), str(out_dir), "--config", "tiny", "--smpl-npz", str(npz)]
    assert main([*argv, "--head-top-regressor", str(tmp_path / "J_regressor_extra.npy")]) == 0
    loaded = DPMesh.from_pretrained(out_dir)
    np.testing.assert_allclose(loaded.body_model.data.v_template, smpl.v_template, rtol=1e-6)
    head_top = loaded.body_model.data.head_top_regressor
    assert head_top is not None
    np.testing.assert_array_equal(head_top, extra[HEAD_TOP_ROW])
    torch.testing.assert_close(loaded.body_model.regressor30[-1], torch.from_numpy(extra[HEAD_TOP_ROW]))


def test_convert_error_exits(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing_best_ckpt.pth.tar"
    assert main([str(missing), str(tmp_path / "a")]) == 2
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main([str(checkpoint), str(busy), "--config", "tiny"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert main([str(checkpoint), str(busy), "--config", "tiny", "--overwrite"]) == 0
    assert (busy / WEIGHTS_NAME).is_file()

    argv = [str(checkpoint), str(tmp_path / "b"), "--config", "tiny"]
    assert main([*argv, "--smpl-npz", str(tmp_path / "nope.npz")]) == 2
    assert "SMPL .npz not found" in capsys.readouterr().err
    bad_row = tmp_path / "bad_head_top.npy"
    np.save(bad_row, np.ones((9, 7), np.float32))
    assert main([*argv, "--head-top-regressor", str(bad_row)]) == 2
    assert "J_regressor_extra" in capsys.readouterr().err


def test_convert_smpl_error_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert convert_smpl_main([str(tmp_path / "SMPL_NEUTRAL.pkl"), str(tmp_path / "out.npz")]) == 2
    assert "SMPL pickle not found" in capsys.readouterr().err
    pkl, npz = tmp_path / "SMPL_NEUTRAL.pkl", tmp_path / "out.npz"
    write_fake_official_pickle(pkl, make_fake_smpl_data(num_vertices=20))
    npz.write_bytes(b"")
    assert convert_smpl_main([str(pkl), str(npz)]) == 2
    assert "exists" in capsys.readouterr().err
    assert convert_smpl_main([str(pkl), str(npz), "--overwrite"]) == 0
    assert np.load(npz)["v_template"].shape == (20, 3)
