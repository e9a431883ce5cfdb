"""Speed, FLOPs and memory of token reduction against the unpatched SDPA baseline (protocol §3).

For each model x resolution x batch ("case") the baseline and every method setting are timed in
the same process, interleaved round by round (each round times one call of every setting in a
rotated order), so slow drifts of a shared machine hit all settings alike. Per row:

* latency: median over rounds; speed-up = median over rounds of baseline / patched time in the
  same round (CUDA events on GPU, `time.perf_counter` on CPU, after warm-up calls);
* FLOPs per call (`eval.flops`, SDPA included) and the FLOP-ideal speed-up baseline / patched,
  and measured / ideal;
* attention share: the part of the baseline's time spent in the attn1 layers the setting reduces;
* reducer overhead: planning (scoring, matching, index building) plus reduce / restore
  (gather / scatter) or the K/V downsample, from one instrumented call, as a share of the
  baseline time of the layers they reduce; the same per block goes to `blocks.csv`;
* peak memory: CUDA `max_memory_allocated` above the resting level (n/a on CPU);
* upstream tomesd 0.1.3 (when unpacked, see `eval.upstream`) at every ToMe setting, as its own
  rows and as the `upstream x` column of the matching ToMe row.

Weights are random (`eval.model_zoo`): timing does not depend on them, and every table says so.

    python -m eval.speed --preset cpu-small --out results/speed/cpu-small
    python -m eval.speed --preset gpu --out results/speed/gpu            # fp16, CUDA
    python -m eval.speed --models sd2@w0.25 --methods tome todo --ratios 0.5 --resolutions 512 --batches 2
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

import tomesd
from tomesd.backbones import find_backbone
from tomesd.reducers.base import KVPlan, TokenPlan

from .flops import count_flops
from .model_zoo import ModelSpec, build_model, get_spec, make_inputs

__all__ = ["DEFAULTS", "PRESETS", "Setting", "Case", "make_settings", "benchmark_case", "run_benchmark",
           "markdown_table", "COLUMNS", "main"]

RANDOM_WEIGHTS_NOTE = "random weights (architecture-only timing; no checkpoint loaded)"
METHODS = ("tome", "bigain_tm", "todo", "bigain_td", "sito", "upstream")
RATIO_METHODS = ("tome", "bigain_tm", "sito", "upstream")
DF_METHODS = ("todo", "bigain_td")

# Columns of speed.csv, in order (tests check them).
COLUMNS = [
    "model", "model_note", "family", "resolution", "latent", "batch", "dtype", "device", "attention", "engine",
    "method", "setting", "options", "blocks", "tokens", "reduced_tokens", "latency_ms", "baseline_ms",
    "speedup", "flops_g", "baseline_flops_g", "ideal_speedup", "measured_over_ideal", "attn_share",
    "attn_base_ms", "attn_patched_ms", "overhead_ms", "overhead_share", "plan_ms", "score_ms", "match_ms",
    "reduce_ms", "restore_ms", "kv_ms", "peak_mem_mb", "upstream_speedup", "repeats",
]
BLOCK_COLUMNS = ["model", "resolution", "batch", "setting", "block", "tokens", "attn_base_ms", "attn_patched_ms",
                 "plan_ms", "score_ms", "match_ms", "reduce_ms", "restore_ms", "kv_ms", "overhead_ms",
                 "overhead_share"]
PHASES = ("plan", "score", "match", "reduce", "restore", "kv")


# ----------------------------------------------------------------------------------------------
# Settings and cases
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One method configuration; `method="upstream"` is upstream tomesd's ToMe."""

    method: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def engine(self) -> str:
        return {"none": "baseline", "upstream": "upstream"}.get(self.method, "bigain")

    @property
    def label(self) -> str:
        if self.method == "none":
            return "baseline (SDPA)"
        short = {"ratio": "r", "df": "df", "alpha": "a", "max_downsample": "md", "blocks": "blocks"}
        parts = []
        for key, value in self.options:
            if key == "max_downsample" and value == 1:
                continue
            parts.append(f"{short.get(key, key)}={value}")
        return " ".join([self.method, *parts])

    def tome_equivalent(self) -> "Setting":
        """The ToMe setting this upstream setting mirrors (and vice versa)."""
        return Setting("tome" if self.method == "upstream" else "upstream", self.options)


BASELINE = Setting("none")


