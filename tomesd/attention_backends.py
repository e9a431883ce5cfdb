"""The patch and diffusers' attention backends (`model.set_attention_backend(...)`) and parallel configs.

diffusers' `set_attention_backend` / `enable_parallelism` set `processor._attention_backend` and
`processor._parallel_config` on every attention module's processor; on a patched model that is the
reducing wrapper. `BackendSlots` forwards both attributes to the wrapped processor when it has them
(Flux: the stock processor keeps the user's backend, also after `remove_patch`), and otherwise keeps
them itself: then the patched SD U-Net / DiT / PixArt / SD3 attention runs through diffusers'
`dispatch_attention_fn` with that backend (`dispatched_attention`), where the stock processors call
SDPA directly. With no backend set nothing changes. Context parallelism is refused (`refuse_context_parallel`).
"""
from __future__ import annotations

from typing import Any, Optional

from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import Tensor, nn

SLOTS = ("_attention_backend", "_parallel_config")
# Processors whose computation `dispatched_attention` reproduces (diffusers' SDPA processor of `Attention`).
SDPA_PROCESSORS = ("AttnProcessor2_0",)


def refuse_context_parallel(config: Any, where: str) -> None:
    """NotImplementedError when `config` (a diffusers `ParallelConfig`) splits the token sequence across devices.

    Context parallelism shards the sequence before attention, so each device would merge, prune or
    downsample only its own slice of the token grid: not the published methods, and not the same result.
    """
    if getattr(config, "context_parallel_config", None) is not None:
        raise NotImplementedError(
            f"context parallelism (diffusers ContextParallelConfig, {where}) splits the token sequence across "
            "devices, so token reduction would act on each device's slice separately, which is not the method; "
            "use data or tensor parallelism, or call remove_patch first")


def check_model_parallelism(model: nn.Module) -> None:
    """Refuse a model (or any of its attention processors) already set up for context parallelism."""
    refuse_context_parallel(getattr(model, "_parallel_config", None), f"on {type(model).__name__}")
    for name, module in model.named_modules():
        refuse_context_parallel(getattr(getattr(module, "processor", None), "_parallel_config", None),
                                f"on the processor of {name}")


def slot_property(name: str) -> property:
    """A processor attribute read from / written to the wrapped processor when it has one, else kept here."""

    def get(self: Any) -> Any:
        inner = self.inner
        return getattr(inner, name) if hasattr(inner, name) else self.own_slots.get(name)

    def set_(self: Any, value: Any) -> None:
        if hasattr(self.inner, name):
            setattr(self.inner, name, value)
        else:
            self.own_slots[name] = value

    return property(get, set_, doc=f"`{name}` of the wrapped processor (kept here when it has none).")


class BackendSlots:
    """Mixin for reducing processors wrapping `self.inner`: diffusers' backend and parallel-config slots."""

    inner: Any
    _attention_backend = slot_property("_attention_backend")
    _parallel_config = slot_property("_parallel_config")

    @property
    def own_slots(self) -> dict:
        """The slots the wrapped processor does not have (created on first use)."""
        slots = self.__dict__.get("_own_slots")
        if slots is None:
            slots = self.__dict__["_own_slots"] = {}
        return slots

    def own_backend(self) -> Optional[Any]:
        """The backend set on this wrapper for a processor that has no backend slot itself (None: not set)."""
        return None if hasattr(self.inner, "_attention_backend") else self.own_slots.get("_attention_backend")

    def check_parallel(self) -> None:
        """Refuse context parallelism enabled after patching (checked at each call, before any work)."""
        refuse_context_parallel(self._parallel_config, f"set on the patched {type(self.inner).__name__}")


def reproduces_sdpa(processor: Any) -> bool:
    """Whether `dispatched_attention` computes what `processor` computes."""
    return type(processor).__name__ in SDPA_PROCESSORS


def dispatched_attention(attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                         attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None, *,
                         backend: Any, parallel_config: Any = None, **kwargs: Any) -> Tensor:
    """diffusers' `AttnProcessor2_0` computation with the attention itself run by `dispatch_attention_fn`.

    (`scale`, deprecated and ignored there, is ignored here too.)
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch, length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
    query, key, value = (x.unflatten(-1, (attn.heads, -1)) for x in (query, key, value))  # (B, S, H, D)
    if attn.norm_q is not None:  # diffusers normalises the (B, H, S, D) layout over D: the same values
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=backend,
                                parallel_config=parallel_config)
    hidden_states = out.flatten(2, 3).to(query.dtype)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor
