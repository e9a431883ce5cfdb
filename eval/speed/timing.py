"""Timing for `eval.speed`: interleaved rounds, FLOPs, reduced layers' time share, reducer overhead breakdown,
upstream runs."""
from __future__ import annotations

import contextlib
import json
import statistics
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

import tomesd
from eval.flops import FlopSpans, count_flops
from eval.speed import op_count
from eval.speed.cases import BASELINE, Case, Setting, parse_model
from eval.speed.model_zoo import WAN_FRAMES_PER_LATENT, ModelSpec, build_model, make_inputs
from eval.speed.reliability import (
    MAX_DRIFT,
    TARGET_HALFWIDTH,
    run_rounds,
    speedup_columns,
    unpaired_speedup_columns,
)
from eval.speed.tables import COLUMNS
from eval.speed.upstream import load_upstream
from tomesd.backbones import find_backbone
from tomesd.reducers.base import PHASES

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


def sublayers(block: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The token-wise sub-layers of a transformer block a reducer may shorten: self-attention (`attn1` / `attn`),
    `attn2` (cross-attention on SD; SD3.5's second self-attention), the MLP (`ff`; Flux single blocks: `proj_mlp`)."""
    names = (attention_name(block), "attn2", "ff", "proj_mlp")
    return {n: m for n in names if isinstance(m := getattr(block, n, None), torch.nn.Module)}


def reduced_sublayers(block: torch.nn.Module, options: dict) -> list[str]:
    """Names (in `sublayers`) of the block's sub-layers a patch with `options` runs on fewer tokens (or, for K/V
    methods, on a shorter K/V): mirrors `tomesd.install.install_block` / `tomesd.mmdit.install_mmdit_block`."""
    present, mmdit = sublayers(block), not hasattr(block, "attn1")
    names = []
    if options.get("merge_attn", True):
        names.append(attention_name(block))
        if mmdit:
            names.append("attn2")  # SD3.5's second self-attention shares the block's plan
    if options.get("merge_crossattn", False) and not mmdit:
        names.append("attn2")
    if options.get("merge_mlp", False):
        names += ["ff", "proj_mlp"]
    return [n for n in names if n in present]


@contextlib.contextmanager
def timed_sublayers(model: torch.nn.Module, spans: Spans) -> Iterator[None]:
    """Time every block's `sublayers` (module hooks, whatever processor is installed) under (block, sub-layer)."""
    starts: dict[tuple[str, str], Any] = {}
    handles = []

    def begin(key: tuple[str, str]) -> Callable[..., None]:
        return lambda module, args: starts.__setitem__(key, spans.now())

    def end(key: tuple[str, str]) -> Callable[..., None]:
        return lambda module, args, output: spans.marks.setdefault(key, []).append((starts.pop(key), spans.now()))

    for site in find_backbone(model).sites:
        for name, module in sublayers(site.block).items():
            handles += [module.register_forward_pre_hook(begin((site.name, name))),
                        module.register_forward_hook(end((site.name, name)))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def reduced_time_shares(model: torch.nn.Module, call: Callable[[], Any], settings: Sequence[tuple[str, dict]],
                        device: torch.device, calls: int = BREAKDOWN_CALLS) -> list[float]:
    """Per setting (method, options), the share of the unpatched `call`'s time spent in the sub-layers the setting
    reduces: the median over `calls` instrumented baseline calls (s in the removed-layers bound 1 / (1 - s)).

    `model` is the denoiser the settings patch; `call` runs it (possibly with pre/post-processing, timed too).
    Shared by `eval.speed` and the main job so both bound their speed-ups the same way.
    """
    sites = {site.name: site.block for site in find_backbone(model).sites}
    reduced = []
    for method, options in settings:
        if method == "none":
            reduced.append([])
            continue
        report = tomesd.apply_patch(model, method="tome" if method == "upstream" else method, **options)
        tomesd.remove_patch(model)
        reduced.append([(b, n) for b in report.blocks for n in reduced_sublayers(sites[b], options)])
    shares: list[list[float]] = []
    with torch.no_grad():
        for _ in range(calls):
            spans = Spans(device)
            with timed_sublayers(model, spans), spans.span("total", ""):
                call()
            totals = spans.totals_ms()
            total = totals[("", "total")]
            shares.append([sum(totals.get(k, 0.0) for k in keys) / total for keys in reduced])
    return [median([c[i] for c in shares]) for i in range(len(settings))]


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

def latent_label(spec: ModelSpec, resolution: int) -> str:
    """The VAE latent's size at `resolution` px: "HxW" (8 px per cell), video "FxHxW" (latent frames first)."""
    height, width = spec.size(resolution)
    frames = f"{(spec.frames - 1) // WAN_FRAMES_PER_LATENT + 1}x" if spec.frames else ""
    return f"{frames}{height // 8}x{width // 8}"


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
                   breakdown_calls: int = BREAKDOWN_CALLS, cuda_graphs: bool = False,
                   target_halfwidth: Optional[float] = TARGET_HALFWIDTH, max_seconds: Optional[float] = None,
                   max_rounds: int = 50, max_drift: float = MAX_DRIFT) -> tuple[list[dict], list[dict]]:
    """Rows (one per setting, baseline first) and per-block overhead rows for one case.

    `repeats` rounds at least, then more until every speed-up's 95% interval has a relative half-width <=
    `target_halfwidth`, or the rounds took `max_seconds`, or `max_rounds` (`eval.speed.reliability.run_rounds`).
    `cuda_graphs`: time CUDA-graph replays of each setting's forward (captured once after warm-up).
    """
    if cuda_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs needs a CUDA device")
    args, kwargs = make_inputs(spec, case.batch, case.resolution, dtype=dtype, device=device, seed=seed)
    settings = [BASELINE] + [s for s in case.settings if s.method != "upstream" or upstream is not None]
    reports: dict[Setting, Any] = {}
    blocks = {s: reduced_blocks(model, s) for s in settings}
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
        # Interleaved rounds (the order rotates so no setting always follows another) until the intervals are narrow.
        def time_one(s: Setting) -> float:
            if cuda_graphs:
                return timed_replay(graphs[s], device)
            with patched(model, s, seed, upstream):
                return timed_call(model, args, kwargs, device)

        rounds = run_rounds(settings, time_one, BASELINE, min_rounds=repeats, target=target_halfwidth,
                            max_seconds=max_seconds, max_rounds=max(max_rounds, repeats))
        times, ratios = rounds.times, rounds.ratios
        # The reduced sub-layers' share of the baseline's time (the removed-layers bound), in plain baseline calls.
        shares = dict(zip(settings, reduced_time_shares(model, lambda: model(*args, **kwargs),
                                                        [(s.method, s.kwargs) for s in settings], device)))
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
    latent = latent_label(spec, case.resolution)
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
            "peak_mem_mb": peak.get(s, float("nan")), "upstream_speedup": float("nan"), "repeats": rounds.n,
            "ops_per_block": op_counts.get(s, {}).get("ops", float("nan")),
            "kernels_per_block": op_counts.get(s, {}).get("kernels", float("nan")), "cuda_graphs": cuda_graphs,
            **speedup_columns(ratios[s], times[BASELINE], shares[s], max_drift=max_drift), "stop": rounds.stop,
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
        f"{len(settings) - 1} settings x {rounds.n} rounds ({rounds.stop}, {rounds.seconds:.0f} s)")
    return rows, block_rows

# ----------------------------------------------------------------------------------------------
# Attention backends and torch.compile (`eval.speed --attention_backend`, `--compile`)
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def attention_backend_set(model: torch.nn.Module, name: str) -> Iterator[None]:
    """`model.set_attention_backend(name)` for the block, then diffusers' default again (no-op for ""): the model's
    processors and the process-wide active backend, which `set_attention_backend` also sets and `reset_...` keeps."""
    if not name:
        yield
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    model.set_attention_backend(name)
    try:
        yield
    finally:
        model.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)


