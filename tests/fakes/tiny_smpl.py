"""Synthetic SMPL data for tests (no licensed files) and a fake chumpy pickle writer."""

from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path

import numpy as np

from dpmesh_core.body_model import SMPLData
from dpmesh_core.synthetic import synthetic_smpl_data


def make_fake_smpl_data(num_vertices: int = 64, seed: int = 0) -> SMPLData:
    """Seeded synthetic SMPL arrays on `num_vertices` vertices."""
    return synthetic_smpl_data(num_vertices=num_vertices, seed=seed)


def _fake_chumpy_module() -> types.ModuleType:
    module = types.ModuleType("chumpy.ch")

    class Ch:  # mimics chumpy.ch.Ch: its pickled state keeps the array under `x`
        def __init__(self, x: np.ndarray) -> None:
            self.x = x

        def __reduce_ex__(self, protocol: int) -> tuple[object, ...]:
            import copyreg

            return (copyreg._reconstructor, (type(self), object, None), self.__dict__)  # type: ignore[attr-defined]

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    module.Ch = Ch  # type: ignore[attr-defined]
    return module


class _SparseCSC:
    """Pickles like a `scipy.sparse.csc_matrix` (module/class name and `__dict__` fields)."""

    def __init__(self, dense: np.ndarray) -> None:
        cols = [np.nonzero(dense[:, c])[0] for c in range(dense.shape[1])]
        self.indices = np.concatenate(cols).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
        self.data = np.concatenate([dense[c, i] for i, c in enumerate(cols)]).astype(np.float64)
        self._shape = dense.shape
        self.maxprint = 50

    def __reduce_ex__(self, protocol: int) -> tuple[object, ...]:
        import copyreg

        return (copyreg._reconstructor, (type(self), object, None), self.__dict__)  # type: ignore[attr-defined]


_SparseCSC.__module__ = "scipy.sparse._csc"
_SparseCSC.__qualname__ = "csc_matrix"
_SparseCSC.__name__ = "csc_matrix"


def write_fake_official_pickle(path: Path, data: SMPLData) -> None:
    """Write `data` like an official SMPL `.pkl`: chumpy `Ch` arrays, a csc `J_regressor`, protocol 2."""
    chumpy_ch = _fake_chumpy_module()
    scipy_csc = types.ModuleType("scipy.sparse._csc")
    scipy_csc.csc_matrix = _SparseCSC  # type: ignore[attr-defined]
    saved = {
        name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch", "scipy", "scipy.sparse", "scipy.sparse._csc")
    }
    fakes = {"chumpy": types.ModuleType("chumpy"), "chumpy.ch": chumpy_ch, "scipy": types.ModuleType("scipy"),
             "scipy.sparse": types.ModuleType("scipy.sparse"), "scipy.sparse._csc": scipy_csc}  # fmt: skip
    sys.modules.update(fakes)
    try:
        parents = [4294967295, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
        kintree = np.stack([np.array(parents), np.arange(24)]).astype(np.uint32)
        payload = {
            "v_template": chumpy_ch.Ch(data.v_template.astype(np.float64)),
            "shapedirs": chumpy_ch.Ch(data.shapedirs.astype(np.float64)),
            "posedirs": data.posedirs.astype(np.float64),
            "J_regressor": _SparseCSC(data.J_regressor.astype(np.float64)),
            "weights": chumpy_ch.Ch(data.weights.astype(np.float64)),
            "kintree_table": kintree,
            "f": data.faces.astype(np.uint32),
            "bs_type": "lrotmin",
        }
        buffer = io.BytesIO()
        pickle.dump(payload, buffer, protocol=2)
        path.write_bytes(buffer.getvalue())
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