def make_settings(family: str, methods: Sequence[str] = METHODS, ratios: Sequence[float] = (0.3, 0.5, 0.7),
                  dfs: Sequence[int] = (2, 4), max_downsamples: Sequence[int] = (1,),
                  block_patterns: Sequence[str] = ("published",), alpha: float = 0.5) -> list[Setting]:
    """The method x setting grid for one model family (U-Net: max_downsample; DiT/PixArt: blocks)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    placements: list[tuple[tuple[str, Any], ...]]
    if family == "unet":
        placements = [(("max_downsample", md),) for md in max_downsamples]
    else:
        placements = [() if p == "published" else (("blocks", p),) for p in block_patterns]
    settings = []
    for placement in placements:
        for method in methods:
            if method == "upstream" and family != "unet":
                continue  # upstream tomesd only patches SD U-Nets
            if method in RATIO_METHODS:
                settings += [Setting(method, (("ratio", r),) + placement) for r in ratios]
            else:
                extra = (("alpha", alpha),) if method == "bigain_td" else ()
                settings += [Setting(method, (("df", d),) + extra + placement) for d in dfs]
    return settings


@dataclass(frozen=True)
class Case:
    """One model (possibly shrunk) at one resolution and batch, with the settings to time."""

    model: str  # "name[@wX][@LN]", e.g. "sd2@w0.25", "dit-xl-2-256@L4"
    resolution: int
    batch: int
    settings: tuple[Setting, ...]


def parse_model(name: str) -> ModelSpec:
    """`sd2`, `sd2@w0.25` (U-Net widths x0.25), `dit-xl-2-256@L4` (4 blocks)."""
    base, *mods = name.split("@")
    width = layers = None
    for mod in mods:
        if mod.startswith("w"):
            width = float(mod[1:])
        elif mod.startswith("L"):
            layers = int(mod[1:])
        else:
            raise ValueError(f"bad model modifier {mod!r} in {name!r}: use @wX (U-Net width) or @LN (layers)")
    return get_spec(base, num_layers=layers, width=width)


def grid(models: Sequence[str], resolutions: Sequence[int], batches: Sequence[int], **setting_args: Any) -> list[Case]:
    """Every model x resolution x batch with the same setting grid."""
    cases = []
    for model in models:
        family = parse_model(model).family
        settings = tuple(make_settings(family, **setting_args))
        cases += [Case(model, res, b, settings) for res in resolutions for b in batches]
    return cases


def preset_cases(name: str) -> list[Case]:
    """Named benchmark grids (see docs/benchmarks.md for what each one runs)."""
    if name == "tiny":  # tests: one setting of every method on tiny models
        one = dict(ratios=(0.5,), dfs=(2,))
        return grid(["tiny-sd"], [128], [2], **one) + grid(["tiny-dit"], [128], [2], **one)
    if name == "cpu-small":  # a few minutes per case on 2 shared cores: fewer settings, small sizes
        md1 = (("max_downsample", 1),)
        sd = (Setting("tome", (("ratio", 0.5),) + md1), Setting("tome", (("ratio", 0.7),) + md1),
              Setting("bigain_tm", (("ratio", 0.7),) + md1), Setting("todo", (("df", 2),) + md1),
              Setting("bigain_td", (("df", 2), ("alpha", 0.5)) + md1), Setting("sito", (("ratio", 0.7),) + md1),
              Setting("sito", (("ratio", 0.7), ("graph", "blocks")) + md1),
              Setting("upstream", (("ratio", 0.5),) + md1), Setting("upstream", (("ratio", 0.7),) + md1))
        dit = (Setting("tome", (("ratio", 0.7),)), Setting("bigain_tm", (("ratio", 0.7),)), Setting("todo", (("df", 2),)),
               Setting("bigain_td", (("df", 2), ("alpha", 0.5))), Setting("sito", (("ratio", 0.7),)))
        return [Case("sd2@w0.25", 256, 1, sd), Case("sd2@w0.25", 512, 1, sd), Case("dit-xl-2-256@L4", 256, 2, dit)]
    if name == "cpu-sd2-512":  # the real SD 2 U-Net (865M) at 512 px on one CPU thread, key settings
        md1 = (("max_downsample", 1),)
        sd = (Setting("tome", (("ratio", 0.7),) + md1), Setting("bigain_tm", (("ratio", 0.7),) + md1),
              Setting("todo", (("df", 2),) + md1), Setting("bigain_td", (("df", 2), ("alpha", 0.5)) + md1),
              Setting("sito", (("ratio", 0.7), ("graph", "blocks")) + md1), Setting("upstream", (("ratio", 0.7),) + md1))
        return [Case("sd2", 512, 1, sd)]
    if name == "gpu":  # fp16 on one H100; sized (estimated, not yet run) for <= 8 minutes
        full = dict(ratios=(0.3, 0.5, 0.7), dfs=(2, 4))
        dit = dict(block_patterns=("published", "all"), **full)
        cases = grid(["sd2"], [512, 768, 1024], [2], max_downsamples=(1, 2), **full)  # the CFG pair
        cases += grid(["sd2"], [512], [1, 16], **full)  # single sample; the classifier's mixed-t batch
        cases += grid(["sd15"], [512], [2], **full)
        cases += grid(["sdxl"], [1024], [2], max_downsamples=(2,), **full)  # SDXL has no attention at ds=1
        cases += grid(["dit-xl-2-256"], [256], [2, 16], **dit) + grid(["dit-xl-2-512"], [512], [2], **dit)
        cases += grid(["pixart-512"], [512], [2], **dit) + grid(["pixart-1024"], [1024], [2], **dit)
        return cases
    raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")


PRESETS = {
    "tiny": "tiny SD U-Net and DiT, one setting per method (tests)",
    "cpu-small": "SD 2 base layout at widths x0.25 (channels 80/160/320/320, head dim 16) at 256 and 512 px, "
                 "batch 1, max_downsample 1: ToMe 0.5/0.7, BiGain_TM 0.7, ToDo df 2, BiGain_TD df 2, SiTo 0.7 "
                 "(and graph=blocks), upstream 0.5/0.7; DiT-XL/2-256 with 4 of 28 blocks at 256 px, batch 2 "
                 "(CFG pair), published pattern (blocks 1-3): ratio 0.7 / df 2",
    "cpu-sd2-512": "the full-width SD 2 base U-Net at 512 px, batch 1, max_downsample 1: ToMe / BiGain_TM / "
                   "SiTo (graph=blocks) at 0.7, ToDo / BiGain_TD at df 2, upstream ToMe 0.7",
    "gpu": "issue grid, fp16 on CUDA: SD 2 at 512/768/1024 (CFG pair, max_downsample 1 and 2) and at 512 "
           "with batch 1 and 16; SD 1.5 512; SDXL 1024 (max_downsample 2); DiT-XL/2 256 (batch 2, 16) and 512; "
           "PixArt-alpha 512 and 1024 (published and all blocks); ratios 0.3/0.5/0.7, df 2/4, upstream at "
           "every ToMe setting",
}

# Flag values a preset implies unless given on the command line.
PRESET_FLAGS: dict[str, dict[str, Any]] = {
    "tiny": {"repeats": 1, "warmup": 0, "threads": 1},
    "cpu-small": {"repeats": 5, "warmup": 1, "threads": 1},
    "cpu-sd2-512": {"repeats": 3, "warmup": 1, "threads": 1},
    "gpu": {"device": "cuda", "dtype": "float16", "repeats": 10, "warmup": 3},
}

DEFAULTS: dict[str, Any] = {
    "preset": None, "models": None, "methods": list(METHODS), "ratios": [0.3, 0.5, 0.7], "dfs": [2, 4],
    "max_downsample": [1], "blocks": ["published"], "resolutions": None, "batches": None, "dtype": "float32",
    "device": "cpu", "repeats": 5, "warmup": 1, "out": "results/speed", "upstream": True, "breakdown": True,
    "flops_batch1": True, "seed": 0, "threads": None,
}


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


class TimedProcessor:
    """Attention processor wrapper that times the processor it wraps under `spans`."""

    def __init__(self, inner: Any, spans: Spans, block: str) -> None:
        self.inner, self.spans, self.block = inner, spans, block

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.spans.block = self.block
        with self.spans.span("attn", self.block):
            return self.inner(attn, hidden_states, *args, **kwargs)


@contextlib.contextmanager
def timed_attn1(model: torch.nn.Module, spans: Spans) -> Iterator[None]:
    """Time every transformer block's attn1 (whatever processor is installed) while active."""
    saved = []
    for site in find_backbone(model).sites:
        attn = site.block.attn1
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


