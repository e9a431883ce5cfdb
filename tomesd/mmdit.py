"""The reducers on MMDiT backbones: SD3 / SD3.5 (`JointTransformerBlock`) and Flux
(`FluxTransformerBlock` double-stream, then `FluxSingleTransformerBlock` on the concatenated sequence).

Only image tokens are reduced: text tokens are never merged, pruned or downsampled, and every
query (text and image) is kept by ToDo/BiGain_TD. The reducers' own `plan(ctx, opts)` decide what
to reduce, exactly as on DiT; this module only routes image tokens through those plans.

Positions (Flux's rotary embedding; SD3 adds absolute positions before the first block, so it has
no positional state inside blocks). A reduced token's position is the same combination of its
members' positions as its features are of their features: the plan's own `reduce` / `kv_source`
is applied to the image position ids and the model's rotary embedding (`pos_embed`) is evaluated
there. So a kept (SiTo, or unmerged ToMe) token or a nearest-exact ToDo key keeps its exact grid
position, a merged token sits at the centroid of the tokens averaged into it (the first-order
position of an average of rotated keys; the destination's own position would bias it towards one
member), and an average-pooled K/V token at the centre of its pooling window. K/V are projected
from the downsampled image tokens (as ToDo does on U-Nets), then rotated at the downsampled
positions; queries keep their original positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from tomesd.attention_backends import BackendSlots
from tomesd.backbones import Backbone, BlockSite, mmdit_kind
from tomesd.hooks import BlockHook, FeedForwardChunking, install_mlp_hooks, make_capture_hook, per_sample_timesteps
from tomesd.install import PatchHandle, wrap_attention
from tomesd.joint_attention import STOCK_PROCESSORS, JointRope, check_stock_processor, joint_attention
from tomesd.reducers.base import KVPlan, Reducer, TokenPlan

TensorFn = Callable[[Tensor], Tensor]


@dataclass
class ImagePositions:
    """Per-forward image position ids (N, 3) of a Flux call and the model's rotary embedding.

    `hint` is the token grid `apply_patch` reports (its `latent_size`, else Flux's 64x64 reference);
    `grids` maps a token count to the grid last validated for it in an eager call.
    """

    pos_embed: Optional[nn.Module] = None
    ids: Optional[Tensor] = None
    checked: Optional[tuple] = None  # (last validated img_ids tensor, its version, token count, grid)
    hint: Optional[tuple[int, int]] = None
    grids: dict = field(default_factory=dict)

    def grid_of(self, img_ids: Tensor, num_tokens: int) -> tuple[int, int]:
        """`flux_image_grid`, validated once per ids tensor: pipelines pass the same one at every step, so
        later steps skip the check's device-to-host syncs (the tensor is held, so its memory is not reused).

        Under `torch.compile` the grid cannot be read from the ids' values (a data-dependent shape):
        it comes from shapes alone (`traced_grid`) and the ids are checked inside the graph.
        """
        if torch.compiler.is_compiling():
            return self.traced_grid(img_ids, num_tokens)
        last = self.checked
        if last is None or last[0] is not img_ids or last[1] != img_ids._version or last[2] != num_tokens:
            self.checked = (img_ids, img_ids._version, num_tokens, flux_image_grid(img_ids, num_tokens))
            self.grids[num_tokens] = self.checked[3]
        return self.checked[3]

    def traced_grid(self, img_ids: Tensor, num_tokens: int) -> tuple[int, int]:
        """The grid of `num_tokens` tokens while tracing: the one an eager call validated, else the patch's
        reported grid, else a square; `img_ids` are asserted (on the device, no sync) to be that grid."""
        candidates = [self.grids.get(num_tokens), self.hint, square_grid(num_tokens)]
        grid = next((g for g in candidates if g is not None and g[0] * g[1] == num_tokens), None)
        if img_ids.shape[0] != num_tokens:
            raise RuntimeError(f"{img_ids.shape[0]} image ids for {num_tokens} image tokens in this compiled Flux "
                               "call; token reduction needs one id per image token on one row-major grid")
        if grid is None:
            raise RuntimeError(
                f"cannot tell the token grid of this compiled Flux call ({num_tokens} image tokens, not a square): "
                "pass apply_patch(..., latent_size=(rows, cols)) with the packed token grid, or run one call eagerly")
        order = torch.arange(num_tokens, device=img_ids.device, dtype=img_ids.dtype)
        torch._assert_async((img_ids[:, 1] * grid[1] + img_ids[:, 2] == order).all(),
                            f"the image ids of this compiled Flux call are not the row-major {grid[0]}x{grid[1]} "
                            "grid the patch assumed; pass apply_patch(..., latent_size=(rows, cols))")
        return grid

    def table_at(self, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary (cos, sin), each (B, M, D), at float positions (B, M, 3), in `like`'s dtype/device."""
        cos, sin = self.pos_embed(positions.reshape(-1, positions.shape[-1]))
        shape = positions.shape[:2] + (cos.shape[-1],)
        return cos.reshape(shape).to(like), sin.reshape(shape).to(like)


def square_grid(num_tokens: int) -> Optional[tuple[int, int]]:
    """(s, s) when `num_tokens` is a perfect square s * s, else None."""
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else None


def flux_image_grid(img_ids: Tensor, num_tokens: int) -> tuple[int, int]:
    """(rows, cols) of Flux image ids laid out row-major from 0; RuntimeError for anything else."""
    rows, cols = img_ids[:, 1], img_ids[:, 2]
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    order = torch.arange(num_tokens, device=img_ids.device, dtype=img_ids.dtype)
    if img_ids.shape[0] != num_tokens or height * width != num_tokens or not torch.equal(rows * width + cols, order):
        raise RuntimeError(
            f"the {num_tokens} image tokens of this Flux call are not one row-major grid (img_ids[:, 1] = row, "
            "img_ids[:, 2] = column, from 0), e.g. extra reference-image tokens; token reduction needs one grid")
    return height, width


def make_flux_capture_hook(runtime: Any, signature: Any, positions: ImagePositions):
    """Denoiser pre-hook for Flux: token grid from `img_ids`, per-sample timesteps on the 0-1000 scale."""

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        hidden, ids = bound["hidden_states"], bound.get("img_ids")
        if ids is None:
            raise ValueError("a Flux forward without `img_ids`: the image token grid is unknown")
        ids = ids[0] if ids.dim() == 3 else ids
        runtime.latent_size = positions.grid_of(ids, hidden.shape[1])
        runtime.start_call(hidden.device)
        timestep = bound.get("timestep")  # Flux takes sigma = t / 1000 and multiplies by 1000 itself
        runtime.set_timesteps(per_sample_timesteps(None if timestep is None else torch.as_tensor(timestep) * 1000,
                                                   hidden.shape[0]))
        positions.ids = ids.float()

    return capture


def image_token_count(hook: BlockHook) -> int:
    """Image tokens of the current forward (from the captured latent size)."""
    if hook.runtime.latent_size is None:
        raise RuntimeError("token reducer used before the patched model's forward recorded the latent size")
    stride = hook.level * hook.patch_size
    return math.ceil(hook.runtime.latent_size[0] / stride) * math.ceil(hook.runtime.latent_size[1] / stride)


def map_image(out: Any, fn: TensorFn, single_stream: bool, n_text: int) -> Any:
    """Apply `fn` to the image part of a processor output: (image, text), image, or cat([text, image])."""
    if isinstance(out, tuple):
        return (fn(out[0]),) + tuple(out[1:])
    if single_stream:
        return torch.cat([out[:, :n_text], fn(out[:, n_text:])], dim=1)
    return fn(out)


def select_rows(active: Tensor, out_on: Any, out_off: Any) -> Any:
    """Per sample, the compressed output where `active` (B,) is set, else the uncompressed one."""
    if isinstance(out_on, tuple):
        return tuple(select_rows(active, a, b) for a, b in zip(out_on, out_off))
    return torch.where(active.to(out_on.device).view(-1, *([1] * (out_on.dim() - 1))), out_on, out_off)


class MMDiTProcessor(BackendSlots):
    """Wraps an MMDiT block's attention processor; reduces image tokens (or image K/V) around it.

    Idle plans call the wrapped processor unchanged (bit-identical). SD3 token plans wrap it too
    (reduced image tokens in, restored out). K/V plans and Flux token plans run `joint_attention`
    (the stock computation with separate image Q / K-V sources and per-sample rotary tables).
    Attention runs through `dispatch_attention_fn` with the wrapped processor's backend (Flux), or with
    one set on this wrapper (SD3, whose stock processor calls SDPA itself; then every path uses it).
    """

    def __init__(self, inner: Any, hook: BlockHook, positions: ImagePositions, single_stream: bool) -> None:
        self.inner, self.hook, self.positions, self.single_stream = inner, hook, positions, single_stream

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, image_rotary_emb: Any = None, **kwargs: Any) -> Any:
        self.check_parallel()
        if self.single_stream:
            n_text = hidden_states.shape[1] - image_token_count(self.hook)
            text, image = hidden_states[:, :n_text], hidden_states[:, n_text:]
        else:
            text, image = encoder_hidden_states, hidden_states
            n_text = 0 if text is None else text.shape[1]
        plan = self.hook.plan_for(image)
        if plan is None:
            return self.call_inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kwargs)
        method = self.hook.reducer.name
        if attention_mask is not None or kwargs:
            raise NotImplementedError(f"{method} on an MMDiT block does not support attention masks or extra "
                                      f"processor arguments ({sorted(kwargs)}); got them in {type(attn).__name__}")
        if isinstance(plan, TokenPlan) and image_rotary_emb is None and not self.single_stream:
            out = self.call_inner(attn, plan.reduce(image), encoder_hidden_states, None, None, {})
            return map_image(out, plan.restore, False, n_text)
        check_stock_processor(self.inner, attn, method)
        if isinstance(plan, TokenPlan):
            reduced = plan.reduce(image)
            rope = self.rope(image_rotary_emb, n_text, image, plan.reduce, plan.reduce)
            return map_image(self.attend(attn, reduced, reduced, text, rope), plan.restore, self.single_stream, n_text)
        assert isinstance(plan, KVPlan)
        kv = plan.kv_source(image)  # per-sample settings (alpha schedule) index the full batch
        rope = self.rope(image_rotary_emb, n_text, image, None, plan.kv_source)
        if plan.active is None:
            return self.attend(attn, image, kv, text, rope)
        # The gate is a device mask, as on the other backbones: both attentions run and `torch.where`
        # picks per sample (no host sync, no data-dependent shapes, and an all-off batch works).
        out_on = self.attend(attn, image, kv, text, rope)
        out_off = self.call_inner(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb, {})
        return select_rows(plan.active, out_on, out_off)

    def call_inner(self, attn: nn.Module, hidden: Tensor, encoder: Optional[Tensor], mask: Any, rotary: Any,
                   kwargs: dict) -> Any:
        """The wrapped processor, called as the attention module calls it (rotary only when given); its stock
        computation through `dispatch_attention_fn` instead when a backend is set on this wrapper (SD3)."""
        if self.dispatches_itself(attn, mask, rotary, kwargs):
            return self.attend(attn, hidden, hidden, encoder, None)
        extra = dict(kwargs) if rotary is None else {**kwargs, "image_rotary_emb": rotary}
        return self.inner(attn, hidden, encoder, mask, **extra)

    def dispatches_itself(self, attn: nn.Module, mask: Any, rotary: Any, kwargs: dict) -> bool:
        """A backend is set here for a stock processor without a backend slot (SD3), and the call is one
        `joint_attention` reproduces (no mask, rotary table or extra arguments)."""
        return (self.own_backend() is not None and mask is None and rotary is None and not kwargs
                and not self.single_stream and type(self.inner).__name__ in STOCK_PROCESSORS
                and not getattr(attn, "fused_projections", False))

    def attend(self, attn: nn.Module, image_q: Tensor, image_kv: Tensor, text: Optional[Tensor],
               rope: Optional[JointRope]) -> Any:
        return joint_attention(attn, image_q, image_kv, text, text_added=not self.single_stream,
                               text_first=self.positions.pos_embed is not None, rope=rope,
                               backend=self._attention_backend, parallel_config=self._parallel_config)

    def rope(self, table: Any, n_text: int, image: Tensor, query_fn: Optional[TensorFn],
             key_fn: TensorFn) -> Optional[JointRope]:
        """Rotary tables: text rows as given; image queries/keys at the positions the plan maps them to."""
        if table is None:
            return None
        cos, sin = table
        ids = self.positions.ids
        if ids is None or cos.shape[0] != n_text + ids.shape[0]:
            raise RuntimeError("the rotary table of this Flux block does not match the captured image ids")
        batch = image.shape[0]
        ids = ids.to(image.device).expand(batch, -1, -1)
        full = (cos[n_text:].expand(batch, -1, -1), sin[n_text:].expand(batch, -1, -1))
        query = full if query_fn is None else self.positions.table_at(query_fn(ids), cos)
        key = query if key_fn is query_fn else self.positions.table_at(key_fn(ids), cos)
        return JointRope(text=(cos[:n_text], sin[:n_text]), query=query, key=key)


