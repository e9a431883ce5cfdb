"""Speed, FLOPs and memory of token reduction against the unpatched SDPA baseline (docs/protocol.md §3).

For each model x resolution x batch ("case") the baseline and every method setting are timed in
the same process, interleaved round by round (each round times one call of every setting in a
rotated order), so slow drifts of a shared machine hit all settings alike. Per row:

* latency: median over rounds; speed-up = median over rounds of baseline / patched time in the
  same round (CUDA events on GPU, `time.perf_counter` on CPU, after warm-up calls), with its 95%
  order-statistic interval; rounds continue past `--repeats` until every interval's relative half-width
  is <= `--target_halfwidth`, or `--max_seconds`, or `--max_rounds` (`stop` says which;
  `eval.speed.reliability`);
* removed-layers bound 1 / (1 - s), s = the baseline's time share of the sub-layers the setting reduces
  (3 instrumented baseline calls); a row whose interval lies above it, or whose case's baseline drifted
  by more than `--max_drift` between the first and last third of the rounds, is marked unreliable
  (`unreliable` column, the table's "check" column, meta.json);
* FLOPs per call (`eval.flops`, SDPA included) and the FLOP-ideal speed-up baseline / patched,
  and measured / ideal;
* attention share: the part of the baseline's time spent in the attn1 layers the setting reduces;
* reducer overhead: planning (scoring, matching, index building) plus reduce / restore
  (gather / scatter) or the K/V downsample, from the median of 3 instrumented calls, as a share of the
  baseline time of the layers they reduce; the same per block goes to `blocks.csv`;
* peak memory: CUDA `max_memory_allocated` above the resting level (n/a on CPU);
* ops/block: ATen ops the reducer dispatches per patched block and call, non-view ops in brackets
  (`eval.speed.op_count`; a CPU-measurable stand-in for GPU kernel launches);
* `--cuda_graphs` (CUDA only): each setting's forward is captured once in a CUDA graph and replays
  are timed (a patched forward has no sync and no host-side random state);
* upstream tomesd 0.1.3 (when unpacked, see `eval.speed.upstream`) at every ToMe setting, as its own
  rows and as the `upstream x` column of the matching ToMe row.

Weights are random (`eval.speed.model_zoo`): timing does not depend on them, and every table says so.

This module writes those rows: speed.csv / blocks.csv, the markdown tables, the speed-up plot, meta.json.
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from bigain.storage import atomic_write_csv, atomic_write_text
from eval.report.plots import save_figure
from eval.speed.reliability import STOP_REASONS, load_note

RANDOM_WEIGHTS_NOTE = "random weights (architecture-only timing; no checkpoint loaded)"

# Columns of speed.csv, in order (tests check them).
COLUMNS = [
    "model", "model_note", "family", "resolution", "latent", "batch", "dtype", "device", "attention", "engine",
    "method", "setting", "options", "blocks", "tokens", "reduced_tokens", "latency_ms", "baseline_ms",
    "speedup", "flops_g", "baseline_flops_g", "ideal_speedup", "measured_over_ideal", "attn_share",
    "attn_base_ms", "attn_patched_ms", "overhead_ms", "overhead_share", "overhead_flops_g", "overhead_flop_share",
    "plan_ms", "score_ms", "match_ms",
    "reduce_ms", "restore_ms", "kv_ms", "peak_mem_mb", "upstream_speedup", "repeats",
    "ops_per_block", "kernels_per_block", "cuda_graphs", "compiled",
    # added with the noise check (docs/speed_method.md); older speed.csv files lack them
    "speedup_lo", "speedup_hi", "speedup_conf", "stop", "reduced_share", "bound_speedup", "baseline_drift",
    "unreliable",
]
BLOCK_COLUMNS = ["model", "resolution", "batch", "setting", "block", "tokens", "attn_base_ms", "attn_patched_ms",
                 "plan_ms", "score_ms", "match_ms", "reduce_ms", "restore_ms", "kv_ms", "overhead_ms",
                 "overhead_share"]


# ----------------------------------------------------------------------------------------------
# Tables, plot
# ----------------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str = ".2f") -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else format(value, spec)
    return str(value)


def speedup_cell(row: dict) -> str:
    """'1.54x [1.50, 1.58]' (the interval's coverage appended when below 95%, e.g. with fewer than 6 rounds)."""
    value = row.get("speedup", float("nan"))
    lo, hi = row.get("speedup_lo", float("nan")), row.get("speedup_hi", float("nan"))
    text = _fmt(value) + "x"
    if _finite(lo) and _finite(hi):
        conf = row.get("speedup_conf", float("nan"))
        text += f" [{lo:.2f}, {hi:.2f}" + (f"; {100 * conf:.0f}%" if _finite(conf) and conf < 0.95 else "") + "]"
    return text


def check_cell(row: dict) -> str:
    """'ok', or 'UNRELIABLE: <why>' from the noise check; 'n/a' for rows written before the check existed."""
    if "unreliable" not in row:
        return "n/a"
    why = row.get("unreliable")
    return f"UNRELIABLE: {why}" if isinstance(why, str) and why else "ok"


def _finite(value: Any) -> bool:
    """A real, finite number (not NaN, not a string from an older CSV)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def unreliable_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows the noise check marked: model, resolution, batch, setting and why (for meta.json and warnings)."""
    return [{"model": r["model"], "resolution": r["resolution"], "batch": r["batch"], "setting": r["setting"],
             "why": r["unreliable"]} for r in rows if isinstance(r.get("unreliable"), str) and r["unreliable"]]


def rounds_note(rows: Sequence[dict]) -> str:
    """One line per case: rounds timed and what ended them."""
    cases = {}
    for r in rows:
        cases.setdefault((r["model"], r["resolution"], r["batch"]), (r.get("repeats"), r.get("stop", "")))
    def reason(stop: Any) -> str:
        return f" ({STOP_REASONS.get(stop, stop)})" if isinstance(stop, str) and stop else ""

    return "; ".join(f"{m} {px}px b{b}: {n} rounds{reason(stop)}" for (m, px, b), (n, stop) in cases.items())


def markdown_table(rows: Sequence[dict], load: Optional[dict] = None, allocator: Optional[str] = None) -> str:
    """The headline table (one line per setting; upstream rows also feed the `upstream x` column); `allocator`:
    the CPU allocator setting the rounds ran with (eval.speed.allocator), named under the table when given."""
    header = ["model", "px", "batch", "setting", "ms", "speed-up [95% CI]", "FLOP-ideal", "bound", "meas/ideal",
              "upstream x", "GFLOPs", "attn share", "overhead", "overhead/attn", "its FLOPs/attn", "ops/block",
              "peak MB", "check"]
    lines = [f"Weights: {RANDOM_WEIGHTS_NOTE}. Speed-ups are vs the unpatched SDPA baseline in the same process "
             "(median of per-round ratios, 95% order-statistic interval); bound = 1 / (1 - s), s = the baseline's "
             "time share of the sub-layers the setting reduces: no speed-up can exceed it; check: UNRELIABLE when "
             "the interval lies above the bound or the baseline drifted between the first and last third of the "
             "rounds (docs/speed_method.md); attn share = baseline time in the attn1 layers the setting reduces; "
             "overhead = reducer planning + gather/scatter (ms, and as a share of those layers' baseline time); "
             "its FLOPs/attn = the reducer's own FLOPs (matching, graph, Laplacian) as a share of those layers' "
             "FLOPs, the floor under overhead/attn; ops/block = ATen ops the reducer dispatches per patched block "
             "and call, of which non-view in brackets (a CPU-measurable stand-in for GPU kernel launches).",
             "", "Rounds: " + rounds_note(rows) + "." + (f" Machine: {load_note(load)}." if load else "")
             + (f" Allocator: {allocator}." if allocator else ""),
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        bound = r.get("bound_speedup", float("nan"))
        lines.append("| " + " | ".join([
            r["model"], str(r["resolution"]), str(r["batch"]), setting_cell(r), _fmt(r["latency_ms"], ".1f"),
            speedup_cell(r), _fmt(r["ideal_speedup"]) + "x", "n/a" if not _finite(bound) else f"{bound:.2f}x",
            _fmt(r["measured_over_ideal"]),
            _fmt(r["upstream_speedup"]) + ("x" if not math.isnan(r["upstream_speedup"]) else ""),
            _fmt(r["flops_g"], ".1f"),
            _fmt(100 * r["attn_share"], ".0f") + "%" if not math.isnan(r["attn_share"]) else "n/a",
            _fmt(r["overhead_ms"], ".1f"),
            _fmt(100 * r["overhead_share"], ".1f") + "%" if not math.isnan(r["overhead_share"]) else "n/a",
            _fmt(100 * r["overhead_flop_share"], ".1f") + "%" if not math.isnan(r["overhead_flop_share"]) else "n/a",
            ops_cell(r), _fmt(r["peak_mem_mb"], ".0f"), check_cell(r),
        ]) + " |")
    return "\n".join(lines)


def setting_cell(row: dict) -> str:
    """The setting, tagged with the diffusers attention backend and the compile backend when the row has them."""
    tags = []
    if str(row.get("attention", "")).startswith("diffusers:"):
        tags.append(str(row["attention"]).split(":", 1)[1])
    if isinstance(row.get("compiled"), str) and row["compiled"]:
        tags.append(f"compiled {row['compiled']}")
    return row["setting"] + (f" [{', '.join(tags)}]" if tags else "")


def ops_cell(row: dict) -> str:
    """'60 (39)': ATen ops per block, non-view ops in brackets; n/a for baseline/upstream."""
    ops, kernels = row.get("ops_per_block", float("nan")), row.get("kernels_per_block", float("nan"))
    return "n/a" if isinstance(ops, float) and math.isnan(ops) else f"{ops:.0f} ({kernels:.0f})"


def block_markdown(block_rows: Sequence[dict]) -> str:
    """Per-block reducer overhead (ms) with the block's baseline attn1 time."""
    header = ["model", "px", "batch", "setting", "block", "attn base", "attn patched", "plan", "score", "match",
              "reduce", "restore", "kv", "overhead/attn"]
    lines = [f"Weights: {RANDOM_WEIGHTS_NOTE}. Milliseconds, median of 3 instrumented calls; "
             "plan includes score and match.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in block_rows:
        lines.append("| " + " | ".join([
            r["model"], str(r["resolution"]), str(r["batch"]), r["setting"], r["block"],
            *(_fmt(r[k], ".2f") for k in ("attn_base_ms", "attn_patched_ms", "plan_ms", "score_ms", "match_ms",
                                            "reduce_ms", "restore_ms", "kv_ms")),
            _fmt(100 * r["overhead_share"], ".1f") + "%",
        ]) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """Write `rows` under `columns` atomically (floats to 6 significant digits; other keys ignored)."""
    return atomic_write_csv(path, columns, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                                            for row in rows])


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
            pts = sorted((r["resolution"], r["speedup"], r["ideal_speedup"], r.get("speedup_lo", math.nan),
                          r.get("speedup_hi", math.nan)) for r in sub if r["setting"] == setting)
            color = f"C{i % 10}"
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1] for p in pts], "o-", color=color, label=setting)
            bars = [(x, y, y - lo, hi - y) for x, y, _, lo, hi in pts if _finite(lo) and _finite(hi)]
            if bars:  # 95% intervals of the speed-up
                ax.errorbar([b[0] for b in bars], [b[1] for b in bars],
                            yerr=[[b[2] for b in bars], [b[3] for b in bars]], fmt="none", ecolor=color, capsize=3)
            ax.plot(xs, [p[2] for p in pts], "x--", color=color, alpha=0.6)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"{model}, batch {batch}", fontsize=9)
        ax.set_xlabel("resolution (px)")
        ax.set_ylabel("speed-up vs SDPA baseline")
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"measured (solid, 95% intervals) and FLOP-ideal (dashed) speed-up; {RANDOM_WEIGHTS_NOTE}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


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


def write_outputs(rows: Sequence[dict], block_rows: Sequence[dict], out: Path, meta: dict,
                  plot_png: bool = True) -> None:
    """speed.csv, blocks.csv, their markdown, meta.json (with `machine_load` when given), speed.png (unless
    `plot_png=False`: partial writes during a run), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "speed.csv", rows, COLUMNS)
    write_csv(out / "blocks.csv", block_rows, BLOCK_COLUMNS)
    atomic_write_text(out / "speed.md", markdown_table(rows, meta.get("machine_load"), meta.get("allocator")) + "\n")
    atomic_write_text(out / "blocks.md", block_markdown(block_rows) + "\n")
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    if rows and plot_png:
        plot(rows, out / "speed.png")
