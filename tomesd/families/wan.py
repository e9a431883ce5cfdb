"""Wan 2.x (`WanTransformer3DModel`): video tokens on a frames x rows x columns grid, self-attention with
3-axis rotary positions, then cross-attention to the text (never reduced), in `model.blocks`.

Tokens are frame-major (the patch embedding flattens (T, H, W)). By default every plan is made per
frame: a frame's tokens are merged, pruned or downsampled within that frame only (2x2 spatial blocks,
each frame its own destinations, nothing merged across frames), and the frames' reduced tokens attend
jointly as the model's do. The rotary table is (cos, sin) per token, (1, S, 1, D), rotated Wan's way
(interleaved pairs); a reduced token's table is evaluated at its (fractional) (frame, row, column).
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import Tensor, nn

from tomesd.families.base import Family, register

WAN_ROPE_THETA = 10000.0  # `WanRotaryPosEmbed`'s default; diffusers never passes another one


class WanRope:
    """Wan's rotary tables: (cos, sin), each (B or 1, S, 1, D), per video token."""

    @staticmethod
    def at(rope: nn.Module, positions: Tensor, like: Any) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (B, M, 1, D), at float (frame, row, column) positions (B, M, 3)."""
        flat = positions.reshape(-1, 3)
        freqs_dtype = torch.float32 if torch.backends.mps.is_available() else torch.float64  # as WanRotaryPosEmbed
        cos, sin = [], []
        for axis, dim in enumerate((rope.t_dim, rope.h_dim, rope.w_dim)):
            c, s = get_1d_rotary_pos_embed(dim, flat[:, axis], WAN_ROPE_THETA, use_real=True,
                                           repeat_interleave_real=True, freqs_dtype=freqs_dtype)
            cos.append(c)
            sin.append(s)
        shape = positions.shape[:2] + (1, -1)
        return (torch.cat(cos, dim=-1).reshape(shape).to(like[0]), torch.cat(sin, dim=-1).reshape(shape).to(like[1]))


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`WanAttnProcessor`'s rotary embedding (interleaved pairs) with (1 or B, S, 1, D) tables."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def self_attention(attn: nn.Module, x_q: Tensor, x_kv: Tensor, rope_q: Any, rope_k: Any, backend: Any = None,
                   parallel_config: Any = None) -> Tensor:
    """`WanAttnProcessor` self-attention with queries from `x_q` and keys/values from `x_kv`, each with its table."""
    query, key, value = attn.norm_q(attn.to_q(x_q)), attn.norm_k(attn.to_k(x_kv)), attn.to_v(x_kv)
    query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
    if rope_q is not None:
        query, key = rotate(query, *rope_q), rotate(key, *rope_k)
    out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=backend,
                                parallel_config=parallel_config)
    out = out.flatten(2, 3).type_as(query)
    return attn.to_out[1](attn.to_out[0](out))


def frame_ids(frames: int, rows: int, cols: int, device: torch.device) -> Tensor:
    """(frame, row, column) of every token, frame-major, as float (T * H * W, 3)."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in (frames, rows, cols)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


WAN = register(Family(
    name="wan", label="Wan 2.x", model="WanTransformer3DModel",
    double_blocks=("WanTransformerBlock",), stacks=("blocks",), kind="video",
    text_first=False, grid="frames", positions="rotary", rope_axes=("frame", "row", "column"), rope=WanRope,
    sigma_timesteps=False, reference_grid=(30, 52), image_mlp="ffn", processors=("WanAttnProcessor",),
))
