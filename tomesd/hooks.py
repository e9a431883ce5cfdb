"""Hooks that install a reducer in diffusers blocks without copying any block's forward.

* a forward pre-hook on the denoiser records the latent size and per-sample timesteps;
* a pre-hook on each patched block records the metric (SD: block input) and drops the last plan;
* wrapped attention processors reduce tokens around the saved original processor (so SDPA or
  any user processor still runs the attention); optional hooks around the feed-forward.
"""
from __future__ import annotations

import inspect
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tomesd.attention_backends import BackendSlots, dispatched_attention, reproduces_sdpa
from tomesd.options import plan_reuse_span
from tomesd.reducers.base import KVPlan, Plan, Reducer, ReductionContext, TokenPlan, Tracer, run_phase, traced_plan
from tomesd.rng import CounterRandom


def fresh_seed() -> int:
    """A random 31-bit seed for patches made without one (`seed=None`)."""
    return secrets.randbits(31)


@dataclass
class RuntimeState:
    """Per-forward facts shared by all hooks of one patch, its random stream and its plan cache.

    Everything a default forward touches is a tensor or a constant: the call counter of the random
    stream is an int64 tensor advanced in place, so `torch.compile(fullgraph=True)` traces the hooks
    and a CUDA graph can capture the call. The Python call count only exists with `plan_every > 1`.
    """

    seed: Optional[int] = None
    plan_reuse: str = "block"
    plan_every: int = 1
    latent_size: Optional[tuple[int, int]] = None
    timesteps: Optional[Tensor] = None  # (B,) float32, on the device the caller passed them on
    counter: Optional[Tensor] = None  # () int64 on the model's device: denoiser calls since patch/reseed
    streams: int = 1  # patched blocks, each its own random stream
    tables: dict = field(default_factory=dict)  # this call's shared random draws (tomesd.rng)
    calls: int = 0  # Python count of calls, kept only when plans are reused across calls
    plans: dict = field(default_factory=dict)  # reuse key -> (signature, plan)
    trace: Optional[Tracer] = None  # `tomesd.trace_reducers`: called around each reducer phase (None: no tracing)
    blocks_per_level: dict = field(default_factory=dict)  # level -> patched blocks hooked so far (install order)
    _host_timesteps: Optional[Tensor] = None

    def __post_init__(self) -> None:
        self.stream_seed = self.seed if self.seed is not None else fresh_seed()

    @property
    def caches_plans(self) -> bool:
        return self.plan_reuse != "block" or self.plan_every > 1

    def start_call(self, device: torch.device) -> None:
        """Advance the random stream and drop the plans that may not be reused in this call."""
        if self.counter is None or self.counter.device != device:
            self.counter = torch.zeros((), dtype=torch.int64, device=device)
        else:
            self.counter.add_(1)
        self.tables.clear()
        if self.plan_every > 1:
            if self.calls % self.plan_every == 0:
                self.plans.clear()
            self.calls += 1
        elif self.plan_reuse != "block":
            self.plans.clear()

    def set_timesteps(self, timesteps: Optional[Tensor]) -> None:
        """Record this forward's per-sample timesteps (no copy, no host-device sync)."""
        self.timesteps, self._host_timesteps = timesteps, None

    def host_timesteps(self) -> Optional[Tensor]:
        """CPU copy of the timesteps, made on first use and kept for the rest of the forward.

        Only reducers that branch on timesteps in Python (`needs_host_timesteps(opts)` True) ask for
        it; the built-in reducers never do.
        """
        if self._host_timesteps is None and self.timesteps is not None:
            self._host_timesteps = self.timesteps.to("cpu")
        return self._host_timesteps

    def random(self, stream: int) -> CounterRandom:
        """The patch's random numbers for `stream` (a block) in the current call."""
        return CounterRandom(self.stream_seed, self.counter, stream, None, self.streams, self.tables)

    def reseed(self, seed: Optional[int]) -> None:
        """Restart the random stream and the plan-reuse counter (e.g. per image)."""
        self.seed = seed
        self.stream_seed = seed if seed is not None else fresh_seed()
        self.counter, self.calls = None, 0
        self.plans.clear()
        self.tables.clear()


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
        runtime.start_call(sample.device)
        runtime.set_timesteps(per_sample_timesteps(bound.get("timestep"), sample.shape[0]))

    return capture


