"""What the main job (`bigain.benchmark`) writes: tables with 95% intervals and paired tests, plots, pictures.

`add_statistics` reads the per-image classification records and the generated images of every setting
(`eval.report.outcomes`) and adds to each benchmark row: accuracy / class consistency with Wilson intervals,
domain FID with a bootstrap interval, and the paired difference from the baseline and from the paired
method (BiGain_TM vs ToMe, BiGain_TD vs ToDo) with bootstrap intervals and exact McNemar p-values.
`write_outputs` then writes benchmark.csv/.md, tradeoffs.png (error bars), a sample grid and a per-class
accuracy heatmap per model, and compression.png when a compression sweep was run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bigain.data import load_prompts
from bigain.storage import atomic_write_text
from eval.report import outcomes as rs
from eval.report.plots import per_class_heatmap, sample_grid, save_figure

__all__ = ["add_statistics", "format_table", "format_differences", "plot_tradeoffs", "plot_compression",
           "write_outputs"]

MARKERS = {"none": "*", "tome": "o", "bigain_tm": "s", "todo": "^", "bigain_td": "D", "sito": "v"}


def add_statistics(rows: list[dict], out: Path, n_boot: int = 2000, extractor: str = "fmnist-reference",
                   reference: str = "fmnist-test") -> dict[str, pd.DataFrame]:
    """Add interval and paired-test columns to `rows` (in place); returns per-class accuracy per model."""
    ref = None
    per_class: dict[str, pd.DataFrame] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        cls = {r["tag"]: rs.classification_outcomes(out / "classify" / model / r["tag"]) for r in mine}
        gen_dirs = {r["tag"]: Path(r["generation_dir"]) for r in mine if r.get("generation_dir")}
        gen = {t: rs.generation_outcomes(d, extractor) if d.is_dir() else None for t, d in gen_dirs.items()}
        if ref is None and any(g is not None for g in gen.values()):
            ref = rs.domain_reference_stats(reference, extractor)
        columns = rs.setting_statistics(cls, gen, ref, "none", n_boot)
        labels = {r["tag"]: r["setting"] for r in mine}
        for r in mine:
            r.update(columns.get(r["tag"], {}))
            if r.get("pair_with"):
                r["pair_with"] = labels.get(r["pair_with"], r["pair_with"])
        table = rs.per_class_accuracy(cls)
        if not table.empty:
            per_class[model] = table.rename(index=labels)
    return per_class


def _num(v: Any) -> Optional[float]:
    """A float, or None for missing/empty/NaN."""
    if v in (None, ""):
        return None
    f = float(v)
    return None if f != f else f


def _ci(r: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
    """`82.0 [73.3, 88.3]` from r[key], r[key_lo], r[key_hi]; '' when missing."""
    v = _num(r.get(key))
    if v is None:
        return ""
    lo, hi = _num(r.get(f"{key}_lo")), _num(r.get(f"{key}_hi"))
    text = f"{scale * v:.{digits}f}"
    return text if lo is None or hi is None else f"{text} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def _diff(r: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
    """`-9.0 [-16.0, -2.0] p=0.02`; bold when resolved (interval excludes 0 and, for rates, McNemar p < 0.05)."""
    v, lo, hi = (_num(r.get(k)) for k in (key, f"{key}_lo", f"{key}_hi"))
    if v is None or lo is None or hi is None:
        return ""
    text = f"{scale * v:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
    p = _num(r.get(f"{key}_p"))
    if p is not None:
        text += f" p={p:.2g}"
    resolved = (lo > 0 or hi < 0) and (p is None or p < 0.05)
    return f"**{text}**" if resolved else text


def _speedup(r: dict) -> str:
    """`1.54x [1.50, 1.58]` (coverage appended below 95%, e.g. `; 75%` with 3 rounds); `UNRELIABLE` appended when the
    noise check marked the row."""
    v, lo, hi, conf = (_num(r.get(k)) for k in ("speedup", "speedup_lo", "speedup_hi", "speedup_conf"))
    if v is None:
        return ""
    text = f"{v:.2f}x"
    if lo is not None and hi is not None:
        text += f" [{lo:.2f}, {hi:.2f}" + (f"; {100 * conf:.0f}%" if conf is not None and conf < 0.95 else "") + "]"
    return text + (" UNRELIABLE" if r.get("unreliable") else "")


def format_table(rows: list[dict]) -> str:
    """Markdown table of the benchmark rows: every rate, FID and speed-up with its 95% interval, the removed-layers
    bound next to the FLOP-ideal, and the noise check's reasons for any row it marks."""
    lines = ["| model | method | cls acc (%) [95% CI] | domain FID [95% CI] | class cons. (%) [95% CI] | ms/call | "
             "speed-up [95% CI] | FLOP-ideal | bound | GFLOPs/call |", "|---|---|---|---|---|---|---|---|---|---|"]
    def num(v, fmt):
        return "" if _num(v) is None else format(float(v), fmt)
    for r in rows:
        acc = _ci(r, "acc", 100) if "acc" in r else num(100 * (_num(r.get("accuracy")) or 0), ".1f")
        fid = _ci(r, "fid", 1, 2) if "fid" in r else num(r.get("domain_fid"), ".2f")
        cons = _ci(r, "cons", 100) if "cons" in r else ""
        bound = num(r.get("bound_speedup"), ".2f")
        lines.append(f"| {r['model']} | {r['setting']} | {acc} | {fid} | {cons} | {num(r.get('ms_per_call'), '.1f')} | "
                     f"{_speedup(r)} | {num(r.get('flop_ratio'), '.2f')}x | {bound + 'x' if bound else ''} | "
                     f"{num(r.get('gflops_per_call'), '.2f')} |")
    marked = [r for r in rows if r.get("unreliable")]
    if marked:
        lines += ["", "UNRELIABLE timing (noise check, docs/speed_method.md): "
                  + "; ".join(f"{r['model']} {r['setting']}: {r['unreliable']}" for r in marked) + "."]
    return "\n".join(lines)


