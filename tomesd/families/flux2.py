"""FLUX.2 (`Flux2Transformer2DModel`): double-stream blocks, then fused single-stream blocks on [text, image].

As FLUX.1 (text first, grid from `img_ids` rows/columns, one (cos, sin) table over the concatenated
sequence) with 4 rotary axes (time, row, column, layer). A single-stream layer
(`Flux2ParallelSelfAttention`) projects Q, K, V and the MLP input with one linear layer and its
output projection mixes attention and MLP channels, so a token plan runs the whole fused layer on
the reduced tokens; ToDo/BiGain_TD project the image K/V from the downsampled tokens with the K/V
rows of that linear layer. Reference-image tokens (edit mode) are not one grid and are refused.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import Tensor, nn

from tomesd.families.base import Family, RealRope, register
from tomesd.joint_attention import JointRope, rotate


def heads(attn: nn.Module, x: Tensor) -> Tensor:
    """(B, S, H * D) -> (B, S, H, D) by the module's head dim, as diffusers' FLUX.2 processors split."""
    return x.unflatten(-1, (-1, attn.head_dim))


def image_key_value(attn: nn.Module, image: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised keys and values of `image` tokens from the K/V rows of the fused projection.

    The rows are read outside the layer's forward, where weight hooks (diffusers' layerwise casting: bf16 storage,
    fp32 compute) do not run, so they are brought to the tokens' dtype here as such a hook would."""
    proj, inner = attn.to_qkv_mlp_proj, attn.inner_dim
    weight = proj.weight[inner:3 * inner]
    bias = None if proj.bias is None else proj.bias[inner:3 * inner]
    if weight.dtype != image.dtype:
        weight, bias = weight.to(image.dtype), None if bias is None else bias.to(image.dtype)
    key, value = F.linear(image, weight, bias).chunk(2, dim=-1)
    return attn.norm_k(heads(attn, key)), heads(attn, value)


def rotate_joint(x: Tensor, n_text: int, text: Any, image: Any) -> Tensor:
    """Rotate the text rows and the image rows of a [text, image] sequence by their own tables."""
    return torch.cat([rotate(x[:, :n_text], text), rotate(x[:, n_text:], image)], dim=1)


def parallel_attention(attn: nn.Module, hidden: Tensor, image_kv: Optional[Tensor], n_text: int,
                       rope: Optional[JointRope], backend: Any = None, parallel_config: Any = None) -> Tensor:
    """`Flux2ParallelSelfAttnProcessor` on the [text, image] sequence `hidden`; image keys/values from `image_kv`
    when given (ToDo), else from `hidden`'s image rows. Returns the layer output for every row of `hidden`."""
    proj = attn.to_qkv_mlp_proj(hidden)
    qkv_dim = 3 * attn.inner_dim
    qkv, mlp = torch.split(proj, [qkv_dim, proj.shape[-1] - qkv_dim], dim=-1)
    query, key, value = (heads(attn, t) for t in qkv.chunk(3, dim=-1))
    query, key = attn.norm_q(query), attn.norm_k(key)
    if image_kv is not None:
        key_img, value_img = image_key_value(attn, image_kv)
        key, value = torch.cat([key[:, :n_text], key_img], dim=1), torch.cat([value[:, :n_text], value_img], dim=1)
    if rope is not None:
        query = rotate_joint(query, n_text, rope.text, rope.query)
        key = rotate_joint(key, n_text, rope.text, rope.key)
    out = dispatch_attention_fn(query, key, value, backend=backend, parallel_config=parallel_config)
    out = out.flatten(2, 3).to(query.dtype)
    return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


FLUX2 = register(Family(
    name="flux2", label="FLUX.2", model="Flux2Transformer2DModel",
    double_blocks=("Flux2TransformerBlock",), single_blocks=("Flux2SingleTransformerBlock",),
    text_first=True, grid="ids", positions="rotary", rope_axes=("time", "row", "column", "layer"), rope=RealRope,
    processors=("Flux2AttnProcessor", "Flux2ParallelSelfAttnProcessor"), single_attention=parallel_attention,
))
