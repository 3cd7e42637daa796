"""Body model from checkpoint-style buffers, and the restricted SMPL pickle converter."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmesh_core.body_model import BodyModel, SMPLData, regressor30
from dpmesh_core.smpl_convert import convert_smpl_pickle, read_smpl_pickle
from tests.fakes.tiny_smpl import make_fake_smpl_data, write_fake_official_pickle


def test_body_model_from_checkpoint_buffers() -> None:
    data = make_fake_smpl_data(num_vertices=50)
    buffers = {
        "th_v_template": torch.from_numpy(data.v_template)[None], "th_shapedirs": torch.from_numpy(data.shapedirs),
        "th_posedirs": torch.from_numpy(data.posedirs), "th_J_regressor": torch.from_numpy(data.J_regressor),
        "th_weights": torch.from_numpy(data.weights), "th_faces": torch.from_numpy(data.faces),
    }  # fmt: skip
    model = BodyModel(SMPLData.from_checkpoint_buffers(buffers))
    pose, betas = torch.zeros(2, 72), torch.zeros(2, 10)
    transl = torch.tensor([[0.0, 0, 5], [1, 2, 3]])
    verts = model(pose, betas, transl)
    torch.testing.assert_close(verts, torch.from_numpy(data.v_template)[None] + transl[:, None])
    joints = model.joints30(verts)
    assert joints.shape == (2, 30, 3)
    torch.testing.assert_close(joints[:, :24], torch.einsum("jn,bnc->bjc", torch.from_numpy(data.J_regressor), verts))


def test_regressor30_rows_sum_to_one() -> None:
    reg = regressor30(make_fake_smpl_data(num_vertices=40))
    np.testing.assert_allclose(reg.sum(1), np.ones(30), rtol=1e-5)


def test_converter_reads_fake_chumpy_pickle(tmp_path: Path) -> None:
    data = make_fake_smpl_data(num_vertices=30, seed=4)
    pkl = tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
    write_fake_official_pickle(pkl, data)
    arrays = read_smpl_pickle(pkl)
    np.testing.assert_allclose(arrays["v_template"], data.v_template, rtol=1e-6)
    np.testing.assert_allclose(arrays["J_regressor"], data.J_regressor, rtol=1e-6)
    assert arrays["kintree_table"].shape == (2, 24)
    npz = tmp_path / "smpl_neutral.npz"
    convert_smpl_pickle(pkl, npz)
    loaded = SMPLData.from_arrays(dict(np.load(npz)))
    np.testing.assert_allclose(loaded.weights, data.weights, rtol=1e-6)


def test_converter_refuses_arbitrary_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        read_smpl_pickle(path)


def test_every_tool_reads_a_body_model_file_one_way(tmp_path: Path) -> None:
    """`.npz` and `.safetensors` give the same body; an object array (a pickle inside the npz) is refused."""
    from safetensors.numpy import save_file

    from dpmesh_core.body_model import read_smpl_arrays

    data = make_fake_smpl_data(num_vertices=30, seed=6)
    np.savez(tmp_path / "smpl.npz", **data.to_arrays())
    save_file({k: np.ascontiguousarray(v) for k, v in data.to_arrays().items()}, str(tmp_path / "smpl.safetensors"))
    for name in ("smpl.npz", "smpl.safetensors"):
        read = SMPLData.read(tmp_path / name)
        for key, value in data.to_arrays().items():
            np.testing.assert_array_equal(read.to_arrays()[key], value, err_msg=f"{name}: {key}")
    np.savez(tmp_path / "pickled.npz", v_template=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        SMPLData.read(tmp_path / "pickled.npz")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_smpl_arrays(b"not safetensors", "smpl.safetensors")