def install_single_stream_mlp(block: nn.Module, hook: BlockHook) -> list[Any]:
    """`merge_mlp` on a Flux single-stream block: `proj_mlp` + activation run on the reduced image tokens.

    (`proj_out` mixes attention and MLP channels of every token, so it stays at full length.)
    """

    def before(module: nn.Module, args: tuple) -> Optional[tuple]:
        x = args[0]
        n_text = x.shape[1] - image_token_count(hook)
        plan = hook.plan_for(x[:, n_text:])
        if not isinstance(plan, TokenPlan):
            return None
        return (torch.cat([x[:, :n_text], plan.reduce(x[:, n_text:])], dim=1),) + args[1:]

    def after(module: nn.Module, args: tuple, out: Tensor) -> Optional[Tensor]:
        plan = hook.plan
        if not isinstance(plan, TokenPlan):
            return None
        n_text = out.shape[1] - plan.kept_tokens
        return torch.cat([out[:, :n_text], plan.restore(out[:, n_text:])], dim=1)

    return [block.proj_mlp.register_forward_pre_hook(before), block.act_mlp.register_forward_hook(after)]


def check_placement(reducer: Reducer, options: Any) -> None:
    """Reject placements that would do nothing (or mean nothing) on MMDiT, before installing anything."""
    if reducer.plan_kind != "token":
        return
    if getattr(options, "merge_crossattn", False):
        raise ValueError("merge_crossattn has no meaning on SD3/Flux (text and image attend jointly and text "
                         "tokens are never reduced); use merge_attn and/or merge_mlp")
    if not getattr(options, "merge_attn", True) and not getattr(options, "merge_mlp", False):
        raise ValueError("merge_attn=False and merge_mlp=False would patch nothing; enable one of them")


