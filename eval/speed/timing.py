"""Instruments for `eval.speed`: timed calls and CUDA-graph replays, timed attention layers, reducer phases,
the reducers' own FLOPs, and patching a model with one setting (ours or upstream tomesd).

`eval.speed.run` times a case with them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import time
from typing import Any, Callable, Iterator, Optional

import torch

import tomesd
from tomesd.backbones import find_backbone
from tomesd.reducers.base import KVPlan, TokenPlan

from eval.flops import FlopSpans

from .cases import Setting
from .upstream import load_upstream

PHASES = ("plan", "score", "match", "reduce", "restore", "kv")
BREAKDOWN_CALLS = 3  # instrumented calls per setting; the breakdown is their per-phase median


# ----------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------

class Spans:
    """Collects (start, end) marks per key; CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[tuple[str, str], list] = {}
        self.block: str = ""

    def now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextlib.contextmanager
    def span(self, phase: str, block: Optional[str] = None) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.marks.setdefault((block if block is not None else self.block, phase), []).append((start, self.now()))

    def totals_ms(self) -> dict[tuple[str, str], float]:
        """(block, phase) -> total milliseconds (synchronises the GPU)."""
        if self.cuda:
            torch.cuda.synchronize()
            return {k: sum(a.elapsed_time(b) for a, b in v) for k, v in self.marks.items()}
        return {k: 1e3 * sum(b - a for a, b in v) for k, v in self.marks.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(model: torch.nn.Module, args: tuple, kwargs: dict, device: torch.device) -> float:
    """Milliseconds of one forward (CUDA events on GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        model(*args, **kwargs)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    model(*args, **kwargs)
    return 1e3 * (time.perf_counter() - t0)


def capture_cuda_graph(model: torch.nn.Module, args: tuple, kwargs: dict, device: torch.device) -> Callable[[], None]:
    """Capture one forward (fixed shapes) in a CUDA graph after two warm-up calls on a side stream.

    A patched forward is capturable: no host sync, no `torch.Generator`, no data-dependent shape
    (the random stream's call counter is a device tensor advanced inside the graph). Returns `replay`.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            model(*args, **kwargs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(*args, **kwargs)
    return graph.replay


def timed_replay(replay: Callable[[], None], device: torch.device) -> float:
    """Milliseconds of one CUDA-graph replay (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync(device)
    start.record()
    replay()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


class TimedProcessor:
    """Attention processor wrapper that times the processor it wraps under `spans`."""

    def __init__(self, inner: Any, spans: Spans, block: str) -> None:
        self.inner, self.spans, self.block = inner, spans, block

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.spans.block = self.block
        with self.spans.span("attn", self.block):
            return self.inner(attn, hidden_states, *args, **kwargs)


def attention_name(block: torch.nn.Module) -> str:
    """The self-attention of a block: `attn1` (BasicTransformerBlock) or `attn` (SD3/Flux MMDiT blocks)."""
    return "attn1" if hasattr(block, "attn1") else "attn"


@contextlib.contextmanager
def timed_attn1(model: torch.nn.Module, spans: Spans) -> Iterator[None]:
    """Time every transformer block's attn1 (whatever processor is installed) while active."""
    saved = []
    for site in find_backbone(model).sites:
        attn = getattr(site.block, attention_name(site.block))
        saved.append((attn, attn.processor))
        attn.processor = TimedProcessor(attn.processor, spans, site.name)
    try:
        yield
    finally:
        for attn, processor in saved:
            attn.processor = processor


def _timed_fn(fn: Callable, spans: Spans, phase: str) -> Callable:
    def wrapper(*args, **kwargs):
        with spans.span(phase):
            return fn(*args, **kwargs)
    wrapper.__wrapped__ = fn
    return wrapper


# Engine functions whose time is reported as a phase of planning (module, attribute, phase).
PHASE_FUNCTIONS = [
    ("tomesd.reducers.lgtm", "laplacian_scores", "score"),
    ("tomesd.reducers.sito", "cosine_graph", "score"),
    ("tomesd.reducers.sito", "graph_degrees", "score"),
    ("tomesd.reducers.sito", "base_token_scores", "score"),
    ("tomesd.reducers.tome", "bipartite_merge_plan", "match"),
    ("tomesd.reducers.lgtm", "bipartite_merge_plan", "match"),
]


@contextlib.contextmanager
def timed_reducers(spans: Spans) -> Iterator[None]:
    """Time every reducer's `plan`, the listed scoring/matching functions and the plan closures."""
    saved: list[tuple[Any, str, Any]] = []

    def swap(owner: Any, name: str, new: Any) -> None:
        saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, new)

    for module_name, attr, phase in PHASE_FUNCTIONS:
        module = importlib.import_module(module_name)
        if attr in module.__dict__:
            swap(module, attr, _timed_fn(module.__dict__[attr], spans, phase))
    for method in tomesd.list_methods():
        cls = tomesd.get_reducer(method)
        original = cls.__dict__["plan"].__func__

        def plan(ctx, opts, _original=original):
            with spans.span("plan"):
                result = _original(ctx, opts)
            if isinstance(result, TokenPlan):
                return dataclasses.replace(result, reduce=_timed_fn(result.reduce, spans, "reduce"),
                                           restore=_timed_fn(result.restore, spans, "restore"))
            if isinstance(result, KVPlan):
                return dataclasses.replace(result, kv_source=_timed_fn(result.kv_source, spans, "kv"))
            return result

        swap(cls, "plan", staticmethod(plan))
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def count_reducer_flops(model: torch.nn.Module, setting: Setting, args: tuple, kwargs: dict, seed: int) -> int:
    """FLOPs of the reducers' own work (plan, reduce/restore, K/V source) in one patched call.

    Read against the reduced layers' FLOPs this is the overhead's floor: the matching's S x D
    similarities, SiTo's graph, the Laplacian; gathers and sorts count 0.
    """
    spans = FlopSpans()
    with torch.no_grad(), patched(model, setting, seed, None), timed_reducers(spans):
        model(*args, **kwargs)
    return sum(v for (_, phase), v in spans.counts.items() if phase in ("plan", "reduce", "restore", "kv"))


# ----------------------------------------------------------------------------------------------
# Patching
# ----------------------------------------------------------------------------------------------

def load_upstream_module() -> Optional[Any]:
    try:
        return load_upstream()
    except Exception:  # pragma: no cover - an unusable upstream copy is reported as absent
        return None


@contextlib.contextmanager
def patched(model: torch.nn.Module, setting: Setting, seed: int, upstream: Optional[Any]) -> Iterator[Optional[Any]]:
    """Apply `setting` for the duration of the block (baseline: nothing); yields the report."""
    if setting.method == "none":
        yield None
        return
    if setting.method == "upstream":
        kw = setting.kwargs
        upstream.apply_patch(model, ratio=kw["ratio"], max_downsample=kw.get("max_downsample", 1))
        try:
            yield None
        finally:
            upstream.remove_patch(model)
        return
    report = tomesd.apply_patch(model, method=setting.method, seed=seed, **setting.kwargs)
    try:
        yield report
    finally:
        tomesd.remove_patch(model)


def reduced_blocks(model: torch.nn.Module, setting: Setting) -> list[str]:
    """Names of the blocks a setting reduces (upstream: those of the equivalent ToMe setting)."""
    if setting.method == "none":
        return []
    method = "tome" if setting.method == "upstream" else setting.method
    report = tomesd.apply_patch(model, method=method, **setting.kwargs)
    tomesd.remove_patch(model)
    return list(report.blocks)


def token_summary(report: Any) -> tuple[str, str]:
    """'4096' / '1229' style strings per level from a PatchReport (at the config's size)."""
    if report is None:
        return "", ""
    levels = sorted(report.levels.items())
    return ("/".join(str(s.tokens) for _, s in levels), "/".join(str(s.kept) for _, s in levels))
