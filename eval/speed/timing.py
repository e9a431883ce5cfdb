"""Timing for `eval.speed`: interleaved rounds, FLOPs, attention share, reducer overhead breakdown, upstream runs."""
from __future__ import annotations

import contextlib
import json
import statistics
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

import tomesd
from tomesd.backbones import find_backbone
from tomesd.reducers.base import PHASES

from eval.flops import FlopSpans, count_flops

from eval.speed import op_count
from eval.speed.cases import BASELINE, Case, Setting, parse_model
from eval.speed.model_zoo import ModelSpec, build_model, make_inputs
from eval.speed.upstream import load_upstream

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


def timed_reducers(model: torch.nn.Module, spans: Any) -> contextlib.AbstractContextManager:
    """Record every reducer phase of the patched `model` (`PHASES`: plan, and within it score and match;
    reduce, restore, kv) under `spans.span(phase)`, through the engine's `tomesd.trace_reducers` hook.

    `spans` is a `Spans` (time), `eval.flops.FlopSpans` (FLOPs) or `eval.speed.op_count.OpSpans` (ATen ops).
    """
    return tomesd.trace_reducers(model, spans.span)


def count_reducer_flops(model: torch.nn.Module, setting: Setting, args: tuple, kwargs: dict, seed: int) -> int:
    """FLOPs of the reducers' own work (plan, reduce/restore, K/V source) in one patched call.

    Read against the reduced layers' FLOPs this is the overhead's floor: the matching's S x D
    similarities, SiTo's graph, the Laplacian; gathers and sorts count 0.
    """
    spans = FlopSpans()
    with torch.no_grad(), patched(model, setting, seed, None), timed_reducers(model, spans):
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
                   breakdown: bool = True, flops_batch1: bool = True, log: Callable[[str], None] = print,
                   breakdown_calls: int = BREAKDOWN_CALLS, cuda_graphs: bool = False) -> tuple[list[dict], list[dict]]:
    """Rows (one per setting, baseline first) and per-block overhead rows for one case.

    `cuda_graphs`: time CUDA-graph replays of each setting's forward (captured once after warm-up).
    """
    if cuda_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs needs a CUDA device")
    args, kwargs = make_inputs(spec, case.batch, case.resolution, dtype=dtype, device=device, seed=seed)
    settings = [BASELINE] + [s for s in case.settings if s.method != "upstream" or upstream is not None]
    reports: dict[Setting, Any] = {}
    blocks = {s: reduced_blocks(model, s) for s in settings}
    times: dict[Setting, list[float]] = {s: [] for s in settings}
    ratios: dict[Setting, list[float]] = {s: [] for s in settings}
    peak: dict[Setting, float] = {}
    graphs: dict[Setting, Callable[[], None]] = {}
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
                if cuda_graphs:
                    graphs[s] = capture_cuda_graph(model, args, kwargs, device)
        # Interleaved rounds; the order rotates so no setting always follows another.
        for r in range(repeats):
            order = settings[r % len(settings):] + settings[: r % len(settings)]
            round_ms = {}
            for s in order:
                if cuda_graphs:
                    round_ms[s] = timed_replay(graphs[s], device)
                    continue
                with patched(model, s, seed, upstream):
                    round_ms[s] = timed_call(model, args, kwargs, device)
            for s in settings:
                times[s].append(round_ms[s])
                ratios[s].append(round_ms[BASELINE] / round_ms[s])
        # FLOPs (linear in the batch: counted at batch 1 and scaled, unless disabled).
        flop_batch = 1 if flops_batch1 else case.batch
        fargs, fkwargs = make_inputs(spec, flop_batch, case.resolution, dtype=dtype, device=device, seed=seed)
        flops, reducer_flops, op_counts = {}, {}, {}
        attn_flops = count_flops(model, fargs, fkwargs).by_module  # baseline attn1 FLOPs per block
        for s in settings:
            with patched(model, s, seed, upstream):
                flops[s] = count_flops(model, fargs, fkwargs).total * case.batch // flop_batch
            if s.engine == "bigain":
                reducer_flops[s] = count_reducer_flops(model, s, fargs, fkwargs, seed) * case.batch / flop_batch
                op_counts[s] = op_count.count_reducer_ops(model, s.method, s.kwargs, args, kwargs, seed)
        # Instrumented calls (interleaved like the timing rounds): attn1 time per block and reducer
        # phases, each the median over the calls so one noisy call does not set the overhead share.
        phase_ms: dict[Setting, dict[tuple[str, str], float]] = {}
        if breakdown:
            samples: dict[Setting, list[dict[tuple[str, str], float]]] = {s: [] for s in settings}
            for _ in range(breakdown_calls):
                for s in settings:
                    spans = Spans(device)
                    with patched(model, s, seed, upstream), timed_attn1(model, spans):
                        with (timed_reducers(model, spans) if s.engine == "bigain" else contextlib.nullcontext()):
                            t_total = timed_call(model, args, kwargs, device)
                    totals = spans.totals_ms()
                    totals[("", "total")] = t_total
                    samples[s].append(totals)
            phase_ms = {s: {k: median([c.get(k, 0.0) for c in calls]) for k in calls[0]}
                        for s, calls in samples.items()}

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
        attn_base_flops = sum(max(attn_flops.get(f"{b}.attn1", 0), attn_flops.get(f"{b}.attn", 0))
                              for b in blocks[s]) * case.batch / flop_batch
        own_flops = reducer_flops.get(s, float("nan"))
        row = {
            "model": spec.name, "model_note": spec.note or spec.description, "family": spec.family,
            "resolution": case.resolution, "latent": latent, "batch": case.batch,
            "dtype": str(dtype).replace("torch.", ""),
            "device": device.type, "attention": attention_backend(device), "engine": s.engine, "method": s.method,
            "setting": s.label, "options": json.dumps(s.kwargs), "blocks": len(blocks[s]), "tokens": tokens,
            "reduced_tokens": kept, "latency_ms": median(times[s]), "baseline_ms": base_ms,
            "speedup": median(ratios[s]), "flops_g": flops[s] / 1e9, "baseline_flops_g": flops[BASELINE] / 1e9,
            "ideal_speedup": flops[BASELINE] / flops[s], "attn_share": attn_base / base_total if ph else float("nan"),
            "attn_base_ms": attn_base if ph else float("nan"), "attn_patched_ms": attn_patched,
            "overhead_ms": overhead, "overhead_share": overhead / attn_base if attn_base else float("nan"),
            "overhead_flops_g": own_flops / 1e9,
            "overhead_flop_share": own_flops / attn_base_flops if attn_base_flops else float("nan"),
            **{f"{p}_ms": by_phase.get(p, float("nan")) if s.engine == "bigain" else float("nan") for p in PHASES},
            "peak_mem_mb": peak.get(s, float("nan")), "upstream_speedup": float("nan"), "repeats": repeats,
            "ops_per_block": op_counts.get(s, {}).get("ops", float("nan")),
            "kernels_per_block": op_counts.get(s, {}).get("kernels", float("nan")), "cuda_graphs": cuda_graphs,
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
# Whole run
# ----------------------------------------------------------------------------------------------

def run_benchmark(cases: Sequence[Case], *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                  repeats: int = 5, warmup: int = 1, seed: int = 0, upstream: bool = True, breakdown: bool = True,
                  flops_batch1: bool = True, log: Callable[[str], None] = print,
                  cuda_graphs: bool = False) -> tuple[list[dict], list[dict]]:
    """Benchmark every case (models built once each, in case order); returns (rows, block rows)."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    device = torch.device(device)
    up = load_upstream_module() if upstream else None
    if upstream and up is None:
        log("upstream tomesd not unpacked (python -m eval.speed.upstream); its column stays empty")
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
                              seed=seed, upstream=up, breakdown=breakdown, flops_batch1=flops_batch1, log=log,
                              cuda_graphs=cuda_graphs)
        rows += r
        block_rows += b
    return rows, block_rows
