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
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
from torch import Tensor, nn

CosSin = tuple[Tensor, Tensor]
# A rotary table: (cos, sin) (FLUX.1 / FLUX.2) or a complex tensor (Qwen-Image), shared (S, D) or per sample (B, S, D).
Table = Union[CosSin, Tensor]


@dataclass(frozen=True)
class JointRope:
    """Rotary tables: text (T, D) shared by the batch; image queries (B, Nq, D) and keys (B, Nk, D)."""

    text: Table
    query: Table
    key: Table


def check_stock_processor(inner: Any, attn: nn.Module, method: str, stock: tuple[str, ...]) -> None:
    """Refuse processors and settings `joint_attention` does not reproduce (loud, never a silent swap).

    `stock` names the family's processors the engine reproduces; any other (IP-adapter, PAG, custom) is refused.
    """
    name = type(inner).__name__
    if name not in stock:
        raise NotImplementedError(
            f"{method} on an MMDiT block needs diffusers' stock attention processor ({', '.join(stock)}); "
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


def rotate(x: Tensor, table: Table) -> Tensor:
    """diffusers' rotary embedding with a shared (S, D) or a per-sample (B, S, D) table: FLUX's (cos, sin)
    pairs, or Qwen-Image's complex table (rotation by complex multiplication, `apply_rotary_emb_qwen`)."""
    if isinstance(table, Tensor):
        if table.dim() == 2:
            return apply_rotary_emb_qwen(x, table, use_real=False)
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * table.unsqueeze(2)).flatten(3).type_as(x)
    cos, sin = table
    if cos.dim() == 2:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)
    batch, seq = x.shape[:2]
    flat = apply_rotary_emb(x.reshape(1, batch * seq, *x.shape[2:]),
                            (cos.reshape(batch * seq, -1), sin.reshape(batch * seq, -1)), sequence_dim=1)
    return flat.reshape(x.shape)


def joint_attention(attn: nn.Module, image_q: Tensor, image_kv: Tensor, text: Optional[Tensor], *,
                    text_added: bool, text_first: bool, rope: Optional[JointRope],
                    backend: Any = None, parallel_config: Any = None,
                    text_mask: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Joint attention: queries from `image_q` (+ text), keys/values from `image_kv` (+ text).

    Returns what the stock processor returns: SD3 / Flux double-stream `(image_out, text_out)`
    (image only when `text` is None), Flux single-stream (`text_added=False`, `attn.pre_only`)
    the raw attention output `cat([text, image])` without output projection. `backend` and
    `parallel_config` go to `dispatch_attention_fn` (the wrapped processor's, as the stock processors pass them).
    `text_mask` (B, T) masks text keys (Qwen-Image's `encoder_hidden_states_mask`); image keys are never masked.
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
    mask = None if text_mask is None else key_mask(text_mask, k_img.shape[1], text_first)
    out = dispatch_attention_fn(query, key, value, attn_mask=mask, backend=backend, parallel_config=parallel_config)
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


def key_mask(text_mask: Tensor, n_image: int, text_first: bool) -> Tensor:
    """Boolean (B, 1, 1, T + N) attention mask over [text, image] keys: the text mask, every image key valid."""
    text_mask = text_mask.to(torch.bool)
    image = torch.ones(text_mask.shape[0], n_image, dtype=torch.bool, device=text_mask.device)
    parts = [text_mask, image] if text_first else [image, text_mask]
    return torch.cat(parts, dim=1)[:, None, None, :]