def backend_unusable(model: torch.nn.Module, spec: ModelSpec, case: Case, dtype: torch.dtype, device: torch.device,
                     seed: int) -> Optional[str]:
    """Why `case.attention_backend` cannot run here (setting it or one call fails), or None when it can."""
    args, kwargs = make_inputs(spec, case.batch, case.resolution, dtype=dtype, device=device, seed=seed)
    try:
        with torch.no_grad(), attention_backend_set(model, case.attention_backend):
            model(*args, **kwargs)
        return None
    except Exception as err:  # noqa: BLE001 - a missing kernel package or an unsupported device skips the case
        first = str(err).strip().splitlines()
        return f"{type(err).__name__}: {first[0] if first else ''}"


def benchmark_compiled(case: Case, model: torch.nn.Module, spec: ModelSpec, *, dtype: torch.dtype,
                       device: torch.device, repeats: int, warmup: int, seed: int = 0,
                       compile_backend: str = "inductor", max_drift: float = MAX_DRIFT,
                       log: Callable[[str], None] = print) -> list[dict]:
    """Rows (baseline first) of `case` with the model compiled once per setting (`torch.compile(model)`), warmed
    up (the first call compiles) and timed `repeats` times. Settings are not interleaved (each has its own graph),
    so each speed-up carries an unpaired bootstrap interval (`unpaired_speedup_columns`); FLOPs, breakdown, memory
    and the bound stay n/a. A setting that fails to compile or run is logged and left out."""
    args, kwargs = make_inputs(spec, case.batch, case.resolution, dtype=dtype, device=device, seed=seed)
    settings = [BASELINE] + [s for s in case.settings if s.method != "upstream"]
    times: dict[Setting, list[float]] = {}
    reports: dict[Setting, Any] = {}
    with torch.no_grad():
        for s in settings:
            try:
                with patched(model, s, seed, None) as report:
                    torch._dynamo.reset()
                    compiled = torch.compile(model, backend=compile_backend)
                    for _ in range(max(warmup, 2)):  # the first call compiles, the second must not recompile
                        compiled(*args, **kwargs)
                    sync(device)
                    times[s] = [timed_call(compiled, args, kwargs, device) for _ in range(repeats)]
                    reports[s] = report
            except Exception as err:  # noqa: BLE001 - one setting failing to compile must not lose the others
                first = str(err).strip().splitlines()
                log(f"  {spec.name} {case.resolution}px compiled ({compile_backend}) {s.label}: skipped, "
                    f"{type(err).__name__}: {first[0] if first else ''}")
            finally:
                torch._dynamo.reset()
    if BASELINE not in times:
        return []
    base_ms = median(times[BASELINE])
    rows = []
    for s in (s for s in settings if s in times):
        tokens, kept = token_summary(reports[s])
        rows.append({**{c: float("nan") for c in COLUMNS},
                     "model": spec.name, "model_note": spec.note or spec.description, "family": spec.family,
                     "resolution": case.resolution, "latent": latent_label(spec, case.resolution),
                     "batch": case.batch, "dtype": str(dtype).replace("torch.", ""), "device": device.type,
                     "attention": attention_backend(device), "engine": s.engine, "method": s.method,
                     "setting": s.label, "options": json.dumps(s.kwargs), "blocks": len(reduced_blocks(model, s)),
                     "tokens": tokens, "reduced_tokens": kept, "latency_ms": median(times[s]), "baseline_ms": base_ms,
                     "repeats": repeats, "cuda_graphs": False, "stop": "compiled",
                     **unpaired_speedup_columns(times[BASELINE], times[s], max_drift=max_drift)})
    log(f"  {spec.name} {case.resolution}px b{case.batch} compiled ({compile_backend}): baseline {base_ms:.1f} ms, "
        f"{len(rows) - 1} settings x {repeats} calls")
    return rows


