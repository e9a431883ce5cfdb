"""Joint (text + image) attention of the MMDiT families with image queries and image keys/values
taken from different token sets, and per-sample rotary embeddings.

diffusers' `JointAttnProcessor2_0` (SD3/SD3.5) and `FluxAttnProcessor` (Flux) project one image
sequence for Q, K and V and take one rotary table shared by the batch, so ToDo-style K/V
downsampling and Flux token merging (whose kept positions differ per sample) cannot be expressed by
wrapping them. This is the one processor body per family they need, using the attention module's
own projections, norms and diffusers' `apply_rotary_emb` / `dispatch_attention_fn`; with the full
image as both sources it equals the stock processor (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch import Tensor, nn

CosSin = tuple[Tensor, Tensor]
# Processors whose computation `joint_attention` reproduces; any other (IP-adapter, PAG, custom) is
# refused with a clear error instead of being silently replaced.
STOCK_PROCESSORS = ("JointAttnProcessor2_0", "FluxAttnProcessor", "FluxAttnProcessor2_0")


@dataclass(frozen=True)
class JointRope:
    """Rotary tables: text (T, D) shared by the batch; image queries (B, Nq, D) and keys (B, Nk, D)."""

    text: CosSin
    query: CosSin
    key: CosSin


def check_stock_processor(inner: Any, attn: nn.Module, method: str) -> None:
    """Refuse processors and settings `joint_attention` does not reproduce (loud, never a silent swap)."""
    name = type(inner).__name__
    if name not in STOCK_PROCESSORS:
        raise NotImplementedError(
            f"{method} on an MMDiT block needs diffusers' stock attention processor ({', '.join(STOCK_PROCESSORS)}); "
            f"got {name}. Set the default processor, or use a method/block that wraps it (SD3 + ToMe/BiGain_TM/SiTo)")
    if getattr(attn, "fused_projections", False):
        raise NotImplementedError(f"{method} on an MMDiT block does not support fused QKV projections; "
                                  "call `unfuse_qkv_projections()` first")


def split_heads(attn: nn.Module, x: Tensor) -> Tensor:
    """(B, S, heads * head_dim) -> (B, S, heads, head_dim)."""
    return x.unflatten(-1, (attn.heads, -1))


def norm(layer: Optional[nn.Module], x: Tensor) -> Tensor:
    """Apply an optional q/k norm (SD3 without `qk_norm` has none)."""
    return x if layer is None else layer(x)


def project_query(attn: nn.Module, x: Tensor, added: bool) -> Tensor:
    """Normalised queries (B, S, H, D); `added` = the text stream's own projections (`add_q_proj`)."""
    if added:
        return norm(attn.norm_added_q, split_heads(attn, attn.add_q_proj(x)))
    return norm(attn.norm_q, split_heads(attn, attn.to_q(x)))


def project_key_value(attn: nn.Module, x: Tensor, added: bool) -> tuple[Tensor, Tensor]:
    """Normalised keys and values (B, S, H, D) of `x`."""
    if added:
        return (norm(attn.norm_added_k, split_heads(attn, attn.add_k_proj(x))),
                split_heads(attn, attn.add_v_proj(x)))
    return norm(attn.norm_k, split_heads(attn, attn.to_k(x))), split_heads(attn, attn.to_v(x))


def rotate(x: Tensor, table: CosSin) -> Tensor:
    """diffusers' Flux rotary embedding with a shared (S, D) or a per-sample (B, S, D) table."""
    cos, sin = table
    if cos.dim() == 2:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)
    batch, seq = x.shape[:2]
    flat = apply_rotary_emb(x.reshape(1, batch * seq, *x.shape[2:]),
                            (cos.reshape(batch * seq, -1), sin.reshape(batch * seq, -1)), sequence_dim=1)
    return flat.reshape(x.shape)


def joint_attention(attn: nn.Module, image_q: Tensor, image_kv: Tensor, text: Optional[Tensor], *,
                    text_added: bool, text_first: bool, rope: Optional[JointRope],
                    backend: Any = None, parallel_config: Any = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Joint attention: queries from `image_q` (+ text), keys/values from `image_kv` (+ text).

    Returns what the stock processor returns: SD3 / Flux double-stream `(image_out, text_out)`
    (image only when `text` is None), Flux single-stream (`text_added=False`, `attn.pre_only`)
    the raw attention output `cat([text, image])` without output projection. `backend` and
    `parallel_config` go to `dispatch_attention_fn` (the wrapped processor's, as the stock processors pass them).
    """
    q_img = project_query(attn, image_q, False)
    k_img, v_img = project_key_value(attn, image_kv, False)
    if rope is not None:
        q_img, k_img = rotate(q_img, rope.query), rotate(k_img, rope.key)
    queries, keys, values = [q_img], [k_img], [v_img]
    if text is not None:
        q_txt = project_query(attn, text, text_added)
        k_txt, v_txt = project_key_value(attn, text, text_added)
        if rope is not None:
            q_txt, k_txt = rotate(q_txt, rope.text), rotate(k_txt, rope.text)
        position = 0 if text_first else 1
        queries.insert(position, q_txt)
        keys.insert(position, k_txt)
        values.insert(position, v_txt)
    query, key, value = (torch.cat(parts, dim=1) for parts in (queries, keys, values))
    out = dispatch_attention_fn(query, key, value, backend=backend, parallel_config=parallel_config)
    out = out.flatten(2, 3).to(query.dtype)
    if text is None:
        return output_projection(attn, out)
    n_text = text.shape[1]
    if text_first:
        text_out, image_out = out[:, :n_text], out[:, n_text:]
    else:
        image_out, text_out = out[:, :image_q.shape[1]], out[:, image_q.shape[1]:]
    if getattr(attn, "pre_only", False):  # Flux single-stream: the block projects the output itself
        return torch.cat([text_out, image_out], dim=1)
    if text_added and not getattr(attn, "context_pre_only", False):
        text_out = attn.to_add_out(text_out.contiguous())
    return output_projection(attn, image_out), text_out


def output_projection(attn: nn.Module, x: Tensor) -> Tensor:
    """`to_out` (linear + dropout) unless the module has none (pre-only attention)."""
    if getattr(attn, "pre_only", False):
        return x
    return attn.to_out[1](attn.to_out[0](x.contiguous()))
