"""The reducers on video transformers (Wan 2.x, `tomesd/families/wan.py`): per-frame (or spatio-temporal)
plans on a frames x rows x columns token grid.

A call's video tokens are frame-major, so (B, T * N, C) is viewed as (B * T, N, C) and every reducer
plans on the frame's H x W grid as on DiT: each frame is its own sample with its own destinations
(merging never crosses frames) and ToDo/BiGain_TD downsample K/V within each frame. With `st` frames per
block, ToMe / SiTo plan on units of `st` frames instead, whose blocks are st x sy x sx. The units' reduced
tokens are put back in one sequence per video, so self-attention still spans all frames.
Timesteps are per sample, repeated for each of its units (Wan 2.2's per-token timesteps count as the
sample's largest: the noise level of the frames it generates), so gates and schedules act per video.
Rotary positions move as on FLUX: a merged token at its members' centroid, a downsampled K/V token at
its window's positions, evaluated with the model's own rotary function. Cross-attention to the text is
untouched unless `merge_crossattn` reduces its queries (text K/V are never reduced).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from tomesd.attention_backends import BackendSlots
from tomesd.backbones import Backbone, BlockSite
from tomesd.families import Family, registered
from tomesd.families.wan import frame_ids, self_attention
from tomesd.hooks import BlockHook, per_sample_timesteps
from tomesd.install import PatchHandle, wrap_attention
from tomesd.joint_attention import check_stock_processor
from tomesd.options import check_positive_int
from tomesd.reducers.base import KVPlan, Reducer, TokenPlan
from tomesd.report import summarize_levels

TensorFn = Callable[[Tensor], Tensor]
# Methods whose plan is a block partition of the grid, so a unit of `st` frames is just a taller grid; the
# Laplacian of BiGain_TM and the K/V downsampling of ToDo / BiGain_TD are spatial operators on one frame.
SPATIO_TEMPORAL = ("tome", "sito")


@dataclass
class VideoState:
    """Per-forward facts of a video call (frames, per-frame grid, token positions (T * H * W, 3)), the model's
    rotary module and the patch's frames per block `st` (1: every frame on its own).

    A plan acts on units of `st` consecutive frames: `split` views a (B, T * N, C) video sequence as
    (B * T / st, st * N, C), each unit a grid of H * st rows (a frame's row r, then the same row of the next
    frame, ...) by W columns, so an sy * st by sx block of that grid is an st x sy x sx spatio-temporal block.
    """

    rope: Optional[nn.Module] = None
    st: int = 1
    frames: int = 1
    rows: int = 0
    cols: int = 0
    ids: Optional[Tensor] = None

    @property
    def units(self) -> int:
        return self.frames // self.st

    def split(self, x: Tensor) -> Tensor:
        """(B, T * N, C) -> (B * T / st, st * N, C) in the unit's grid order."""
        batch, channels = x.shape[0], x.shape[-1]
        if self.st == 1:
            return x.reshape(batch * self.frames, -1, channels)
        x = x.reshape(batch, self.units, self.st, self.rows, self.cols, channels).transpose(2, 3)
        return x.reshape(batch * self.units, -1, channels)

    def join(self, x: Tensor, batch: int) -> Tensor:
        """Inverse of `split`: (B * T / st, st * N, C) -> (B, T * N, C)."""
        if self.st == 1:
            return x.reshape(batch, -1, x.shape[-1])
        x = x.reshape(batch, self.units, self.rows, self.st, self.cols, x.shape[-1]).transpose(2, 3)
        return x.reshape(batch, -1, x.shape[-1])

    def apply(self, fn: TensorFn, x: Tensor) -> Tensor:
        """A plan's `reduce` / `kv_source` on a video sequence: (B, T * N, C) -> (B, units * M, C)."""
        return fn(self.split(x)).reshape(x.shape[0], -1, x.shape[-1])

    def restore(self, fn: TensorFn, x: Tensor) -> Tensor:
        """A plan's `restore` on reduced tokens (B, units * M, C) -> (B, T * N, C)."""
        return self.join(fn(x.reshape(x.shape[0] * self.units, -1, x.shape[-1])), x.shape[0])


def unit_timesteps(timestep: Any, batch: int, units: int) -> Optional[Tensor]:
    """(B * units,) timesteps: each sample's, repeated for its units ((B, S) per-token timesteps: the largest)."""
    if timestep is None:
        return None
    t = torch.as_tensor(timestep)
    if t.dim() == 2:
        t = t.amax(dim=1)
    return per_sample_timesteps(t, batch).repeat_interleave(units)