# ----------------------------------------------------------------------------------------------
# Whole run
# ----------------------------------------------------------------------------------------------

def run_benchmark(cases: Sequence[Case], *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                  repeats: int = 5, warmup: int = 1, seed: int = 0, upstream: bool = True, breakdown: bool = True,
                  flops_batch1: bool = True, log: Callable[[str], None] = print,
                  cuda_graphs: bool = False, compile_backend: str = "inductor",
                  target_halfwidth: Optional[float] = TARGET_HALFWIDTH, max_seconds: Optional[float] = None,
                  max_rounds: int = 50, max_drift: float = MAX_DRIFT,
                  on_case: Optional[Callable[[list[dict], list[dict]], None]] = None) -> tuple[list[dict], list[dict]]:
    """Benchmark every case (models built once each, in case order); returns (rows, block rows).

    Rounds per case: see `benchmark_case` (`repeats` at least; `max_seconds` caps each case's rounds). A case
    with `attention_backend` runs with it set on the model (skipped, logged, when it cannot run here); a case
    with `compile` is timed compiled (`benchmark_compiled`). `on_case(rows, block_rows)` gets the rows so far after
    each case (the CLI writes them, so a run stopped by a time limit keeps every finished case).
    """
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
        why = backend_unusable(model, spec, case, dtype, device, seed) if case.attention_backend else None
        if why:
            log(f"  {case.model} {case.resolution}px: attention backend {case.attention_backend} skipped, {why}")
        else:
            with attention_backend_set(model, case.attention_backend):
                if case.compile:
                    r, b = benchmark_compiled(case, model, spec, dtype=dtype, device=device, repeats=repeats,
                                              warmup=warmup, seed=seed, compile_backend=compile_backend,
                                              max_drift=max_drift, log=log), []
                else:
                    r, b = benchmark_case(case, model, spec, dtype=dtype, device=device, repeats=repeats,
                                          warmup=warmup, seed=seed, upstream=up, breakdown=breakdown,
                                          flops_batch1=flops_batch1, log=log, cuda_graphs=cuda_graphs,
                                          target_halfwidth=target_halfwidth, max_seconds=max_seconds,
                                          max_rounds=max_rounds, max_drift=max_drift)
            for row in r:
                row["attention"] = f"diffusers:{case.attention_backend}" if case.attention_backend else row["attention"]
                row["compiled"] = compile_backend if case.compile else ""
            rows += r
            block_rows += b
        if on_case is not None:
            on_case(rows, block_rows)
    return rows, block_rows
