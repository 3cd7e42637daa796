"""Tiny random RT-DETR and ViTPose checkpoints, saved like real ones so the pipeline loads them the same way.

The classes, configs and image processors are the real ``transformers`` ones at tiny widths. Two biases are set
so that random weights still "find" people: the person logit is raised (every query is a confident person) and
the heatmap head's bias is raised (keypoint scores near 1), so detections reach DPMesh instead of all failing
the keypoint validity threshold; the box head's size bias is raised so boxes are not the tiny anchors.
"""

from pathlib import Path

import torch


DETECTOR_INPUT = 64  # square detector input (px)
POSE_INPUT_HW = (64, 48)  # ViTPose input (h, w)


def save_tiny_detector(path: str | Path, *, seed: int = 0, num_queries: int = 10, person_logit: float = 4.0) -> str:
    """A tiny ``RTDetrForObjectDetection`` with a ``person`` label and its image processor in ``path``."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    config = RTDetrConfig(
        backbone_config=backbone,
        d_model=32,
        encoder_hidden_dim=32,
        encoder_in_channels=[16, 24, 32],
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        decoder_in_channels=[32, 32, 32],
        encoder_layers=1,
        decoder_layers=1,
        num_queries=num_queries,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        decoder_n_points=2,
        num_denoising=0,
        anchor_image_size=None,
        id2label={0: "person", 1: "bicycle", 2: "car"},
        label2id={"person": 0, "bicycle": 1, "car": 2},
    )
    model = RTDetrForObjectDetection(config).eval()
    with torch.no_grad():
        for head in model.model.decoder.class_embed:
            head.bias.fill_(-4.0)
            head.bias[0] = person_logit
            head.weight.mul_(0.01)
        for head in model.model.decoder.bbox_embed:
            head.layers[-1].bias[2:] = 2.0  # boxes about a quarter of the image instead of the tiny anchors
    model.save_pretrained(str(path))
    RTDetrImageProcessor(size={"height": DETECTOR_INPUT, "width": DETECTOR_INPUT}).save_pretrained(str(path))
    return str(path)


def save_tiny_pose(path: str | Path, *, seed: int = 0, heatmap_bias: float = 0.9) -> str:
    """A tiny ``VitPoseForPoseEstimation`` (17 keypoints) and its image processor in ``path``."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        image_size=list(POSE_INPUT_HW),
        patch_size=[16, 16],
        out_indices=[1],
    )
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).eval()
    with torch.no_grad():
        conv = model.head.conv
        conv.bias.fill_(heatmap_bias)
        conv.weight.mul_(0.1)
    model.save_pretrained(str(path))
    height, width = POSE_INPUT_HW
    VitPoseImageProcessor(size={"height": height, "width": width}).save_pretrained(str(path))
    return str(path)
