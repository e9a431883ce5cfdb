"""The reducers on MMDiT backbones, as each family's description in `tomesd/families/` declares them: SD3 / SD3.5
(`JointTransformerBlock`), FLUX.1 and FLUX.2 (double-stream blocks, then single-stream blocks on the concatenated
sequence) and Qwen-Image (double-stream blocks).

Only image tokens are reduced: text tokens are never merged, pruned or downsampled, and every
query (text and image) is kept by ToDo/BiGain_TD. The reducers' own `plan(ctx, opts)` decide what
to reduce, exactly as on DiT; this module only routes image tokens through those plans.

Positions (rotary on FLUX.1, FLUX.2 and Qwen-Image, in each family's table format; SD3 adds absolute
positions before the first block, so it has no positional state inside blocks). A reduced token's
position is the same combination of its members' positions as its features are of their features: the
plan's own `reduce` / `kv_source` is applied to the image position ids and the model's rotary embedding
(`pos_embed`) is evaluated there. So a kept (SiTo, or unmerged ToMe) token or a nearest-exact ToDo key keeps its
exact grid position, a merged token sits at the centroid of the tokens averaged into it (the first-order
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
from tomesd.backbones import Backbone, BlockSite
from tomesd.families import Family
from tomesd.families.base import sigma_to_steps
from tomesd.hooks import BlockHook, FeedForwardChunking, install_mlp_hooks, make_capture_hook, per_sample_timesteps
from tomesd.install import PatchHandle, wrap_attention
from tomesd.joint_attention import JointRope, check_stock_processor, joint_attention
from tomesd.reducers.base import KVPlan, Reducer, TokenPlan

TensorFn = Callable[[Tensor], Tensor]


@dataclass
class ImagePositions:
    """Per-forward image position ids (N, axes) of a rotary-position call, the model's rotary embedding and
    its table format (`rope`, from the family description).

    `hint` is the token grid `apply_patch` reports (its `latent_size`, else Flux's 64x64 reference);
    `grids` maps a token count to the grid last validated for it in an eager call.
    """

    pos_embed: Optional[nn.Module] = None
    ids: Optional[Tensor] = None
    checked: Optional[tuple] = None  # (last validated img_ids tensor, its version, token count, grid)
    hint: Optional[tuple[int, int]] = None
    grids: dict = field(default_factory=dict)
    rope: Any = None  # the family's table format (`tomesd.families.RealRope`, Qwen-Image's `ComplexRope`)

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

    def table_at(self, positions: Tensor, like: Any) -> Any:
        """The rotary table (per sample) at float positions (B, M, axes), in the format and dtype of `like`."""
        return self.rope.at(self.pos_embed, positions, like)


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


def make_flux_capture_hook(runtime: Any, signature: Any, positions: ImagePositions, family: Family):
    """Denoiser pre-hook for `img_ids` families (FLUX.1, FLUX.2): token grid from `img_ids` (one id per declared
    rotary axis), per-sample timesteps on the 0-1000 scale."""

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        hidden, ids = bound["hidden_states"], bound.get("img_ids")
        if ids is None:
            raise ValueError(f"a {family.label} forward without `img_ids`: the image token grid is unknown")
        if bound.get("kv_cache_mode") is not None:  # FLUX.2 Klein: cached reference-image K/V, not one image grid
            raise NotImplementedError("token reduction does not support FLUX.2 reference-image KV caching "
                                      f"(kv_cache_mode={bound['kv_cache_mode']!r})")
        ids = ids[0] if ids.dim() == 3 else ids
        if ids.shape[-1] != len(family.rope_axes):
            raise ValueError(f"{family.label} image ids have {ids.shape[-1]} axes; the family declares "
                             f"{len(family.rope_axes)} ({', '.join(family.rope_axes)})")
        runtime.latent_size = positions.grid_of(ids, hidden.shape[1])
        runtime.start_call(hidden.device)
        # FLUX takes sigma = t / 1000 and multiplies by 1000 itself
        runtime.set_timesteps(per_sample_timesteps(sigma_to_steps(bound.get("timestep"), family), hidden.shape[0]))
        positions.ids = ids.float()

    return capture


def make_shapes_capture_hook(runtime: Any, signature: Any, positions: ImagePositions, family: Family):
    """Denoiser pre-hook for families whose grid comes from the call's shapes (Qwen-Image's `img_shapes`):
    token grid, image position ids and per-sample timesteps on the 0-1000 scale."""

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        hidden = bound["hidden_states"]
        grid, ids = family.read_shapes(bound, hidden.shape[1], positions.pos_embed)
        runtime.latent_size = grid
        runtime.start_call(hidden.device)
        runtime.set_timesteps(per_sample_timesteps(sigma_to_steps(bound.get("timestep"), family), hidden.shape[0]))
        positions.ids = ids

    return capture


def make_family_capture_hook(runtime: Any, backbone: Backbone, positions: ImagePositions):
    """The denoiser pre-hook for the backbone's family: by where its token grid is read from."""
    family = backbone.spec
    if family.grid == "ids":
        return make_flux_capture_hook(runtime, backbone.signature, positions, family)
    if family.grid == "shapes":
        return make_shapes_capture_hook(runtime, backbone.signature, positions, family)
    return make_capture_hook(runtime, backbone.signature)


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
    (reduced image tokens in, restored out). K/V plans and rotary token plans run `joint_attention`
    (the stock computation with separate image Q / K-V sources and per-sample rotary tables), or the
    family's own `single_attention` body for fused single-stream layers (FLUX.2).
    Attention runs through `dispatch_attention_fn` with the wrapped processor's backend (FLUX, Qwen-Image),
    or with one set on this wrapper (SD3, whose stock processor calls SDPA itself; then every path uses it).
    This class has the call signature of SD3 / FLUX.1 / FLUX.2 double-stream processors; the subclasses
    below take Qwen-Image's and FLUX.2 single-stream layers'.
    """

    def __init__(self, inner: Any, hook: BlockHook, positions: ImagePositions, single_stream: bool,
                 family: Family) -> None:
        self.inner, self.hook, self.positions, self.single_stream = inner, hook, positions, single_stream
        self.family = family

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, image_rotary_emb: Any = None, **kwargs: Any) -> Any:
        self.check_parallel()

        def stock(hidden: Tensor, encoder: Optional[Tensor], rotary: Any) -> Any:
            return self.call_inner(attn, hidden, encoder, attention_mask, rotary, kwargs)

        return self.reduce(attn, hidden_states, encoder_hidden_states, image_rotary_emb, stock,
                           attention_mask is not None, kwargs)

    def reduce(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor],
               image_rotary_emb: Any, stock: Callable[..., Any], masked: bool, kwargs: dict,
               text_mask: Optional[Tensor] = None) -> Any:
        """The reducing body shared by every signature: `stock(hidden, encoder, rotary)` calls the wrapped
        processor as the attention module called it (idle plans, SD3 token plans, gated-off samples)."""
        if self.single_stream:
            n_text = hidden_states.shape[1] - image_token_count(self.hook)
            text, image = hidden_states[:, :n_text], hidden_states[:, n_text:]
        else:
            text, image = encoder_hidden_states, hidden_states
            n_text = 0 if text is None else text.shape[1]
        plan = self.hook.plan_for(image)
        if plan is None:
            return stock(hidden_states, encoder_hidden_states, image_rotary_emb)
        method = self.hook.reducer.name
        if masked or kwargs:
            raise NotImplementedError(f"{method} on an MMDiT block does not support attention masks or extra "
                                      f"processor arguments ({sorted(kwargs)}); got them in {type(attn).__name__}")
        if isinstance(plan, TokenPlan) and image_rotary_emb is None and not self.single_stream:
            out = stock(plan.reduce(image), encoder_hidden_states, None)
            return map_image(out, plan.restore, False, n_text)
        check_stock_processor(self.inner, attn, method, self.family.processors)
        if isinstance(plan, TokenPlan):
            reduced = plan.reduce(image)
            rope = self.rope(image_rotary_emb, n_text, image, plan.reduce, plan.reduce)
            out = self.attend(attn, reduced, reduced, text, rope, text_mask)
            return map_image(out, plan.restore, self.single_stream, n_text)
        assert isinstance(plan, KVPlan)
        kv = plan.kv_source(image)  # per-sample settings (alpha schedule) index the full batch
        rope = self.rope(image_rotary_emb, n_text, image, None, plan.kv_source)
        if plan.active is None:
            return self.attend(attn, image, kv, text, rope, text_mask)
        # The gate is a device mask, as on the other backbones: both attentions run and `torch.where`
        # picks per sample (no host sync, no data-dependent shapes, and an all-off batch works).
        out_on = self.attend(attn, image, kv, text, rope, text_mask)
        out_off = stock(hidden_states, encoder_hidden_states, image_rotary_emb)
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
                and not self.single_stream and type(self.inner).__name__ in self.family.processors
                and not getattr(attn, "fused_projections", False))

    def attend(self, attn: nn.Module, image_q: Tensor, image_kv: Tensor, text: Optional[Tensor],
               rope: Optional[JointRope], text_mask: Optional[Tensor] = None) -> Any:
        """Attention of `image_q` (+ text) queries over `image_kv` (+ text) keys/values, as the stock processor."""
        if self.single_stream and self.family.single_attention is not None:
            return self.family.single_attention(
                attn, torch.cat([text, image_q], dim=1), None if image_kv is image_q else image_kv, text.shape[1],
                rope, self._attention_backend, self._parallel_config)
        return joint_attention(attn, image_q, image_kv, text, text_added=not self.single_stream,
                               text_first=self.family.text_first, rope=rope, backend=self._attention_backend,
                               parallel_config=self._parallel_config, text_mask=text_mask)

    def rope(self, table: Any, n_text: int, image: Tensor, query_fn: Optional[TensorFn],
             key_fn: TensorFn) -> Optional[JointRope]:
        """Rotary tables: text rows as given; image queries/keys at the positions the plan maps them to."""
        if table is None:
            return None
        form = self.positions.rope
        text_table, image_table = form.split(table, n_text)
        ids = self.positions.ids
        if ids is None or form.rows(image_table) != ids.shape[0]:
            raise RuntimeError(f"the rotary table of this {self.family.label} block does not match the captured "
                               "image positions")
        batch = image.shape[0]
        ids = ids.to(image.device).expand(batch, -1, -1)
        full = form.expand(image_table, batch)
        query = full if query_fn is None else self.positions.table_at(query_fn(ids), image_table)
        key = query if key_fn is query_fn else self.positions.table_at(key_fn(ids), image_table)
        return JointRope(text=text_table, query=query, key=key)


class TextMaskProcessor(MMDiTProcessor):
    """Qwen-Image's signature: the text mask (`encoder_hidden_states_mask`) is the processor's own argument,
    passed through to the wrapped processor and applied to the text keys of the reduced attention."""

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 encoder_hidden_states_mask: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                 image_rotary_emb: Any = None, **kwargs: Any) -> Any:
        self.check_parallel()

        def stock(hidden: Tensor, encoder: Optional[Tensor], rotary: Any) -> Any:
            return self.inner(attn, hidden, encoder, encoder_hidden_states_mask=encoder_hidden_states_mask,
                              attention_mask=attention_mask, image_rotary_emb=rotary, **kwargs)

        return self.reduce(attn, hidden_states, encoder_hidden_states, image_rotary_emb, stock,
                           attention_mask is not None, kwargs, text_mask=encoder_hidden_states_mask)


class FusedSingleProcessor(MMDiTProcessor):
    """FLUX.2 single-stream signature `(attn, hidden_states, attention_mask, image_rotary_emb)`: one fused
    layer (Q/K/V + MLP in, attention + MLP out) over the [text, image] sequence."""

    def __call__(self, attn: nn.Module, hidden_states: Tensor, attention_mask: Optional[Tensor] = None,
                 image_rotary_emb: Any = None, **kwargs: Any) -> Any:
        self.check_parallel()

        def stock(hidden: Tensor, encoder: Optional[Tensor], rotary: Any) -> Any:
            return self.inner(attn, hidden, attention_mask, rotary, **kwargs)

        return self.reduce(attn, hidden_states, None, image_rotary_emb, stock, attention_mask is not None, kwargs)


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


def check_placement(reducer: Reducer, options: Any, family: Family) -> None:
    """Reject placements that would do nothing (or mean nothing) on MMDiT, before installing anything."""
    if reducer.plan_kind != "token":
        return
    if getattr(options, "merge_crossattn", False):
        raise ValueError(f"merge_crossattn has no meaning on {family.label} (text and image attend jointly and text "
                         "tokens are never reduced); use merge_attn and/or merge_mlp")
    if not getattr(options, "merge_attn", True) and not getattr(options, "merge_mlp", False):
        raise ValueError("merge_attn=False and merge_mlp=False would patch nothing; enable one of them")


def processor_factory(family: Family, single: bool) -> type[MMDiTProcessor]:
    """The wrapper class with the call signature of the family's processor for this kind of block."""
    if single and family.single_attention is not None:
        return FusedSingleProcessor
    return TextMaskProcessor if family.text_mask else MMDiTProcessor