def make_video_capture_hook(runtime: Any, signature: Any, video: VideoState, patch: tuple[int, int, int]):
    """Denoiser pre-hook: the unit's token grid (H * st, W), frame count, token positions, per-unit timesteps."""

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        sample = bound["hidden_states"]  # (B, C, F, H, W)
        frames, rows, cols = (sample.shape[2 + i] // patch[i] for i in range(3))
        if frames % video.st:
            raise ValueError(f"st={video.st} frames per block does not divide this call's {frames} latent frames")
        video.frames, video.rows, video.cols = frames, rows, cols
        runtime.latent_size = (rows * video.st, cols)
        runtime.start_call(sample.device)
        runtime.set_timesteps(unit_timesteps(bound.get("timestep"), sample.shape[0], video.units))
        video.ids = frame_ids(frames, rows, cols, sample.device)

    return capture


class VideoAttnProcessor(BackendSlots):
    """Wraps a video block's attention processor; reduces each unit's tokens (or K/V) around it.

    Self-attention (`attn1`): token plans run the model's attention on every unit's reduced tokens with
    rotary tables at the reduced positions; K/V plans keep every query and attend to K/V projected from
    each frame's downsampled tokens. Cross-attention (`attn2`, `merge_crossattn`): the wrapped processor on
    reduced queries. Idle plans call the wrapped processor unchanged.
    """

    def __init__(self, inner: Any, hook: BlockHook, video: VideoState, family: Family, self_attn: bool) -> None:
        self.inner, self.hook, self.video, self.family, self.self_attn = inner, hook, video, family, self_attn

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, rotary_emb: Any = None, **kwargs: Any) -> Tensor:
        self.check_parallel()
        video = self.video
        plan = self.hook.plan_for(video.split(hidden_states))
        if plan is None or (not self.self_attn and not isinstance(plan, TokenPlan)):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if not self.self_attn:  # cross-attention: reduced queries, the text keys/values untouched
            out = self.inner(attn, video.apply(plan.reduce, hidden_states), encoder_hidden_states, attention_mask,
                             rotary_emb, **kwargs)
            return video.restore(plan.restore, out)
        method = self.hook.reducer.name
        if encoder_hidden_states is not None or attention_mask is not None or kwargs:
            raise NotImplementedError(f"{method} on a {self.family.label} self-attention does not support "
                                      f"attention masks or extra processor arguments ({sorted(kwargs)})")
        check_stock_processor(self.inner, attn, method, self.family.processors)
        ids = video.ids.to(hidden_states.device).expand(hidden_states.shape[0], -1, -1)
        if isinstance(plan, TokenPlan):
            reduced = video.apply(plan.reduce, hidden_states)
            rope = self.table(video.apply(plan.reduce, ids), rotary_emb)
            return video.restore(plan.restore, self.attend(attn, reduced, reduced, rope, rope))
        assert isinstance(plan, KVPlan)
        kv = video.apply(plan.kv_source, hidden_states)
        out = self.attend(attn, hidden_states, kv, rotary_emb, self.table(video.apply(plan.kv_source, ids), rotary_emb))
        if plan.active is None:
            return out
        # Gates are per video (every unit of a sample has its timestep): a device mask, both attentions run.
        full = self.inner(attn, hidden_states, None, None, rotary_emb)
        active = plan.active.to(out.device).view(hidden_states.shape[0], video.units)[:, 0]
        return torch.where(active.view(-1, 1, 1), out, full)

    def table(self, positions: Tensor, rotary: Any) -> Any:
        """The model's rotary (cos, sin) at float positions (B, M, 3); None when the call has no rotary table."""
        return None if rotary is None else self.family.rope.at(self.video.rope, positions, rotary)

    def attend(self, attn: nn.Module, x_q: Tensor, x_kv: Tensor, rope_q: Any, rope_k: Any) -> Tensor:
        return self_attention(attn, x_q, x_kv, rope_q, rope_k, backend=self._attention_backend,
                              parallel_config=self._parallel_config)


def install_video_mlp(ff: nn.Module, hook: BlockHook, video: VideoState) -> list[Any]:
    """`merge_mlp`: the feed-forward runs on every unit's reduced tokens (token plans only)."""

    def before(module: nn.Module, args: tuple) -> Optional[tuple]:
        plan = hook.plan_for(video.split(args[0]))
        return (video.apply(plan.reduce, args[0]),) + args[1:] if isinstance(plan, TokenPlan) else None

    def after(module: nn.Module, args: tuple, output: Tensor) -> Optional[Tensor]:
        plan = hook.plan
        return video.restore(plan.restore, output) if isinstance(plan, TokenPlan) else None

    return [ff.register_forward_pre_hook(before), ff.register_forward_hook(after)]


