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
``scale``          (2,)        ``bbox_xyxy`` width, height / 200
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
error is not in ProHMR's units). The pickle holds only numpy arrays and Python builtins, so it loads without this
project installed. The image is the upright JPEG (EXIF baked), never the tar's original bytes.
"""

import pickle
from typing import Any

import numpy as np

from pipelines.export.formats.base import TarShardWriter
from pipelines.export.joints44 import N_HMR44
from pipelines.export.records import ExportImage, ExportPerson


def person_dict(person: ExportPerson) -> dict[str, Any]:
    """One entry of ``data.pyd`` (see the module docstring)."""
    has = np.float32(1.0 if person.has_smpl else 0.0)
    return {
        "keypoints_2d": person.keypoints_44,
        "keypoints_3d": np.zeros((N_HMR44, 4), dtype=np.float32),
        "center": person.center,
        "scale": person.scale_wh,
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
        data = pickle.dumps([person_dict(p) for p in image.persons], protocol=4)
        self.tar.add(f"{image.image_key}.data.pyd", data)
