"""``format=hmr2``: 4D-Humans / HMR 2.0 WebDataset tars, ``<key>.jpg`` + ``<key>.data.pyd`` per image.

Layout read by 4D-Humans' ``ImageDataset.load_tars_as_webdataset`` (``hmr2/datasets/image_dataset.py``): the tar is
decoded with ``.decode("rgb8").rename(jpg="jpg;jpeg;png")``, and ``data.pyd`` is a pickled list with one dict per
person, each split into its own training item. Per person (all numpy float32):

=================  ==========  ======================================================================
key                shape       value
=================  ==========  ======================================================================
``keypoints_2d``   (44, 3)     ``coco17_to_hmr44(keypoints_2d)``: x, y in full-image px, confidence
``keypoints_3d``   (44, 4)     zeros: no 3D keypoint supervision (the SMPL fit is the 3D label)
``center``         (2,)        centre of ``bbox_xyxy`` (px)
``scale``          (2,)        ``bbox_xyxy`` width, height x ``export.box_scale`` / 200 (the tight box at 1.0)
``body_pose``      (72,)       ``global_orient`` + ``body_pose`` (axis-angle, rad)
``betas``          (10,)       ``betas``
``has_body_pose``  scalar      1.0 for gold / silver, 0.0 for bronze (``records.smpl_supervised``)
``has_betas``      scalar      same as ``has_body_pose``
``personid``       int         ``person_idx``
``extra_info``     dict        ids, tier, confidence, lineage / occlusion columns when present
=================  ==========  ======================================================================

Member names are image keys the job has checked (one plain segment; the tar builder refuses any other), and no
value is NaN or inf: rows with one in a value above never reach the writer (:mod:`pipelines.export.checks`) and
non-finite metadata is left out of ``extra_info``.

``extra_info`` has no ``fitting_loss``: the loader's reprojection filter then keeps every person (our reprojection
error is not in ProHMR's units). The image is the upright JPEG (EXIF baked), never the tar's original bytes.

**A pickle every numpy reads.** ``data.pyd`` holds only numpy arrays, numpy float32 scalars and Python builtins, so it
loads without this project installed, and it names no module that numpy 1.x lacks: numpy 2 pickles an array as
``numpy._core.multiarray._reconstruct`` and a scalar as ``numpy._core.multiarray.scalar``, which numpy before 1.26
cannot import (``No module named 'numpy._core'``; CameraHMR's environment pins numpy 1.23.5). :func:`dumps` writes an
array as ``numpy.ndarray((0,), "b")`` followed by ``ndarray.__setstate__`` with the array's documented state tuple
(what numpy's own reduction does after its ``_reconstruct``, which is ``ndarray.__new__``), and a scalar as
``numpy.float32(value)``; the dtype inside the state pickles as ``numpy.dtype`` as always. So the only globals are
``numpy.ndarray``, ``numpy.dtype`` and ``numpy.<scalar type>``, present under those names in numpy 1.x and 2.x, and the
values read back are what ``pickle.dumps`` wrote before: same dtypes, shapes, bytes, writeable arrays, float32
scalars.
"""

import io
import pickle
from typing import Any

import numpy as np

from pipelines.export.formats.base import TarShardWriter
from pipelines.export.joints44 import N_HMR44
from pipelines.export.records import ExportImage, ExportPerson


PICKLE_PROTOCOL = 4  # Python >= 3.4, the protocol 4D-Humans' environments read; protocol 5 adds nothing here

# Scalar types pickled as ``numpy.<name>(value)``: their names are the same in numpy 1.x and 2.x and ``.item()`` is
# exact for them (a Python float holds any float16/32/64, a Python int any of these ints). ``numpy.bool_`` is named
# ``bool`` in numpy 2, a name numpy 1.24-1.26 lacks; it and every other scalar type are refused, never approximated.
_PORTABLE_SCALARS = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
)
_EMPTY_SHAPE = (0,)
_EMPTY_DTYPE = "b"  # the placeholder ``ndarray.__setstate__`` replaces: numpy's own reduction uses the same


class _PortablePickler(pickle.Pickler):
    """A pickler whose numpy arrays and scalars name only globals numpy 1.x and 2.x both have (module docstring)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return _array_reduction(obj)
        if isinstance(obj, np.generic):
            return _scalar_reduction(obj)
        return NotImplemented  # builtins (dict, list, str, int, float) and numpy.dtype: pickle's own reduction


def _array_reduction(array: np.ndarray) -> tuple[Any, ...]:
    """``(numpy.ndarray, ((0,), "b"), state)``: an empty array, then ``ndarray.__setstate__(state)`` with
    ``state = (1, shape, dtype, is_fortran, raw bytes)``, the tuple the numpy docs give for ``__setstate__``."""
    if type(array) is not np.ndarray or array.dtype.hasobject or array.dtype.fields is not None:
        raise pickle.PicklingError(
            f"data.pyd holds plain numeric arrays only, not a {type(array).__name__} of {array.dtype}"
        )
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
    state = (1, array.shape, array.dtype, fortran, array.tobytes(order="F" if fortran else "C"))
    return np.ndarray, (_EMPTY_SHAPE, _EMPTY_DTYPE), state


def _scalar_reduction(scalar: np.generic) -> tuple[Any, ...]:
    """``(numpy.<type>, (value,))`` for the scalar types of :data:`_PORTABLE_SCALARS`."""
    name = type(scalar).__name__
    if name not in _PORTABLE_SCALARS or getattr(np, name, None) is not type(scalar):
        raise pickle.PicklingError(f"data.pyd holds numeric numpy scalars only, not a {name}")
    return type(scalar), (scalar.item(),)


def dumps(value: Any) -> bytes:
    """``value`` pickled so that numpy 1.x and 2.x both load it (module docstring)."""
    buffer = io.BytesIO()
    _PortablePickler(buffer, protocol=PICKLE_PROTOCOL).dump(value)
    return buffer.getvalue()


def person_dict(person: ExportPerson, box_scale: float = 1.0) -> dict[str, Any]:
    """One entry of ``data.pyd`` (see the module docstring); ``box_scale``: ``export.box_scale``."""
    has = np.float32(1.0 if person.has_smpl else 0.0)
    return {
        "keypoints_2d": person.keypoints_44,
        "keypoints_3d": np.zeros((N_HMR44, 4), dtype=np.float32),
        "center": person.center,
        "scale": person.scale_wh(box_scale),
        "body_pose": person.pose72,
        "betas": person.betas.copy(),
        "has_body_pose": has,
        "has_betas": has,
        "personid": int(person.row["person_idx"]),
        "extra_info": person.extra(),
    }


class Hmr2Writer(TarShardWriter):
    """Writes ``<output>/<shard>.tar``: per image ``<key>.jpg`` and ``<key>.data.pyd``."""

    def add(self, image: ExportImage) -> None:
        self.tar.add(f"{image.image_key}.jpg", image.jpeg)
        people = [person_dict(p, self.options.box_scale) for p in image.persons]
        self.tar.add(f"{image.image_key}.data.pyd", dumps(people))