def check_temporal_block(backbone: Backbone, method: str, st: Optional[int]) -> int:
    """Frames per block (`st`) for `apply_patch`: video families only, ToMe / SiTo beyond 1; ValueError naming
    the option and the family otherwise."""
    if st is None:
        return 1
    if backbone.family != "video":
        what = backbone.spec.label if backbone.spec is not None else backbone.family
        videos = ", ".join(f.label for f in registered() if f.kind == "video")
        raise ValueError(f"st={st!r} (frames per spatio-temporal block) applies to video families ({videos}); "
                         f"{type(backbone.model).__name__} ({what}) is an image model")
    check_positive_int("st", st)
    if st > 1 and method not in SPATIO_TEMPORAL:
        raise ValueError(f"st={st} on {backbone.spec.label}: spatio-temporal blocks apply to "
                         f"{' and '.join(SPATIO_TEMPORAL)}; {method} reduces within each frame (its Laplacian or "
                         "K/V downsampling is spatial), leave st at 1")
    return st


def report_units(handle: PatchHandle, backbone: Backbone, sites: list[BlockSite], reducer: Reducer, options: Any,
                 st: int) -> None:
    """Say in the report that token counts are per frame (or per unit of `st` frames, counted on its grid)."""
    report = handle.report
    report.kept_label += " per frame" if st == 1 else f" per {st} frames"
    if st > 1:
        report.options["st"] = st
        if report.latent_size is not None:
            unit = dataclasses.replace(options, sy=options.sy * st)
            size = (report.latent_size[0] * st, report.latent_size[1])
            report.levels = summarize_levels(backbone, sites, reducer, unit, size)


def check_video_placement(reducer: Reducer, options: Any) -> None:
    """Reject placements that would patch nothing, before installing anything."""
    if reducer.plan_kind == "token" and not any(getattr(options, name, default) for name, default in
                                                 (("merge_attn", True), ("merge_crossattn", False),
                                                  ("merge_mlp", False))):
        raise ValueError("merge_attn, merge_crossattn and merge_mlp are all False: the patch would do nothing")


def install_video_block(site: BlockSite, backbone: Backbone, reducer: Reducer, options: Any, handle: PatchHandle,
                        video: VideoState, stream: int) -> None:
    """Hook one video block: self-attention, with `merge_crossattn` the cross-attention queries, with `merge_mlp`
    the feed-forward."""
    block, family = site.block, backbone.spec
    hook = BlockHook(reducer, options, handle.runtime, site.level, backbone.patch_size, metric_from_block_input=False,
                     stream=stream)
    handle.handles.append(block.register_forward_pre_hook(hook.on_block_start, with_kwargs=True))
    token_plan = reducer.plan_kind == "token"
    wanted = [(block.attn1, True)] if not token_plan or getattr(options, "merge_attn", True) else []
    if token_plan and getattr(options, "merge_crossattn", False):
        wanted.append((block.attn2, False))
    for attn, self_attn in wanted:
        def make(inner: Any, self_attn: bool = self_attn) -> VideoAttnProcessor:
            return VideoAttnProcessor(inner, hook, video, family, self_attn)

        wrap_attention(attn, hook, self_attn, handle, make=make)
    if token_plan and getattr(options, "merge_mlp", False):
        handle.handles += install_video_mlp(getattr(block, family.image_mlp), hook, video)


def install_video(backbone: Backbone, sites: list[BlockSite], reducer: Reducer, options: Any,
                  handle: PatchHandle) -> None:
    """Install a reducer in a video transformer: the capture hook on the model, then each block (own stream).

    With `st` frames per block (`handle.temporal_block`) the reducer plans on units of `st` frames whose grid is
    H * st rows by W columns, so its `sy` becomes `sy * st`."""
    check_video_placement(reducer, options)
    st = handle.temporal_block
    report_units(handle, backbone, sites, reducer, options, st)
    if st > 1:
        options = dataclasses.replace(options, sy=options.sy * st)
    model = backbone.model
    video = VideoState(rope=model.rope, st=st)
    capture = make_video_capture_hook(handle.runtime, backbone.signature, video, tuple(model.config.patch_size))
    handle.handles.append(model.register_forward_pre_hook(capture, with_kwargs=True))
    for stream, site in enumerate(sites):
        install_video_block(site, backbone, reducer, options, handle, video, stream)
