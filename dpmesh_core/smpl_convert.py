"""Convert an official SMPL `.pkl` (chumpy objects, scipy sparse) to a plain `.npz` without executing code.

A restricted unpickler resolves only a fixed allow-list of globals: numpy array reconstruction, scipy sparse
matrices (rebuilt from their raw arrays, scipy not needed) and chumpy classes, which are replaced by stand-ins that
keep their array (`x`, `a`, or `r`). Any other global raises `pickle.UnpicklingError`.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("__builtin__", "object"),  # base-class argument of copyreg._reconstructor
    ("builtins", "object"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}
SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


class _ChumpyStandIn:
    """Receives a chumpy object's pickled `__dict__`; `array()` returns its value."""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    def array(self) -> np.ndarray:
        for name in ("x", "a", "r"):
            value = self.state.get(name)
            if isinstance(value, np.ndarray):
                return value
            if isinstance(value, _ChumpyStandIn):
                return value.array()
        raise pickle.UnpicklingError(f"chumpy object without array data (fields {sorted(self.state)})")


class _SparseStandIn:
    """Receives a scipy sparse matrix's `__dict__` (csc/csr/coo) and densifies it with numpy."""

    kind = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    def array(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape") or s.get("shape") or ())
        dense = np.zeros(shape, dtype=np.float64)
        if self.kind == "coo":
            dense[s["row"], s["col"]] = s["data"]
            return dense
        indptr, indices, data = s["indptr"], s["indices"], s["data"]
        for outer in range(len(indptr) - 1):
            inner = indices[indptr[outer] : indptr[outer + 1]]
            values = data[indptr[outer] : indptr[outer + 1]]
            if self.kind == "csc":
                dense[inner, outer] = values
            else:
                dense[outer, inner] = values
        return dense


class _CscStandIn(_SparseStandIn):
    kind = "csc"


class _CsrStandIn(_SparseStandIn):
    kind = "csr"


class _CooStandIn(_SparseStandIn):
    kind = "coo"


_SPARSE = {"csc": _CscStandIn, "csr": _CsrStandIn, "coo": _CooStandIn}
_STAND_INS: tuple[type, ...] = (_ChumpyStandIn, _SparseStandIn)


class RestrictedSMPLUnpickler(pickle.Unpickler):
    """Allows numpy reconstruction, scipy sparse and chumpy classes only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if module.startswith("chumpy"):
            return _ChumpyStandIn
        if module.startswith("scipy.sparse"):
            for kind, cls in _SPARSE.items():
                if name.startswith(kind):
                    return cls
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _reconstructor
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in an SMPL model file")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """`copyreg._reconstructor` restricted to the stand-in classes (how protocol-2 pickles rebuild objects)."""
    if isinstance(cls, type) and issubclass(cls, _STAND_INS):
        return cls.__new__(cls)
    raise pickle.UnpicklingError(f"reconstruction of {cls!r} is not allowed")


def _to_array(value: Any) -> Any:
    if isinstance(value, (_ChumpyStandIn, _SparseStandIn)):
        return value.array()
    return value


def read_smpl_pickle(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read an SMPL `.pkl` safely and return plain arrays with smplx-style keys (`SMPL_KEYS`)."""
    with open(path, "rb") as handle:
        raw = RestrictedSMPLUnpickler(handle, encoding="latin1").load()
    if not isinstance(raw, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict at top level, got {type(raw).__name__}")
    missing = [k for k in SMPL_KEYS if k not in raw]
    if missing:
        raise KeyError(f"{path}: SMPL keys missing: {missing}")
    return {k: np.asarray(_to_array(raw[k])) for k in SMPL_KEYS}


def convert_smpl_pickle(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """`.pkl` → `.npz` (uncompressed, loadable with `np.load(dst)` without pickle)."""
    arrays = read_smpl_pickle(src)
    np.savez(dst, **arrays)  # type: ignore[arg-type]
    logger.info("converted %s -> %s (%d vertices)", src, dst, arrays["v_template"].shape[0])
