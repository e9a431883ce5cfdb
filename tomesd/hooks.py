"""Hooks that install a reducer in diffusers blocks without copying any block's forward.

* a forward pre-hook on the denoiser records the latent size and per-sample timesteps;
* a pre-hook on each patched block records the metric (SD: block input) and drops the last plan;
* wrapped attention processors reduce tokens around the saved original processor (so SDPA or
  any user processor still runs the attention); optional hooks around the feed-forward.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .reducers.base import KVPlan, Plan, ReductionContext, TokenPlan


@dataclass
class RuntimeState:
    """Per-forward facts shared by all hooks of one patch, plus the patch's own generator."""

    seed: Optional[int] = None
    latent_size: Optional[tuple[int, int]] = None
    timesteps: Optional[Tensor] = None  # (B,) float32, on the device the caller passed them on
    _host_timesteps: Optional[Tensor] = None
    _generators: dict[str, torch.Generator] = field(default_factory=dict)

    def set_timesteps(self, timesteps: Optional[Tensor]) -> None:
        """Record this forward's per-sample timesteps (no copy, no host-device sync)."""
        self.timesteps, self._host_timesteps = timesteps, None

    def host_timesteps(self) -> Optional[Tensor]:
        """CPU copy of the timesteps, made on first use and kept for the rest of the forward.

        Only reducers that branch on timesteps in Python (ToDo / BiGain_TD's per-sample gate) ask
        for it: at most one device-to-host copy per forward, none when the caller passed host values.
        """
        if self._host_timesteps is None and self.timesteps is not None:
            self._host_timesteps = self.timesteps.to("cpu")
        return self._host_timesteps

    def generator(self, device: torch.device) -> torch.Generator:
        """The patch's generator on `device`, created (and seeded) on first use there."""
        key = str(device)
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed) if self.seed is not None else gen.seed()
            self._generators[key] = gen
        return self._generators[key]

    def reseed(self, seed: Optional[int]) -> None:
        """Restart the random stream (e.g. per image, so results do not depend on order)."""
        self.seed = seed
        self._generators.clear()


def per_sample_timesteps(timestep: Any, batch: int) -> Optional[Tensor]:
    """Timestep argument (scalar, (1,), (B,)) -> (B,) float32 tensor on its own device; None if absent."""
    if timestep is None:
        return None
    t = torch.as_tensor(timestep).detach().reshape(-1).to(torch.float32)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} timesteps for a batch of {batch}")
    return t


def make_capture_hook(runtime: RuntimeState, signature: inspect.Signature):
    """Forward pre-hook (with kwargs) for the denoiser: latent size and per-sample timesteps."""
    first = next(iter(signature.parameters))

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        sample = bound[first]
        runtime.latent_size = (int(sample.shape[-2]), int(sample.shape[-1]))
        runtime.set_timesteps(per_sample_timesteps(bound.get("timestep"), sample.shape[0]))

    return capture


class BlockHook:
    """State of one patched block: its metric for this forward and the plan made from it."""

    def __init__(self, reducer: type, options: Any, runtime: RuntimeState, level: int, patch_size: int,
                 metric_from_block_input: bool) -> None:
        self.reducer, self.options, self.runtime = reducer, options, runtime
        self.level, self.patch_size = level, patch_size
        self.metric_from_block_input = metric_from_block_input
        self.metric: Optional[Tensor] = None
        self.plan: Plan = None
        self.planned = False

    def on_block_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pre-hook on the block: remember its input (SD metric) and forget the last plan."""
        hidden = args[0] if args else kwargs["hidden_states"]
        self.metric = hidden if self.metric_from_block_input else None
        self.plan, self.planned = None, False

    def grid(self, num_tokens: int) -> tuple[int, int]:
        """Token grid of this block from the latent size, its level and the patch size."""
        if self.runtime.latent_size is None:
            raise RuntimeError("token reducer used before the patched model's forward recorded the latent size")
        lat_h, lat_w = self.runtime.latent_size
        stride = self.level * self.patch_size
        height, width = math.ceil(lat_h / stride), math.ceil(lat_w / stride)
        if height * width != num_tokens:
            raise RuntimeError(
                f"block at level {self.level} has {num_tokens} tokens but a {lat_h}x{lat_w} latent implies "
                f"a {height}x{width} grid; unsupported architecture or input size"
            )
        return height, width

    def plan_for(self, attn_input: Tensor) -> Plan:
        """The plan for this block's current forward, made once on first use."""
        if not self.planned:
            metric = self.metric if self.metric is not None else attn_input
            height, width = self.grid(metric.shape[1])
            # Reducers that never branch on timesteps (`timesteps_on_host = False`, or a function of
            # the options returning False) get them where they live: planning never waits for the device.
            on_host = getattr(self.reducer, "timesteps_on_host", True)
            on_host = on_host(self.options) if callable(on_host) else on_host
            timesteps = self.runtime.host_timesteps() if on_host else self.runtime.timesteps
            ctx = ReductionContext(
                metric=metric, height=height, width=width, timesteps=timesteps,
                generator=self.runtime.generator(metric.device), level=self.level,
            )
            self.plan, self.planned = self.reducer.plan(ctx, self.options), True
            self.metric = None  # do not keep activations alive past planning
        return self.plan