# ----------------------------------------------------------------------------------------------
# Patching
# ----------------------------------------------------------------------------------------------

def load_upstream_module() -> Optional[Any]:
    try:
        from .upstream import load_upstream
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


# ----------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def attention_backend(device: torch.device) -> str:
    if device.type == "cuda":
        flags = [n for n, on in (("flash", torch.backends.cuda.flash_sdp_enabled()),
                                 ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                                 ("cudnn", torch.backends.cuda.cudnn_sdp_enabled())) if on]
        return "sdpa(" + "|".join(flags) + ")"
    return "sdpa(cpu)"


def benchmark_case(case: Case, model: torch.nn.Module, spec: ModelSpec, *, dtype: torch.dtype,
                   device: torch.device, repeats: int, warmup: int, seed: int = 0, upstream: Optional[Any] = None,
                   breakdown: bool = True, flops_batch1: bool = True, log: Callable[[str], None] = print
                   ) -> tuple[list[dict], list[dict]]:
    """Rows (one per setting, baseline first) and per-block overhead rows for one case."""
    args, kwargs = make_inputs(spec, case.batch, case.resolution, dtype=dtype, device=device, seed=seed)
    settings = [BASELINE] + [s for s in case.settings if s.method != "upstream" or upstream is not None]
    reports: dict[Setting, Any] = {}
    blocks = {s: reduced_blocks(model, s) for s in settings}
    times: dict[Setting, list[float]] = {s: [] for s in settings}
    ratios: dict[Setting, list[float]] = {s: [] for s in settings}
    peak: dict[Setting, float] = {}
    with torch.no_grad():
        # Warm-up (and peak memory on CUDA from the last warm-up call).
        for s in settings:
            with patched(model, s, seed, upstream) as report:
                reports[s] = report
                for i in range(warmup):
                    if device.type == "cuda" and i == warmup - 1:
                        sync(device)
                        torch.cuda.reset_peak_memory_stats(device)
                        resting = torch.cuda.memory_allocated(device)
                    model(*args, **kwargs)
                if device.type == "cuda" and warmup:
                    peak[s] = (torch.cuda.max_memory_allocated(device) - resting) / 2**20
        # Interleaved rounds; the order rotates so no setting always follows another.
        for r in range(repeats):
            order = settings[r % len(settings):] + settings[: r % len(settings)]
            round_ms = {}
            for s in order:
                with patched(model, s, seed, upstream):
                    round_ms[s] = timed_call(model, args, kwargs, device)
            for s in settings:
                times[s].append(round_ms[s])
                ratios[s].append(round_ms[BASELINE] / round_ms[s])
        # FLOPs (linear in the batch: counted at batch 1 and scaled, unless disabled).
        flop_batch = 1 if flops_batch1 else case.batch
        fargs, fkwargs = make_inputs(spec, flop_batch, case.resolution, dtype=dtype, device=device, seed=seed)
        flops = {}
        for s in settings:
            with patched(model, s, seed, upstream):
                flops[s] = count_flops(model, fargs, fkwargs).total * case.batch // flop_batch
        # One instrumented call per setting: attn1 time per block, reducer phases.
        phase_ms: dict[Setting, dict[tuple[str, str], float]] = {}
        if breakdown:
            for s in settings:
                spans = Spans(device)
                with patched(model, s, seed, upstream), timed_attn1(model, spans):
                    with (timed_reducers(spans) if s.engine == "bigain" else contextlib.nullcontext()):
                        t_total = timed_call(model, args, kwargs, device)
                totals = spans.totals_ms()
                totals[("", "total")] = t_total
                phase_ms[s] = totals

    rows, block_rows = [], []
    base_ms = median(times[BASELINE])
    base_phase = phase_ms.get(BASELINE, {})
    latent = f"{case.resolution // 8}x{case.resolution // 8}"
    for s in settings:
        report = reports.get(s)
        tokens, kept = token_summary(report)
        ph = phase_ms.get(s, {})
        attn_base = sum(base_phase.get((b, "attn"), 0.0) for b in blocks[s])
        attn_patched = sum(ph.get((b, "attn"), 0.0) for b in blocks[s]) if ph else float("nan")
        by_phase = {p: sum(v for (b, q), v in ph.items() if q == p) for p in PHASES} if ph else {}
        overhead = (by_phase["plan"] + by_phase["reduce"] + by_phase["restore"] + by_phase["kv"]
                    if s.engine == "bigain" and ph else float("nan"))
        base_total = base_phase.get(("", "total"), float("nan"))
        row = {
            "model": spec.name, "model_note": spec.note or spec.description, "family": spec.family,
            "resolution": case.resolution, "latent": latent, "batch": case.batch, "dtype": str(dtype).replace("torch.", ""),
            "device": device.type, "attention": attention_backend(device), "engine": s.engine, "method": s.method,
            "setting": s.label, "options": json.dumps(s.kwargs), "blocks": len(blocks[s]), "tokens": tokens,
            "reduced_tokens": kept, "latency_ms": median(times[s]), "baseline_ms": base_ms,
            "speedup": median(ratios[s]), "flops_g": flops[s] / 1e9, "baseline_flops_g": flops[BASELINE] / 1e9,
            "ideal_speedup": flops[BASELINE] / flops[s], "attn_share": attn_base / base_total if ph else float("nan"),
            "attn_base_ms": attn_base if ph else float("nan"), "attn_patched_ms": attn_patched,
            "overhead_ms": overhead, "overhead_share": overhead / attn_base if attn_base else float("nan"),
            **{f"{p}_ms": by_phase.get(p, float("nan")) if s.engine == "bigain" else float("nan") for p in PHASES},
            "peak_mem_mb": peak.get(s, float("nan")), "upstream_speedup": float("nan"), "repeats": repeats,
        }
        row["measured_over_ideal"] = row["speedup"] / row["ideal_speedup"]
        rows.append(row)
        if s.engine == "bigain" and ph:
            for b in blocks[s]:
                o = {p: ph.get((b, p), 0.0) for p in PHASES}
                over = o["plan"] + o["reduce"] + o["restore"] + o["kv"]
                ab = base_phase.get((b, "attn"), float("nan"))
                block_rows.append({
                    "model": spec.name, "resolution": case.resolution, "batch": case.batch, "setting": s.label,
                    "block": b, "tokens": "", "attn_base_ms": ab, "attn_patched_ms": ph.get((b, "attn"), float("nan")),
                    **{f"{p}_ms": o[p] for p in PHASES}, "overhead_ms": over,
                    "overhead_share": over / ab if ab else float("nan"),
                })
    by_setting = {(r["method"], r["options"]): r for r in rows}
    for row in rows:
        if row["method"] == "tome":
            twin = by_setting.get(("upstream", row["options"]))
            if twin is not None:
                row["upstream_speedup"] = twin["speedup"]
    log(f"  {spec.name} {case.resolution}px b{case.batch}: baseline {base_ms:.1f} ms, "
        f"{len(settings) - 1} settings x {repeats} rounds")
    return rows, block_rows


