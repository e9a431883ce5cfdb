"""One benchmark case and a whole run for `eval.speed`: interleaved timing rounds, FLOPs, reducer overhead, rows.

The instruments (spans, timed attention, reducer phases, patching) are `eval.speed.timing`.
"""
from __future__ import annotations

import contextlib
import json
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch

from eval.flops import count_flops

from .cases import BASELINE, Case, Setting, parse_model
from .model_zoo import ModelSpec, build_model, make_inputs
from .op_count import count_reducer_ops
from .timing import BREAKDOWN_CALLS, PHASES, Spans, capture_cuda_graph, count_reducer_flops, load_upstream_module, \
    patched, reduced_blocks, sync, timed_attn1, timed_call, timed_reducers, timed_replay, token_summary

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
                op_counts[s] = count_reducer_ops(model, s.method, s.kwargs, args, kwargs, seed)
        # Instrumented calls (interleaved like the timing rounds): attn1 time per block and reducer
        # phases, each the median over the calls so one noisy call does not set the overhead share.
        phase_ms: dict[Setting, dict[tuple[str, str], float]] = {}
        if breakdown:
            samples: dict[Setting, list[dict[tuple[str, str], float]]] = {s: [] for s in settings}
            for _ in range(breakdown_calls):
                for s in settings:
                    spans = Spans(device)
                    with patched(model, s, seed, upstream), timed_attn1(model, spans):
                        with (timed_reducers(spans) if s.engine == "bigain" else contextlib.nullcontext()):
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
            "resolution": case.resolution, "latent": latent, "batch": case.batch, "dtype": str(dtype).replace("torch.", ""),
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