def install_mmdit_block(site: BlockSite, backbone: Backbone, reducer: Reducer, options: Any, handle: PatchHandle,
                        positions: ImagePositions, stream: int = 0) -> None:
    """Hook one MMDiT block (random stream `stream`): its attention processor(s) and, with `merge_mlp`, its MLP."""
    block, family = site.block, backbone.spec
    hook = BlockHook(reducer, options, handle.runtime, site.level, backbone.patch_size, metric_from_block_input=False,
                     stream=stream)
    handle.handles.append(block.register_forward_pre_hook(hook.on_block_start, with_kwargs=True))
    single = type(block).__name__ in family.single_blocks
    token_plan = reducer.plan_kind == "token"
    if not token_plan or getattr(options, "merge_attn", True):
        # SD3.5's second (image-only) attention shares the block's plan, like attn1/attn2 on SD.
        wrapper = processor_factory(family, single)

        def make(inner: Any) -> MMDiTProcessor:
            return wrapper(inner, hook, positions, single, family)

        for attn in (block.attn, getattr(block, "attn2", None)):
            if attn is not None:
                wrap_attention(attn, hook, True, handle, make=make)
    if token_plan and getattr(options, "merge_mlp", False):
        if single and hasattr(block, "proj_mlp"):
            handle.handles += install_single_stream_mlp(block, hook)
        elif not single:  # (FLUX.2's fused single-stream MLP is reduced with its attention)
            handle.handles += install_mlp_hooks(getattr(block, family.image_mlp), hook)
            if hasattr(block, "_chunk_size"):
                handle.handles.append(FeedForwardChunking(block))


def install_mmdit(backbone: Backbone, sites: list[BlockSite], reducer: Reducer, options: Any,
                  handle: PatchHandle) -> None:
    """Install a reducer in an MMDiT transformer as its family describes: capture hook on the model, then each block."""
    family = backbone.spec
    check_placement(reducer, options, family)
    model = backbone.model
    rotary = family.positions == "rotary"
    hint = handle.report.latent_size if family.grid == "ids" else None
    positions = ImagePositions(pos_embed=model.pos_embed if rotary else None, hint=hint, rope=family.rope)
    capture = make_family_capture_hook(handle.runtime, backbone, positions)
    handle.handles.append(model.register_forward_pre_hook(capture, with_kwargs=True))
    for stream, site in enumerate(sites):
        install_mmdit_block(site, backbone, reducer, options, handle, positions, stream)
