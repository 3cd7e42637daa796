"""The 44-joint 2D keypoint vector of 4D-Humans (HMR 2.0) and CameraHMR, filled from our COCO-17 keypoints.

4D-Humans' ``keypoints_2d`` (``data.pyd``) and CameraHMR's ``gtkps`` are 44 rows of ``(x px, y px, confidence)``:
the 25 OpenPose BODY_25 joints, then 19 "ground-truth" joints of LSP / MPII / H36M (:data:`HMR44_JOINT_NAMES`,
the order of SPIN's ``JOINT_NAMES`` truncated to 44, which both projects' loaders and flip permutations assume).

Our labels carry COCO-17 keypoints (the DPMesh input: annotations or ViTPose). COCO-17 is what OpenPose BODY_25's
body joints were trained on, so each COCO joint fills its OpenPose slot (:data:`COCO17_TO_HMR44`); ``OP Neck`` and
``OP MidHip`` are the midpoints of the shoulders / hips with the smaller of the two confidences (OpenPose defines
them that way; a derived joint is no surer than its least sure parent). Every other slot (OpenPose feet and the 19
extra joints) is ``(0, 0, 0)``: confidence 0 is "missing" to both trainers, and we do not duplicate a COCO joint
into its LSP slot, which would count it twice in their keypoint losses.
"""

import numpy as np

from schemas import COCO17_KEYPOINT_NAMES


HMR44_JOINT_NAMES: tuple[str, ...] = (
    # 0-24: OpenPose BODY_25
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder", "OP LElbow", "OP LWrist",
    "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip", "OP LKnee", "OP LAnkle", "OP REye", "OP LEye",
    "OP REar", "OP LEar", "OP LBigToe", "OP LSmallToe", "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
    # 25-43: LSP-14, MPII pelvis / thorax, H36M spine / jaw / head
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle", "Right Wrist", "Right Elbow",
    "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist", "Neck (LSP)", "Top of Head (LSP)",
    "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)",
)  # fmt: skip
"""Order of ``keypoints_2d`` / ``keypoints_3d`` in 4D-Humans ``data.pyd`` and of ``gtkps`` in CameraHMR npz."""

N_HMR44 = len(HMR44_JOINT_NAMES)

COCO17_TO_HMR44: dict[str, str] = {
    "nose": "OP Nose",
    "left_eye": "OP LEye",
    "right_eye": "OP REye",
    "left_ear": "OP LEar",
    "right_ear": "OP REar",
    "left_shoulder": "OP LShoulder",
    "right_shoulder": "OP RShoulder",
    "left_elbow": "OP LElbow",
    "right_elbow": "OP RElbow",
    "left_wrist": "OP LWrist",
    "right_wrist": "OP RWrist",
    "left_hip": "OP LHip",
    "right_hip": "OP RHip",
    "left_knee": "OP LKnee",
    "right_knee": "OP RKnee",
    "left_ankle": "OP LAnkle",
    "right_ankle": "OP RAnkle",
}
"""Which 44-joint slot each COCO-17 keypoint fills (COCO names as in :data:`schemas.COCO17_KEYPOINT_NAMES`)."""

DERIVED_HMR44: dict[str, tuple[str, str]] = {
    "OP Neck": ("left_shoulder", "right_shoulder"),
    "OP MidHip": ("left_hip", "right_hip"),
}
"""44-joint slots filled with the midpoint of two COCO-17 keypoints (confidence: the smaller of the two)."""

_SRC = np.array([COCO17_KEYPOINT_NAMES.index(c) for c in COCO17_TO_HMR44])
_DST = np.array([HMR44_JOINT_NAMES.index(j) for j in COCO17_TO_HMR44.values()])


def coco17_to_hmr44(keypoints: np.ndarray) -> np.ndarray:
    """COCO-17 ``(..., 17, 3)`` (x px, y px, conf) -> 44 joints ``(..., 44, 3)`` float32, missing = ``(0, 0, 0)``.

    A COCO keypoint with confidence <= 0 or a non-finite coordinate is missing; its slot stays zero.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    present = (kp[..., 2] > 0) & np.isfinite(kp[..., :2]).all(axis=-1)
    clean = np.where(present[..., None], kp, 0.0).astype(np.float32)
    out = np.zeros((*kp.shape[:-2], N_HMR44, 3), dtype=np.float32)
    out[..., _DST, :] = clean[..., _SRC, :]
    for joint, (a, b) in DERIVED_HMR44.items():
        ia, ib = COCO17_KEYPOINT_NAMES.index(a), COCO17_KEYPOINT_NAMES.index(b)
        both = present[..., ia] & present[..., ib]
        mid = 0.5 * (clean[..., ia, :2] + clean[..., ib, :2])
        conf = np.minimum(clean[..., ia, 2], clean[..., ib, 2])
        out[..., HMR44_JOINT_NAMES.index(joint), :2] = np.where(both[..., None], mid, 0.0)
        out[..., HMR44_JOINT_NAMES.index(joint), 2] = np.where(both, conf, 0.0)
    return out