class BlockHook:
    """State of one patched block: its metric for this forward and the plan made from it.

    `stream` numbers the block inside its patch (its random stream); `reuse_key` names the plan it
    shares with other blocks or calls (`plan_reuse="level"`: its level; `"group<k>"`: its level and
    its rank among the level's patched blocks // k). Hooks are made in execution order, so the rank
    counts the level's blocks hooked before this one.
    """

    def __init__(self, reducer: Reducer, options: Any, runtime: RuntimeState, level: int, patch_size: int,
                 metric_from_block_input: bool, stream: int = 0) -> None:
        self.reducer, self.options, self.runtime = reducer, options, runtime
        self.level, self.patch_size, self.stream = level, patch_size, stream
        self.metric_from_block_input = metric_from_block_input
        rank = runtime.blocks_per_level.get(level, 0)
        runtime.blocks_per_level[level] = rank + 1
        span = plan_reuse_span(runtime.plan_reuse)
        self.reuse_key = ("block", stream) if span == 1 else ("level", level, rank // span if span else 0)
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
        """The plan for this block's current forward, made once on first use (or reused)."""
        if not self.planned:
            metric = self.metric if self.metric is not None else attn_input
            height, width = self.grid(metric.shape[1])
            if self.runtime.caches_plans:
                signature = (tuple(metric.shape[:2]), height, width, metric.device)
                cached = self.runtime.plans.get(self.reuse_key)
                if cached is None or cached[0] != signature:
                    cached = (signature, self.make_plan(metric, height, width))
                    self.runtime.plans[self.reuse_key] = cached
                self.plan = traced_plan(cached[1], self.runtime.trace)
            else:
                self.plan = traced_plan(self.make_plan(metric, height, width), self.runtime.trace)
            self.planned, self.metric = True, None  # do not keep activations alive past planning
        return self.plan

    def make_plan(self, metric: Tensor, height: int, width: int) -> Plan:
        """Run the reducer's planning on `metric` (inside the tracer's "plan" phase when one is attached).

        Reducers that never branch on timesteps in Python get them where they live: no device sync.
        The plan is cached untraced; `plan_for` wraps it for the tracer of the current forward.
        """
        on_host = self.reducer.needs_host_timesteps(self.options)
        timesteps = self.runtime.host_timesteps() if on_host else self.runtime.timesteps
        trace = self.runtime.trace
        ctx = ReductionContext(metric=metric, height=height, width=width, timesteps=timesteps,
                               random=self.runtime.random(self.stream), level=self.level, trace=trace)
        return run_phase(trace, "plan", self.reducer.plan, ctx, self.options)


def attend_compressed_kv(inner: Any, attn: nn.Module, hidden: Tensor, plan: KVPlan, attention_mask: Any,
                         kwargs: dict) -> Tensor:
    """Self-attention with K/V from `plan.kv_source`; gated-off samples attend to all tokens.

    The gate is a device mask: both attentions run and `torch.where` picks per sample, so there is
    no host copy, no `nonzero` and no data-dependent shape (one graph under `torch.compile`).
    """
    kv = plan.kv_source(hidden)  # per-sample settings (alpha schedule) index the full batch
    out = inner(attn, hidden, kv, attention_mask, **kwargs)
    if plan.active is None:
        return out
    full = inner(attn, hidden, None, attention_mask, **kwargs)
    return torch.where(plan.active.to(out.device).view(-1, *([1] * (out.dim() - 1))), out, full)


class ReducingAttnProcessor(BackendSlots):
    """Wraps a block's original attention processor; reduces tokens (or K/V) around it.

    An attention backend set on it (`model.set_attention_backend`) goes to the wrapped processor when
    that one has a backend slot; otherwise (diffusers' SDPA processor) the attention runs through
    `dispatch_attention_fn` with it (`tomesd.attention_backends`). No backend set: the wrapped processor.
    """

    def __init__(self, inner: Any, hook: BlockHook, self_attention: bool) -> None:
        self.inner, self.hook, self.self_attention = inner, hook, self_attention

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, **kwargs: Any) -> Tensor:
        self.check_parallel()
        plan = self.hook.plan_for(hidden_states)
        if isinstance(plan, TokenPlan):
            out = self.run(attn, plan.reduce(hidden_states), encoder_hidden_states, attention_mask, **kwargs)
            return plan.restore(out)
        if isinstance(plan, KVPlan) and self.self_attention and encoder_hidden_states is None:
            return attend_compressed_kv(self.run, attn, hidden_states, plan, attention_mask, kwargs)
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def run(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor],
            attention_mask: Any, **kwargs: Any) -> Tensor:
        """The wrapped processor, or its computation through the backend set on this wrapper."""
        backend = self.own_backend()
        if backend is None or not reproduces_sdpa(self.inner):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        return dispatched_attention(attn, hidden_states, encoder_hidden_states, attention_mask, backend=backend,
                                    parallel_config=self._parallel_config, **kwargs)


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