def attend_compressed_kv(inner: Any, attn: nn.Module, hidden: Tensor, plan: KVPlan, attention_mask: Any,
                         kwargs: dict) -> Tensor:
    """Self-attention with K/V from `plan.kv_source`; gated-off samples attend to all tokens."""
    kv = plan.kv_source(hidden)  # per-sample settings (alpha schedule) index the full batch
    if plan.active is None:
        return inner(attn, hidden, kv, attention_mask, **kwargs)
    on = plan.active.nonzero().flatten().to(hidden.device)
    off = (~plan.active).nonzero().flatten().to(hidden.device)
    out_on = inner(attn, hidden[on], kv[on], attention_mask, **kwargs)
    out_off = inner(attn, hidden[off], None, attention_mask, **kwargs)
    out = out_on.new_empty((hidden.shape[0],) + tuple(out_on.shape[1:]))
    out[on], out[off] = out_on, out_off
    return out


class ReducingAttnProcessor:
    """Wraps a block's original attention processor; reduces tokens (or K/V) around it."""

    def __init__(self, inner: Any, hook: BlockHook, self_attention: bool) -> None:
        self.inner, self.hook, self.self_attention = inner, hook, self_attention

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, **kwargs: Any) -> Tensor:
        plan = self.hook.plan_for(hidden_states)
        if isinstance(plan, TokenPlan):
            out = self.inner(attn, plan.reduce(hidden_states), encoder_hidden_states, attention_mask, **kwargs)
            return plan.restore(out)
        if isinstance(plan, KVPlan) and self.self_attention and encoder_hidden_states is None:
            return attend_compressed_kv(self.inner, attn, hidden_states, plan, attention_mask, kwargs)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def install_mlp_hooks(ff: nn.Module, hook: BlockHook) -> list[Any]:
    """Reduce the feed-forward's input tokens and restore its output (token plans only)."""

    def before(module: nn.Module, args: tuple) -> Optional[tuple]:
        plan = hook.plan_for(args[0])
        return (plan.reduce(args[0]),) + args[1:] if isinstance(plan, TokenPlan) else None

    def after(module: nn.Module, args: tuple, output: Tensor) -> Optional[Tensor]:
        plan = hook.plan
        return plan.restore(output) if isinstance(plan, TokenPlan) else None

    return [ff.register_forward_pre_hook(before), ff.register_forward_hook(after)]


class FeedForwardChunking:
    """Runs a block's feed-forward unchunked while its tokens are merged, restoring the setting after.

    diffusers' `set_chunk_feed_forward` / `enable_forward_chunking` calls `ff` once per slice, so
    a per-call token plan would see slices; with `merge_mlp` the feed-forward instead runs once on
    the merged tokens (at most (1 - ratio) of them). Also a removable handle: `remove()` puts the
    user's chunk size back even if a forward raised.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block, self.saved = block, None
        self.handles = [block.register_forward_pre_hook(self.suspend),
                        block.register_forward_hook(self.resume, always_call=True)]

    def suspend(self, module: nn.Module, args: tuple) -> None:
        if getattr(module, "_chunk_size", None) is not None:
            self.saved, module._chunk_size = module._chunk_size, None

    def resume(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.saved is not None:
            module._chunk_size, self.saved = self.saved, None

    def remove(self) -> None:
        self.resume(self.block, (), None)
        for handle in self.handles:
            handle.remove()
