"""`PersonPrediction`: one person's label in full-image coordinates, the record every consumer of predictions reads.

Numpy only, in its own module, so that scoring, Parquet writing and the pipeline's per-shard step can name it
without importing torch (the model is reached through a handler).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PersonPrediction:
    """One person in full-image coordinates (camera frame: OpenCV axes, metres; pixels of the full image).

    Attributes:
        global_orient: `(3,)`; body_pose: `(69,)` axis-angle; betas: `(10,)`.
        transl: `(3,)` full-image camera translation (principal point at the image centre).
        focal_length: px; principal_point: `(2,)` px (W/2, H/2).
        joints_3d: `(24, 3)` SMPL joints (regressed from the mesh) in the full-image camera frame.
        coco17_3d: `(17, 3)` COCO-17 joints from the mesh (face from vertices, body from SMPL joints).
        joints_2d_proj: `(17, 2)` `coco17_3d` reprojected in full-image px.
        vposer_z: `(32,)` VPoser latent; joint_img: `(15, 3)` decoder joints in [0, 1] of the crop;
        smpl_joints15_img: `(15, 2)` SMPL-derived joints in [0, 1] of the crop (same order as joint_img).
        crop_bbox_xywh: `(4,)` square crop box; cam_trans_crop: `(3,)` crop-camera translation.
        vertices: `(N, 3)` mesh in the full-image camera frame.
    """

    global_orient: np.ndarray
    body_pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    focal_length: float
    principal_point: np.ndarray
    joints_3d: np.ndarray
    coco17_3d: np.ndarray
    joints_2d_proj: np.ndarray
    vposer_z: np.ndarray
    joint_img: np.ndarray
    smpl_joints15_img: np.ndarray
    crop_bbox_xywh: np.ndarray
    cam_trans_crop: np.ndarray
    vertices: np.ndarray