def install_mmdit_block(site: BlockSite, backbone: Backbone, reducer: Reducer, options: Any, handle: PatchHandle,
                        positions: ImagePositions, stream: int = 0) -> None:
    """Hook one SD3/Flux block (random stream `stream`): its attention processor(s) and, with `merge_mlp`, its MLP."""
    block = site.block
    hook = BlockHook(reducer, options, handle.runtime, site.level, backbone.patch_size, metric_from_block_input=False,
                     stream=stream)
    handle.handles.append(block.register_forward_pre_hook(hook.on_block_start, with_kwargs=True))
    single = mmdit_kind(block) == "FluxSingleTransformerBlock"
    token_plan = reducer.plan_kind == "token"
    if not token_plan or getattr(options, "merge_attn", True):
        # SD3.5's second (image-only) attention shares the block's plan, like attn1/attn2 on SD.
        def make(inner: Any) -> MMDiTProcessor:
            return MMDiTProcessor(inner, hook, positions, single)

        for attn in (block.attn, getattr(block, "attn2", None)):
            if attn is not None:
                wrap_attention(attn, hook, True, handle, make=make)
    if token_plan and getattr(options, "merge_mlp", False):
        if single:
            handle.handles += install_single_stream_mlp(block, hook)
        else:
            handle.handles += install_mlp_hooks(block.ff, hook)
            if hasattr(block, "_chunk_size"):
                handle.handles.append(FeedForwardChunking(block))


def install_mmdit(backbone: Backbone, sites: list[BlockSite], reducer: Reducer, options: Any,
                  handle: PatchHandle) -> None:
    """Install a reducer in an SD3/Flux transformer: capture hook on the model, then each block."""
    check_placement(reducer, options)
    model = backbone.model
    flux = hasattr(model, "single_transformer_blocks")
    hint = handle.report.latent_size if flux else None
    positions = ImagePositions(pos_embed=model.pos_embed if flux else None, hint=hint)
    capture = (make_flux_capture_hook(handle.runtime, backbone.signature, positions) if flux
               else make_capture_hook(handle.runtime, backbone.signature))
    handle.handles.append(model.register_forward_pre_hook(capture, with_kwargs=True))
    for stream, site in enumerate(sites):
        install_mmdit_block(site, backbone, reducer, options, handle, positions, stream)
