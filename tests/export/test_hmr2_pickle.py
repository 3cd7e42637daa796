"""``format=hmr2``'s ``data.pyd`` loads on numpy 1.x and 2.x: the pickle names only globals numpy 1.23 has (read from
its opcodes and by a loader that admits nothing else), and every value reads back as ``pickle.dumps`` wrote it
before (types, dtypes, shapes, bytes, writeable arrays).

The opt-in slow test loads an export's pickles in a real numpy 1.x interpreter: set ``DPMESH_NUMPY1_PYTHON`` to a
Python with numpy < 1.26 (and nothing of this project), e.g. a throwaway venv with ``numpy==1.23.5``.
"""

import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.config import ExportJobConfig, compose_config
from pipelines.export.formats.hmr2 import dumps, person_dict
from pipelines.export.job import run as export
from pipelines.export.records import ExportPerson
from tests.fakes.corpus import make_images
from tests.fakes.shard_set import label_shards, shard_annotated


# What the pickle may name: present under these names in numpy 1.23 and every numpy 2.x.
NUMPY_1_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy", "float32")}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every ``(module, name)`` a pickle's GLOBAL / STACK_GLOBAL opcodes resolve, read with ``pickletools.genops``.

    STACK_GLOBAL takes the two values pushed last, which a pickler writes right before it (strings, or memo gets of
    strings memoized earlier): pushes are tracked, pops are not needed for that.
    """
    found: set[tuple[str, str]] = set()
    pushed: list[Any] = []
    memo: list[Any] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, name = str(arg).split(" ", 1)
            found.add((module, name))
            pushed.append(("global", module, name))
        elif op.name == "STACK_GLOBAL":
            module, name = pushed[-2], pushed[-1]
            assert isinstance(module, str), "STACK_GLOBAL of a module that is not text"
            assert isinstance(name, str), "STACK_GLOBAL of a name that is not text"
            found.add((module, name))
            pushed.append(("global", module, name))
        elif op.name in _STRING_OPS:
            pushed.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo[int(arg)])
        elif op.name == "MEMOIZE":
            memo.append(pushed[-1])
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            raise AssertionError("protocol 4 memoizes with MEMOIZE")
        elif op.stack_after:
            pushed.append(object())  # any other value: never a module or a name
    return found


class _Numpy1Globals(pickle.Unpickler):
    """Loads a pickle only if every global it names is one of :data:`NUMPY_1_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in NUMPY_1_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not a global numpy 1.23 has")
        return super().find_class(module, name)


def _load_numpy1(data: bytes) -> Any:
    return _Numpy1Globals(io.BytesIO(data)).load()


def assert_same_value(got: Any, want: Any, where: str = "value") -> None:
    """Equal values of the same types: arrays by class, dtype, shape, bytes, memory order and writeability."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert got.tobytes() == want.tobytes(), where
        assert got.flags.f_contiguous == want.flags.f_contiguous, where
        assert got.flags.writeable, where
        assert want.flags.writeable, where
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype, where
        assert got.tobytes() == want.tobytes(), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            assert_same_value(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_value(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def _person(tier: str, seed: int) -> ExportPerson:
    """A person with every value an ``hmr2`` person dict is made from (the row's ids and metadata included)."""
    rng = np.random.default_rng(seed)
    keypoints = np.concatenate([rng.uniform(5, 200, (17, 2)), rng.choice([0.0, 0.4, 1.0], (17, 1))], axis=1)
    row = {
        "sample_id": f"k{seed}_p0", "image_key": f"k{seed}", "person_idx": 0, "shard": "shard-000000",
        "source_uri": f"s3://b/k{seed}.jpg", "quality_tier": tier, "confidence": 0.75, "model_id": "m",
        "occlusion_level": "partial", "crowding_iou": float("nan"),  # non-finite metadata is left out
    }  # fmt: skip
    return ExportPerson(
        row=row,
        keypoints_2d=keypoints.astype(np.float32),
        bbox_xyxy=np.array([10.5, 20.25, 110.0, 220.75], np.float32),
        crop_bbox_xywh=np.array([0, 0, 240, 240], np.float32),
        global_orient=rng.normal(size=3).astype(np.float32),
        body_pose=rng.normal(size=69).astype(np.float32),
        betas=rng.normal(size=10).astype(np.float32),
        transl=rng.normal(size=3).astype(np.float32),
        focal_length=500.0,
        principal_point=np.array([100, 120], np.float32),
    )


def test_person_dicts_name_only_numpy_1_globals_and_read_back_as_before() -> None:
    people = [person_dict(_person("gold", 1)), person_dict(_person("bronze", 2), box_scale=1.2)]
    data = dumps(people)
    assert pickle_globals(data) == NUMPY_1_GLOBALS
    assert b"numpy._core" not in data
    assert b"_reconstruct" not in data
    plain = pickle.dumps(people, protocol=4)  # what the writer pickled until now
    assert ("numpy._core.multiarray", "_reconstruct") in pickle_globals(plain)  # the scan sees what numpy 1.x lacks
    before = pickle.loads(plain)
    assert_same_value(_load_numpy1(data), before)
    assert_same_value(pickle.loads(data), people)


def test_arrays_and_scalars_of_every_layout_read_back_as_numpy_pickles_them() -> None:
    fortran = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    value = {
        "fortran": fortran,
        "large": np.linspace(0, 1, 5000, dtype=np.float32),  # numpy keeps large buffers by reference: still writeable
        "empty": np.zeros((0, 3), np.float32),
        "zero_d": np.array(2.5, np.float32),
        "big_endian": np.arange(4, dtype=">i4"),
        "ints": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "view": np.arange(10, dtype=np.int64)[::3],
        "scalars": [np.float32(-0.0), np.float64(1e-300), np.int64(-(2**62)), np.uint16(7), np.float16(0.1)],
        "builtins": {"a": [1, 2.5, "x", None, True], "b": (1, 2)},
    }
    data = dumps(value)
    globals_named = pickle_globals(data)
    assert {module for module, _ in globals_named} == {"numpy"}
    assert globals_named >= {("numpy", "ndarray"), ("numpy", "dtype")}
    assert_same_value(pickle.loads(data), pickle.loads(pickle.dumps(value, protocol=4)))


@pytest.mark.parametrize(
    "value",
    [
        np.array([{"a": 1}], dtype=object),
        np.zeros(2, dtype=[("x", np.float32), ("y", np.int8)]),
        np.bool_(True),  # numpy 2 names it numpy.bool, which numpy 1.24-1.26 lacks
        np.longdouble(1.0),
        np.arange(3).view(type("Sub", (np.ndarray,), {})),
    ],
    ids=["object", "structured", "bool", "longdouble", "subclass"],
)
def test_values_no_numpy_1_could_read_as_written_are_refused(value: Any) -> None:
    with pytest.raises(pickle.PicklingError, match=r"data\.pyd holds"):
        dumps({"v": value})


_NUMPY1_PYTHON = os.environ.get("DPMESH_NUMPY1_PYTHON")
# Run with ``python -I``: no PYTHONPATH, no working folder on the path, so nothing of this project can be imported.
_LOADER = """
import glob, hashlib, json, pickle, sys, tarfile
import numpy as np
out = {}
for path in sorted(glob.glob(sys.argv[1] + "/shard-*.tar")):
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith(".data.pyd"):
                people = pickle.loads(tar.extractfile(member).read())
                out[member.name] = [
                    {k: [type(v).__name__, str(getattr(v, "dtype", "")), list(getattr(v, "shape", ())),
                         hashlib.sha1(v.tobytes()).hexdigest() if hasattr(v, "tobytes") else repr(v)]
                     for k, v in sorted(p.items())}
                    for p in people
                ]
print(json.dumps({"numpy": np.__version__, "pickles": out}, sort_keys=True))
"""


def _load_with(python: str, folder: Path) -> dict[str, Any]:
    done = subprocess.run([python, "-I", "-c", _LOADER, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


@pytest.mark.slow
@pytest.mark.skipif(not _NUMPY1_PYTHON, reason="set DPMESH_NUMPY1_PYTHON to a Python with numpy < 1.26")
def test_an_hmr2_export_loads_under_a_real_numpy_1(tmp_path: Path) -> None:
    shards = shard_annotated(tmp_path, make_images(3, seed=3, width=120, height=90, persons=(1, 2)))
    label_shards(shards, tmp_path / "labels", "filter=off")
    out = tmp_path / "hmr2"
    keys = [f"input.labels={tmp_path / 'labels'}", f"input.shards={shards}", f"output={out}", "log_level=WARNING"]
    export(compose_config("dpmesh_export", keys, ExportJobConfig))
    old = _load_with(str(_NUMPY1_PYTHON), out)
    assert np.lib.NumpyVersion(old["numpy"]) < "1.26.0", "DPMESH_NUMPY1_PYTHON must have numpy < 1.26"
    assert old["pickles"], "the export holds data.pyd pickles"
    assert old["pickles"] == _load_with(sys.executable, out)["pickles"]