# ----------------------------------------------------------------------------------------------
# Whole run, tables, plot
# ----------------------------------------------------------------------------------------------

def run_benchmark(cases: Sequence[Case], *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                  repeats: int = 5, warmup: int = 1, seed: int = 0, upstream: bool = True, breakdown: bool = True,
                  flops_batch1: bool = True, log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """Benchmark every case (models built once each, in case order); returns (rows, block rows)."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    device = torch.device(device)
    up = load_upstream_module() if upstream else None
    if upstream and up is None:
        log("upstream tomesd not unpacked (python -m eval.upstream); its column stays empty")
    rows: list[dict] = []
    block_rows: list[dict] = []
    current: tuple[Optional[str], Any, Any] = (None, None, None)
    for case in cases:
        if current[0] != case.model:
            current = (None, None, None)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            spec = parse_model(case.model)
            t0 = time.perf_counter()
            current = (case.model, spec, build_model(spec, dtype=dtype, device=device, seed=seed))
            log(f"built {spec.name} ({sum(p.numel() for p in current[2].parameters()) / 1e6:.0f}M params, "
                f"random weights) in {time.perf_counter() - t0:.1f} s")
        _, spec, model = current
        r, b = benchmark_case(case, model, spec, dtype=dtype, device=device, repeats=repeats, warmup=warmup,
                              seed=seed, upstream=up, breakdown=breakdown, flops_batch1=flops_batch1, log=log)
        rows += r
        block_rows += b
    return rows, block_rows


def _fmt(value: Any, spec: str = ".2f") -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    """The headline table (one line per setting; upstream rows also feed the `upstream x` column)."""
    header = ["model", "px", "batch", "setting", "ms", "speed-up", "FLOP-ideal", "meas/ideal", "upstream x",
              "GFLOPs", "attn share", "overhead", "overhead/attn", "peak MB"]
    lines = [f"Weights: {RANDOM_WEIGHTS_NOTE}. Speed-ups are vs the unpatched SDPA baseline in the same process "
             "(median of per-round ratios); attn share = baseline time in the attn1 layers the setting reduces; "
             "overhead = reducer planning + gather/scatter (ms, and as a share of those layers' baseline time).",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], str(r["resolution"]), str(r["batch"]), r["setting"], _fmt(r["latency_ms"], ".1f"),
            _fmt(r["speedup"]) + "x", _fmt(r["ideal_speedup"]) + "x", _fmt(r["measured_over_ideal"]),
            _fmt(r["upstream_speedup"]) + ("x" if not math.isnan(r["upstream_speedup"]) else ""),
            _fmt(r["flops_g"], ".1f"), _fmt(100 * r["attn_share"], ".0f") + "%" if not math.isnan(r["attn_share"]) else "n/a",
            _fmt(r["overhead_ms"], ".1f"),
            _fmt(100 * r["overhead_share"], ".1f") + "%" if not math.isnan(r["overhead_share"]) else "n/a",
            _fmt(r["peak_mem_mb"], ".0f"),
        ]) + " |")
    return "\n".join(lines)


def block_markdown(block_rows: Sequence[dict]) -> str:
    """Per-block reducer overhead (ms) with the block's baseline attn1 time."""
    header = ["model", "px", "batch", "setting", "block", "attn base", "attn patched", "plan", "score", "match",
              "reduce", "restore", "kv", "overhead/attn"]
    lines = [f"Weights: {RANDOM_WEIGHTS_NOTE}. Milliseconds from one instrumented call; plan includes score and match.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in block_rows:
        lines.append("| " + " | ".join([
            r["model"], str(r["resolution"]), str(r["batch"]), r["setting"], r["block"],
            *(_fmt(r[k], ".2f") for k in ("attn_base_ms", "attn_patched_ms", "plan_ms", "score_ms", "match_ms",
                                            "reduce_ms", "restore_ms", "kv_ms")),
            _fmt(100 * r["overhead_share"], ".1f") + "%",
        ]) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot(rows: Sequence[dict], path: Path) -> None:
    """Speed-up vs resolution, one panel per model x batch, one line per setting; FLOP-ideal dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["batch"]) for r in rows})
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4.2 * nrows), squeeze=False)
    for ax, (model, batch) in zip(axes.flat, panels):
        sub = [r for r in rows if r["model"] == model and r["batch"] == batch and r["engine"] != "baseline"]
        for i, setting in enumerate(dict.fromkeys(r["setting"] for r in sub)):
            pts = sorted((r["resolution"], r["speedup"], r["ideal_speedup"]) for r in sub if r["setting"] == setting)
            color = f"C{i % 10}"
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1] for p in pts], "o-", color=color, label=setting)
            ax.plot(xs, [p[2] for p in pts], "x--", color=color, alpha=0.6)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"{model}, batch {batch}", fontsize=9)
        ax.set_xlabel("resolution (px)")
        ax.set_ylabel("speed-up vs SDPA baseline")
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"measured (solid) and FLOP-ideal (dashed) speed-up; {RANDOM_WEIGHTS_NOTE}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def environment(device: torch.device) -> dict[str, Any]:
    """Hardware and versions for the report."""
    import diffusers

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        info["cpu"], info["cpu_count"] = (names[0] if names else info["cpu"]), os.cpu_count()
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def write_outputs(rows: Sequence[dict], block_rows: Sequence[dict], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "speed.csv", rows, COLUMNS)
    write_csv(out / "blocks.csv", block_rows, BLOCK_COLUMNS)
    (out / "speed.md").write_text(markdown_table(rows) + "\n")
    (out / "blocks.md").write_text(block_markdown(block_rows) + "\n")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if rows:
        plot(rows, out / "speed.png")


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def cases_from_args(args: argparse.Namespace) -> list[Case]:
    settings_args = dict(methods=args.methods, ratios=args.ratios, dfs=args.dfs,
                         max_downsamples=args.max_downsample, block_patterns=args.blocks)
    if args.preset:
        cases = preset_cases(args.preset)
        explicit = [k for k in ("methods", "ratios", "dfs", "max_downsample", "blocks")
                    if getattr(args, k) != DEFAULTS[k]]
        if explicit:  # the setting flags given replace the preset's setting grid
            cases = [dataclasses.replace(c, settings=tuple(make_settings(parse_model(c.model).family, **settings_args)))
                     for c in cases]
        if args.models:
            cases = [c for c in cases if c.model in args.models]
        if args.resolutions:
            cases = [c for c in cases if c.resolution in args.resolutions]
        if args.batches:
            cases = [c for c in cases if c.batch in args.batches]
        return cases
    if not args.models:
        raise SystemExit("give --preset or --models")
    resolutions = args.resolutions or [parse_model(args.models[0]).resolution]
    return grid(args.models, resolutions, args.batches or [2], **settings_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.speed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULTS["preset"],
                   help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--models", nargs="+", default=DEFAULTS["models"],
                   help="model_zoo names, optionally shrunk: sd2@w0.25 (U-Net widths), dit-xl-2-256@L4 (blocks)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=DEFAULTS["methods"])
    p.add_argument("--ratios", nargs="+", type=float, default=DEFAULTS["ratios"])
    p.add_argument("--dfs", nargs="+", type=int, default=DEFAULTS["dfs"])
    p.add_argument("--max-downsample", nargs="+", type=int, default=DEFAULTS["max_downsample"])
    p.add_argument("--blocks", nargs="+", choices=["published", "all"], default=DEFAULTS["blocks"],
                   help="DiT/PixArt block patterns")
    p.add_argument("--resolutions", nargs="+", type=int, default=DEFAULTS["resolutions"])
    p.add_argument("--batches", nargs="+", type=int, default=DEFAULTS["batches"], help="default 2 (the CFG pair)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=DEFAULTS["dtype"])
    p.add_argument("--device", default=DEFAULTS["device"])
    p.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="timed rounds (median)")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="warm-up calls per setting")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"],
                   help="torch CPU threads (default: torch's choice); 1 on a shared machine, where waiting "
                        "for a busy second core stalls every parallel op")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--out", default=DEFAULTS["out"])
    p.add_argument("--dry-run", action="store_true", help="list the cases and the number of forward calls, run nothing")
    p.add_argument("--no-upstream", dest="upstream", action="store_false", help="skip upstream tomesd")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the instrumented call")
    p.add_argument("--flops-full-batch", dest="flops_batch1", action="store_false",
                   help="count FLOPs at the full batch (default: batch 1, scaled; FLOPs are linear in batch)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    for key, value in PRESET_FLAGS.get(args.preset, {}).items():
        if getattr(args, key) == DEFAULTS[key]:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = cases_from_args(args)
    if args.dry_run:
        per_setting = args.warmup + args.repeats + 1 + int(args.breakdown)  # + FLOP count + instrumented call
        runs = sum(len(c.settings) + 1 for c in cases)
        for c in cases:
            print(f"{c.model} {c.resolution}px batch {c.batch}: baseline + {len(c.settings)} settings")
        print(f"{len(cases)} cases, {runs} setting runs, {runs * per_setting} forward calls "
              f"({per_setting} per setting run) on {args.device} in {args.dtype}")
        return []
    device = torch.device(args.device)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    rows, block_rows = run_benchmark(cases, dtype=args.dtype, device=device, repeats=args.repeats,
                                     warmup=args.warmup, seed=args.seed, upstream=args.upstream,
                                     breakdown=args.breakdown, flops_batch1=args.flops_batch1, log=log)
    meta = {"command": "python -m eval.speed " + " ".join(sys.argv[1:] if argv is None else argv),
            "weights": RANDOM_WEIGHTS_NOTE, "environment": environment(device), "seconds": time.perf_counter() - t0,
            "cases": [{"model": c.model, "resolution": c.resolution, "batch": c.batch,
                       "settings": [s.label for s in c.settings]} for c in cases]}
    write_outputs(rows, block_rows, Path(args.out), meta)
    print(markdown_table(rows))
    log(f"wrote {args.out}/speed.csv, speed.md, blocks.csv, blocks.md, speed.png, meta.json "
        f"({meta['seconds']:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
