"""Speed, FLOPs and memory of token reduction against the unpatched SDPA baseline (docs/protocol.md §3).

For each model x resolution x batch ("case") the baseline and every method setting are timed in
the same process, interleaved round by round (each round times one call of every setting in a
rotated order), so slow drifts of a shared machine hit all settings alike. Per row:

* latency: median over rounds; speed-up = median over rounds of baseline / patched time in the
  same round (CUDA events on GPU, `time.perf_counter` on CPU, after warm-up calls);
* FLOPs per call (`eval.flops`, SDPA included) and the FLOP-ideal speed-up baseline / patched,
  and measured / ideal;
* attention share: the part of the baseline's time spent in the attn1 layers the setting reduces;
* reducer overhead: planning (scoring, matching, index building) plus reduce / restore
  (gather / scatter) or the K/V downsample, from the median of 3 instrumented calls, as a share of the
  baseline time of the layers they reduce; the same per block goes to `blocks.csv`;
* peak memory: CUDA `max_memory_allocated` above the resting level (n/a on CPU);
* ops/block: ATen ops the reducer dispatches per patched block and call, non-view ops in brackets
  (`eval.op_count`; a CPU-measurable stand-in for GPU kernel launches);
* `--cuda-graphs` (CUDA only): each setting's forward is captured once in a CUDA graph and replays
  are timed (a patched forward has no sync and no host-side random state);
* upstream tomesd 0.1.3 (when unpacked, see `eval.upstream`) at every ToMe setting, as its own
  rows and as the `upstream x` column of the matching ToMe row.

Weights are random (`eval.model_zoo`): timing does not depend on them, and every table says so.

    python -m eval.speed --preset cpu-small --out results/speed/cpu-small
    python -m eval.speed --preset gpu --out results/speed/gpu            # fp16, CUDA
    python -m eval.speed --preset gpu --models sd2 --batches 2 --cuda-graphs --out results/speed/gpu-graphs
    python -m eval.speed --models sd2@w0.25 --methods tome todo --ratios 0.5 --resolutions 512 --batches 2
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from bigain.cli import check_output_dir, fraction, nonneg_int, positive_int, run_cli

from .speed_cases import BASELINE, DF_METHODS, METHODS, PRESET_FLAGS, PRESETS, RATIO_METHODS, Case, Setting, grid, \
    make_settings, parse_model, preset_cases  # noqa: F401
from .speed_timing import BREAKDOWN_CALLS, PHASES, Spans, TimedProcessor, attention_backend, \
    benchmark_case, count_reducer_flops, load_upstream_module, median, patched, reduced_blocks, run_benchmark, sync, \
    timed_attn1, timed_call, timed_reducers, token_summary  # noqa: F401

__all__ = ["DEFAULTS", "PRESETS", "Setting", "Case", "make_settings", "benchmark_case", "run_benchmark",
           "markdown_table", "COLUMNS", "main"]

RANDOM_WEIGHTS_NOTE = "random weights (architecture-only timing; no checkpoint loaded)"

# Columns of speed.csv, in order (tests check them).
COLUMNS = [
    "model", "model_note", "family", "resolution", "latent", "batch", "dtype", "device", "attention", "engine",
    "method", "setting", "options", "blocks", "tokens", "reduced_tokens", "latency_ms", "baseline_ms",
    "speedup", "flops_g", "baseline_flops_g", "ideal_speedup", "measured_over_ideal", "attn_share",
    "attn_base_ms", "attn_patched_ms", "overhead_ms", "overhead_share", "overhead_flops_g", "overhead_flop_share",
    "plan_ms", "score_ms", "match_ms",
    "reduce_ms", "restore_ms", "kv_ms", "peak_mem_mb", "upstream_speedup", "repeats",
    "ops_per_block", "kernels_per_block", "cuda_graphs",
]
BLOCK_COLUMNS = ["model", "resolution", "batch", "setting", "block", "tokens", "attn_base_ms", "attn_patched_ms",
                 "plan_ms", "score_ms", "match_ms", "reduce_ms", "restore_ms", "kv_ms", "overhead_ms",
                 "overhead_share"]

DEFAULTS: dict[str, Any] = {
    "preset": None, "models": None, "methods": list(METHODS), "ratios": [0.3, 0.5, 0.7], "dfs": [2, 4],
    "max_downsample": [1], "blocks": ["published"], "resolutions": None, "batches": None, "dtype": "float32",
    "device": "cpu", "repeats": 5, "warmup": 1, "out": "results/speed", "upstream": True, "breakdown": True,
    "flops_batch1": True, "seed": 0, "threads": None, "cuda_graphs": False,
}


# ----------------------------------------------------------------------------------------------
# Tables, plot
# ----------------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str = ".2f") -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    """The headline table (one line per setting; upstream rows also feed the `upstream x` column)."""
    header = ["model", "px", "batch", "setting", "ms", "speed-up", "FLOP-ideal", "meas/ideal", "upstream x",
              "GFLOPs", "attn share", "overhead", "overhead/attn", "its FLOPs/attn", "ops/block", "peak MB"]
    lines = [f"Weights: {RANDOM_WEIGHTS_NOTE}. Speed-ups are vs the unpatched SDPA baseline in the same process "
             "(median of per-round ratios); attn share = baseline time in the attn1 layers the setting reduces; "
             "overhead = reducer planning + gather/scatter (ms, and as a share of those layers' baseline time); "
             "its FLOPs/attn = the reducer's own FLOPs (matching, graph, Laplacian) as a share of those layers' "
             "FLOPs, the floor under overhead/attn; ops/block = ATen ops the reducer dispatches per patched block "
             "and call, of which non-view in brackets (a CPU-measurable stand-in for GPU kernel launches).",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], str(r["resolution"]), str(r["batch"]), r["setting"], _fmt(r["latency_ms"], ".1f"),
            _fmt(r["speedup"]) + "x", _fmt(r["ideal_speedup"]) + "x", _fmt(r["measured_over_ideal"]),
            _fmt(r["upstream_speedup"]) + ("x" if not math.isnan(r["upstream_speedup"]) else ""),
            _fmt(r["flops_g"], ".1f"), _fmt(100 * r["attn_share"], ".0f") + "%" if not math.isnan(r["attn_share"]) else "n/a",
            _fmt(r["overhead_ms"], ".1f"),
            _fmt(100 * r["overhead_share"], ".1f") + "%" if not math.isnan(r["overhead_share"]) else "n/a",
            _fmt(100 * r["overhead_flop_share"], ".1f") + "%" if not math.isnan(r["overhead_flop_share"]) else "n/a",
            ops_cell(r), _fmt(r["peak_mem_mb"], ".0f"),
        ]) + " |")
    return "\n".join(lines)


def ops_cell(row: dict) -> str:
    """'60 (39)': ATen ops per block, non-view ops in brackets; n/a for baseline/upstream."""
    ops, kernels = row.get("ops_per_block", float("nan")), row.get("kernels_per_block", float("nan"))
    return "n/a" if isinstance(ops, float) and math.isnan(ops) else f"{ops:.0f} ({kernels:.0f})"


def block_markdown(block_rows: Sequence[dict]) -> str:
    """Per-block reducer overhead (ms) with the block's baseline attn1 time."""
    header = ["model", "px", "batch", "setting", "block", "attn base", "attn patched", "plan", "score", "match",
              "reduce", "restore", "kv", "overhead/attn"]
    lines = [f"Weights: {RANDOM_WEIGHTS_NOTE}. Milliseconds, median of 3 instrumented calls; plan includes score and match.",
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
        raise ValueError("give --preset or --models")
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
    p.add_argument("--ratios", nargs="+", type=fraction, default=DEFAULTS["ratios"])
    p.add_argument("--dfs", nargs="+", type=positive_int, default=DEFAULTS["dfs"])
    p.add_argument("--max-downsample", nargs="+", type=positive_int, default=DEFAULTS["max_downsample"])
    p.add_argument("--blocks", nargs="+", choices=["published", "all"], default=DEFAULTS["blocks"],
                   help="DiT/PixArt block patterns")
    p.add_argument("--resolutions", nargs="+", type=positive_int, default=DEFAULTS["resolutions"])
    p.add_argument("--batches", nargs="+", type=positive_int, default=DEFAULTS["batches"], help="default 2 (the CFG pair)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=DEFAULTS["dtype"])
    p.add_argument("--device", default=DEFAULTS["device"])
    p.add_argument("--repeats", type=positive_int, default=DEFAULTS["repeats"], help="timed rounds (median)")
    p.add_argument("--warmup", type=nonneg_int, default=DEFAULTS["warmup"], help="warm-up calls per setting")
    p.add_argument("--threads", type=positive_int, default=DEFAULTS["threads"],
                   help="torch CPU threads (default: torch's choice); 1 on a shared machine, where waiting "
                        "for a busy second core stalls every parallel op")
    p.add_argument("--seed", type=nonneg_int, default=DEFAULTS["seed"])
    p.add_argument("--out", default=DEFAULTS["out"])
    p.add_argument("--dry-run", action="store_true", help="list the cases and the number of forward calls, run nothing")
    p.add_argument("--no-upstream", dest="upstream", action="store_false", help="skip upstream tomesd")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the instrumented calls (overhead breakdown)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="time CUDA-graph replays of each setting's forward (fixed shapes; needs --device cuda)")
    p.add_argument("--flops-full-batch", dest="flops_batch1", action="store_false",
                   help="count FLOPs at the full batch (default: batch 1, scaled; FLOPs are linear in batch)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cuda_graphs and not str(args.device).startswith("cuda"):
        parser.error(f"--cuda-graphs needs a CUDA device (--device cuda), got --device {args.device}")
    for key, value in PRESET_FLAGS.get(args.preset, {}).items():
        if getattr(args, key) == DEFAULTS[key]:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = cases_from_args(args)
    if not cases:
        raise ValueError("no case left: the --models / --resolutions / --batches filters exclude every preset case")
    if not args.dry_run:
        check_output_dir(args.out, "--out")
    if args.dry_run:
        per_setting = args.warmup + args.repeats + 2 + BREAKDOWN_CALLS * int(args.breakdown)  # + 2 FLOP counts
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
                                     breakdown=args.breakdown, flops_batch1=args.flops_batch1, log=log,
                                     cuda_graphs=args.cuda_graphs)
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
    run_cli(main)