def format_differences(rows: list[dict]) -> str:
    """Markdown table of paired differences (vs baseline, and BiGain vs its counterpart), intervals and p-values."""
    lines = ["| model | comparison | images | Δ cls acc (points) [95% CI] McNemar p | Δ domain FID [95% CI] | "
             "Δ class cons. (points) [95% CI] McNemar p |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "none":
            continue
        for prefix, other in (("delta", "Baseline"), ("pair", r.get("pair_with"))):
            if not other or f"{prefix}_acc" not in r and f"{prefix}_fid" not in r:
                continue
            lines.append(f"| {r['model']} | {r['setting']} − {other} | {r.get(f'{prefix}_acc_n', '')} | "
                         f"{_diff(r, f'{prefix}_acc', 100)} | {_diff(r, f'{prefix}_fid', 1, 2)} | "
                         f"{_diff(r, f'{prefix}_cons', 100)} |")
    return "\n".join(lines)


def _errorbar(ax: Any, r: dict, x: float, key: str, scale: float, **kw: Any) -> Optional[float]:
    """Plot r[key] at x with its interval as an error bar; returns the plotted y (None when missing)."""
    y = _num(r.get(key))
    if y is None:
        return None
    lo, hi = _num(r.get(f"{key}_lo")), _num(r.get(f"{key}_hi"))
    yerr = None if lo is None or hi is None else [[scale * max(0.0, y - lo)], [scale * max(0.0, hi - y)]]
    ax.errorbar([x], [scale * y], yerr=yerr, capsize=3, **kw)
    return scale * y


def plot_tradeoffs(rows: list[dict], path: Path) -> Path:
    """Accuracy and domain FID vs measured speed-up, one panel row per model, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), squeeze=False)
    for i, name in enumerate(models):
        panels = (("acc", "accuracy", 100.0, "classification accuracy (%)"),
                  ("fid", "domain_fid", 1.0, "domain FID (lower is better)"))
        for ax, (key, fallback, scale, label) in zip(axes[i], panels):
            for r in (r for r in rows if r["model"] == name):
                x = _num(r.get("speedup"))
                if x is None:
                    continue
                point = r if key in r else {key: r.get(fallback)}  # no statistics: the plain value
                y = _errorbar(ax, point, x, key, scale, fmt=MARKERS.get(r["method"], "o"),
                              ms=11 if r["method"] == "none" else 6,
                              label=r["setting"], alpha=0.85)
                if y is not None:
                    ax.annotate(r["setting"], (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
            ax.set_xlabel("measured speed-up vs baseline (x)")
            ax.set_ylabel(label)
            ax.set_title(f"testbed {name} (error bars: 95% intervals)", fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _compression_x(r: dict) -> Optional[tuple[str, float]]:
    """(family, strength) of a sweep row: ToMe by ratio (baseline at 0), ToDo by df (baseline at 1)."""
    opts = {k: v for k, v in r.get("options", {}).items() if k != "max_downsample"}
    if r["method"] == "tome" and set(opts) == {"ratio"}:
        return "ToMe merging ratio", float(opts["ratio"])
    if r["method"] == "todo" and set(opts) == {"df"}:
        return "ToDo K/V downsampling factor df", float(opts["df"])
    return None


def plot_compression(rows: list[dict], path: Path) -> Optional[Path]:
    """Accuracy (left axis) and domain FID (right axis) against compression strength, per model and family."""
    panels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if r["method"] == "none"), None)
        for family, start in (("ToMe merging ratio", 0.0), ("ToDo K/V downsampling factor df", 1.0)):
            points = [(x[1], r) for r in mine if (x := _compression_x(r)) and x[0] == family]
            if len(points) >= 2:
                panels.append((model, family, ([(start, base)] if base else []) + sorted(points, key=lambda p: p[0])))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (model, family, points) in zip(axes[0], panels):
        twin = ax.twinx()
        for axis, key, scale, color, label in ((ax, "acc", 100.0, "tab:blue", "classification accuracy (%)"),
                                               (twin, "fid", 1.0, "tab:red", "domain FID (lower is better)")):
            xs, ys = [], []
            for x, r in points:
                y = _errorbar(axis, r, x, key, scale, fmt="o", color=color, ms=5)
                if y is not None:
                    xs.append(x)
                    ys.append(y)
            axis.plot(xs, ys, color=color, lw=1)
            axis.set_ylabel(label, color=color)
        ax.set_xlabel(family + (" (baseline at 0)" if "ratio" in family else " (baseline at 1)"))
        ax.set_title(f"testbed {model}: compression sweep (95% intervals)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def fmnist_class_names() -> list[str]:
    """Fashion-MNIST class names in class-index order (the shipped prompt table)."""

    table = load_prompts("fmnist")
    return list(table.classnames)


def write_outputs(rows: list[dict], out: Path, header: str, per_class: Optional[dict[str, pd.DataFrame]] = None,
                  class_names: Optional[list[str]] = None) -> list[Path]:
    """benchmark.csv, benchmark.md, tradeoffs.png, compression.png, samples_<model>.png, per_class_<model>.png.

    A row's sample set is the `images` folder of its `generation_dir`; `class_names` label the plots (default:
    Fashion-MNIST's).
    """
    class_names = class_names or fmnist_class_names()
    legend = ("Intervals: 95%; accuracy and class consistency Wilson, domain FID bootstrap over generated images "
              "(reference statistics fixed, bias-corrected percentile), speed-up the order-statistic interval of the "
              "median per-round ratio (baseline and method timed in the same round). Bound: 1 / (1 - s), s = the "
              "baseline's time share of the layers a setting reduces; no speed-up can exceed it, so a row whose "
              "interval lies above it (or whose baseline drifted over the rounds) is marked UNRELIABLE. Differences "
              "are paired (same test images, "
              "same seeds and classes): bootstrap intervals and exact McNemar p-values; **bold**: the interval "
              "excludes 0 (and, for rates, p < 0.05), i.e. a difference these images resolve.")
    flat = [{k: v for k, v in r.items() if k != "options"} for r in rows]
    text = f"{header}\n\n{format_table(rows)}\n\n{legend}\n\n{format_differences(rows)}\n"
    written = [atomic_write_text(out / "benchmark.csv", pd.DataFrame(flat).to_csv(index=False)),
               atomic_write_text(out / "benchmark.md", text), plot_tradeoffs(rows, out / "tradeoffs.png")]
    compression = plot_compression(rows, out / "compression.png")
    if compression is None:  # no sweep in this run: never leave an earlier run's figure beside this table
        (out / "compression.png").unlink(missing_ok=True)
    written += [compression] if compression else []
    for model in dict.fromkeys(r["model"] for r in rows):
        grid = [(r["setting"], Path(r["generation_dir"]) / "images") for r in rows
                if r["model"] == model and r.get("generation_dir")]
        grid = [(name, folder) for name, folder in grid if folder.is_dir()]
        if grid:
            written.append(sample_grid(grid, out / f"samples_{model}.png", title=f"testbed {model}: samples "
                                       "(rows: settings; columns: the same seed and class)",
                                       class_names=class_names))
        if per_class and model in per_class:
            written.append(per_class_heatmap(per_class[model], out / f"per_class_{model}.png",
                                             f"testbed {model}: accuracy per true class (%)", class_names))
    return written
