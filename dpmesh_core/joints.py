"""Joint sets of DPMesh (common/utils/smpl.py:43-71, dataloader/PW3D.py:56-91) and conversions between them."""

from __future__ import annotations

import numpy as np

from schemas.annotations import COCO17_KEYPOINT_NAMES


# The 30-joint extended SMPL set: heatmap channels, keypoint tokens and attention-map channels follow this order.
SMPL30_JOINTS: tuple[str, ...] = (
    "Pelvis", "L_Hip", "R_Hip", "Torso", "L_Knee", "R_Knee", "Spine", "L_Ankle", "R_Ankle", "Chest", "L_Toe",
    "R_Toe", "Neck", "L_Thorax", "R_Thorax", "Head", "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist",
    "R_Wrist", "L_Hand", "R_Hand", "Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "Head_top",
)  # fmt: skip
SMPL24_JOINTS: tuple[str, ...] = SMPL30_JOINTS[:24]
# Order of the decoder's `joint_img` (smpl.py:60).
GRAPH15_JOINTS: tuple[str, ...] = (
    "Pelvis", "L_Hip", "R_Hip", "L_Knee", "R_Knee", "L_Ankle", "R_Ankle", "Neck", "Head_top", "L_Shoulder",
    "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist", "R_Wrist",
)  # fmt: skip


def _dpmesh_joint_name(coco_name: str) -> str:
    """COCO's keypoint name in DPMesh's spelling: `left_shoulder` -> `L_Shoulder`, `nose` -> `Nose`."""
    side, _, part = coco_name.partition("_")
    if side in ("left", "right"):
        return f"{side[0].upper()}_{part.capitalize()}"
    return coco_name.capitalize()


# The COCO-17 order has one home, the `keypoints_2d` column contract (`schemas.annotations`); here in DPMesh's names.
COCO17_JOINTS: tuple[str, ...] = tuple(_dpmesh_joint_name(name) for name in COCO17_KEYPOINT_NAMES)
OPENPOSE18_JOINTS: tuple[str, ...] = (
    "Nose", "Neck", "R_Shoulder", "R_Elbow", "R_Wrist", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Hip", "R_Knee",
    "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "R_Eye", "L_Eye", "R_Ear", "L_Ear",
)  # fmt: skip
# Mesh vertices used as nose, L/R eye, L/R ear (smpl.py:26-32).
FACE_VERTEX_IDS: tuple[int, ...] = (331, 2802, 6262, 3489, 3990)
# Standard SMPL kinematic tree (parent of each of the 24 joints; -1 = root). Not stored in DPMesh checkpoints.
SMPL_PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

GRAPH15_FROM_SMPL30: tuple[int, ...] = tuple(SMPL30_JOINTS.index(n) for n in GRAPH15_JOINTS)
# COCO-17 from the 30-joint regressed set: face from the mesh vertices, body from the SMPL joints.
COCO17_FROM_SMPL30: tuple[int, ...] = tuple(SMPL30_JOINTS.index(n) for n in COCO17_JOINTS)


def _append_midpoint(joints: np.ndarray, names: tuple[str, ...], left: str, right: str) -> np.ndarray:
    """Mean of two joints with confidence = product of their confidences (PW3D.py:71-91)."""
    a, b = joints[names.index(left)], joints[names.index(right)]
    mid = (a + b) * 0.5
    mid[2] = a[2] * b[2]
    return np.concatenate([joints, mid[None]], axis=0)


def convert_joints(joints: np.ndarray, src_names: tuple[str, ...], dst_names: tuple[str, ...]) -> np.ndarray:
    """Copy joints by name into `dst_names` order, zeros elsewhere (transforms.py:59-70).

    `(J_src, C)` → `(J_dst, C)` float32.
    """
    out = np.zeros((len(dst_names), *joints.shape[1:]), dtype=np.float32)
    for i, name in enumerate(src_names):
        if name in dst_names:
            out[dst_names.index(name)] = joints[i]
    return out


def coco17_to_smpl30(keypoints: np.ndarray) -> np.ndarray:
    """COCO-17 `(17, 3)` (x, y, conf) → 30-joint set `(30, 3)`, adding Pelvis (hips) and Neck (shoulders)."""
    kp = _append_midpoint(keypoints.astype(np.float32), COCO17_JOINTS, "L_Hip", "R_Hip")
    kp = _append_midpoint(kp, (*COCO17_JOINTS, "Pelvis"), "L_Shoulder", "R_Shoulder")
    return convert_joints(kp, (*COCO17_JOINTS, "Pelvis", "Neck"), SMPL30_JOINTS)


def openpose18_to_smpl30(keypoints: np.ndarray) -> np.ndarray:
    """OpenPose-18 `(18, 3)` → 30-joint set `(30, 3)`, adding Pelvis (mean of hips, conf product)."""
    kp = _append_midpoint(keypoints.astype(np.float32), OPENPOSE18_JOINTS, "L_Hip", "R_Hip")
    return convert_joints(kp, (*OPENPOSE18_JOINTS, "Pelvis"), SMPL30_JOINTS)
