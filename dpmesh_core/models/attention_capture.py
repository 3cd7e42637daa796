"""Capture of head-averaged cross-attention probabilities in selected UNet layers.

The official backbone monkey-patches every ldm `CrossAttention` to compute `softmax(q kᵀ / sqrt(d))` explicitly and
keeps the head-averaged probabilities of the cross-attention layers whose query length is ≤ 16² (cldm/module_utils.py
27-90, 123-161). SDPA cannot return probabilities, so the 10 layers that the official code keeps get the processor
below; every other layer keeps diffusers' default (SDPA) processor.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from dpmesh_core.models.explicit_attention import ExplicitAttentionProcessor


# The 10 UNet cross-attention layers whose maps the official code averages (note §5.4). The 16×16 group is
# input_blocks 4,5 + output_blocks 6,7,8; the 8×8 group is input_blocks 7,8 + output_blocks 3,4,5.
ATTN16_LAYERS: tuple[str, ...] = (
    "up_blocks.2.attentions.0",
    "up_blocks.2.attentions.1",
    "up_blocks.2.attentions.2",
    "down_blocks.1.attentions.0",
    "down_blocks.1.attentions.1",
)
ATTN8_LAYERS: tuple[str, ...] = (
    "up_blocks.1.attentions.0",
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
    "down_blocks.2.attentions.0",
    "down_blocks.2.attentions.1",
)


def processor_name(layer: str) -> str:
    """diffusers processor key of the cross-attention (`attn2`) of a `Transformer2DModel` layer."""
    return f"{layer}.transformer_blocks.0.attn2.processor"


class AttentionMapCaptureProcessor(ExplicitAttentionProcessor):
    """Explicit-softmax cross-attention that records the probabilities averaged over heads.

    Computes exactly what diffusers' `AttnProcessor` computes for an SD-1.5 `attn2` (3-D hidden states, no group
    norm, no residual) and stores `probs.view(B, heads, N, M).mean(1)` of shape `(B, N, M)` (N = query tokens,
    M = context tokens) under `layer` in the current pass's `ForwardCapture.maps`.
    """

    def __init__(self, layer: str) -> None:
        super().__init__(layer=layer, keep_map=True, cross_only=True)

    def attend(
        self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """diffusers' own scores (`softmax(q kᵀ · d^-0.5)`, upcast as the layer says) in the model dtype."""
        probs = attn.get_attention_scores(query, key, None)  # (B·heads, N, M)
        return probs, torch.bmm(probs, value)


def install_capture(unet: Any) -> None:
    """Give the 10 layers of `ATTN16_LAYERS + ATTN8_LAYERS` a capture processor; keep the others untouched."""
    processors = dict(unet.attn_processors)
    for layer in ATTN16_LAYERS + ATTN8_LAYERS:
        name = processor_name(layer)
        if name not in processors:
            raise ValueError(f"UNet has no attention processor {name!r}: not the SD-1.5 block structure")
        processors[name] = AttentionMapCaptureProcessor(layer)
    unet.set_attn_processor(processors)


def averaged_map(maps: dict[str, torch.Tensor], layers: tuple[str, ...], size: int) -> torch.Tensor:
    """Mean over `layers` of one pass's captured maps (`ForwardCapture.maps`), as images.

    Returns:
        `torch.Tensor` of shape `(B, M, size, size)`: channel m is the attention paid to context token m
        (`'b (h w) c -> b c h w'` of cldm/module_utils.py:243-255).
    """
    missing = [layer for layer in layers if layer not in maps]
    if missing:
        raise RuntimeError(f"attention maps not captured for {missing}")
    mean = torch.stack([maps[layer] for layer in layers]).mean(0)  # (B, N, M)
    batch, tokens, channels = mean.shape
    if tokens != size * size:
        raise RuntimeError(f"expected {size}x{size} query tokens, got {tokens}")
    return mean.transpose(1, 2).reshape(batch, channels, size, size)
