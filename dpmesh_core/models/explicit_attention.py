"""The base of DPMesh's attention processors that materialise the softmax probabilities.

Three processors compute attention explicitly (SDPA cannot return probabilities): the capture processor of the
10 map layers (`attention_capture.AttentionMapCaptureProcessor`), its fast-path variant with an fp32 core
(`fast_path.Float32MapCaptureProcessor`) and the official-execution processor (`reference_mode.ExplicitAttnProcessor`).
They share everything but the core: the input checks, the q/k/v projections, the head-averaged map and the output
step live here once; each subclass implements `attend` (`softmax(q kᵀ · d^-0.5)` and `probs · v` at its precision).
The maps go into the `ForwardCapture` of the pass that runs them (`forward_capture`), which the backbone reads after
the UNet pass: a processor is installed once on a shared module and keeps nothing itself.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from dpmesh_core.models.forward_capture import current_capture


class ExplicitAttentionProcessor:
    """diffusers attention processor with explicit probabilities; subclasses supply the core (`attend`).

    Supports what DPMesh's UNet and ControlNet attention layers are: 3-D hidden states, no mask, no group /
    spatial / cross norms (anything else raises rather than being silently ignored). Self-attention uses the hidden
    states as context unless `cross_only`.

    Args:
        layer: the layer's name (in messages, and the key of its kept map).
        keep_map: keep the head-averaged probabilities `(B, N, M)` in the current pass's `ForwardCapture.maps[layer]`.
        head_mean: compute the head mean even when it is not kept (the official UNet forward does it in every layer).
        cross_only: require `encoder_hidden_states` (the capture layers are cross-attentions).
    """

    def __init__(
        self,
        *,
        layer: str = "",
        keep_map: bool = False,
        head_mean: bool = False,
        cross_only: bool = False,
    ) -> None:
        if keep_map and not layer:
            raise ValueError("a processor that keeps its map needs the layer's name")
        self.layer = layer
        self.keep_map = keep_map
        self.head_mean = head_mean
        self.cross_only = cross_only

    def attend(
        self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The precision-specific core.

        Args:
            attn: the layer (its `scale`, `upcast_attention`, ...).
            query: `(B·heads, N, d)`; key, value: `(B·heads, M, d)`, in the projections' dtype.

        Returns:
            `probs` `(B·heads, N, M)` = `softmax(q kᵀ · scale)` and `probs · v` `(B·heads, N, d)` in `value`'s dtype.
        """
        raise NotImplementedError

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check(attn, hidden_states, encoder_hidden_states, attention_mask)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs, mixed = self.attend(attn, query, key, value)
        if self.head_mean or self.keep_map:
            mean = probs.view(batch, attn.heads, *probs.shape[1:]).mean(1)
            if self.keep_map:
                current_capture(self.layer).maps[self.layer] = mean
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(mixed)))
        if attn.residual_connection:
            out = out + hidden_states
        result: torch.Tensor = out / attn.rescale_output_factor
        return result

    def _check(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> None:
        name = self.layer or type(self).__name__
        if hidden_states.ndim != 3 or attention_mask is not None:
            raise ValueError(f"{name}: explicit attention expects 3-D hidden states and no mask")
        if self.cross_only and encoder_hidden_states is None:
            raise ValueError(f"{name}: expects a cross-attention call (encoder_hidden_states)")
        if attn.group_norm is not None or attn.spatial_norm is not None or attn.norm_cross:
            raise ValueError(f"{name}: explicit attention does not support group/spatial/cross norms")
