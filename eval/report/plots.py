"""Report trade-off plots: accuracy vs speed-up, FID vs speed-up, accuracy vs FID (PNGs)."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bigain.storage import atomic_write_bytes
from eval.report.outcomes import classification_outcomes, per_class_accuracy
from eval.report.rows import add_derived
from eval.report.tags import (
    METHOD_NAMES,
    METHOD_ORDER,
    is_baseline,
    parse_reduction,
    reduction_label,
    reduction_sort_key,
    short_model,
    tag_options_text,
)

# ----------------------------------------------------------------------------------------------
# Trade-off plots
# ----------------------------------------------------------------------------------------------

MARKERS = {"none": "*", "tome": "o", "upstream": "x", "bigain_tm": "s", "todo": "^", "bigain_td": "D", "sito": "v"}


def _scatter_panel(ax: Any, points: pd.DataFrame, x: str, y: str, title: str, baseline: str) -> None:
    """One panel: a marker per method, a label per point, the baseline as a large black-edged star."""
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors
    order = sorted(range(len(points)), key=lambda i: reduction_sort_key(points["reduction"].iloc[i]))
    points = points.iloc[order]
    methods = points["reduction"].map(lambda t: parse_reduction(t)[0])
    for method, part in points.groupby(methods, sort=False):  # one thin line through each method's settings
        if len(part) > 1 and not is_baseline(part["reduction"].iloc[0], baseline):
            rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
            part = part.sort_values(x)
            ax.plot(part[x], part[y], color=colors[rank % len(colors)], lw=0.8, alpha=0.6, zorder=1)
    seen: set[str] = set()
    for row in points.itertuples(index=False):
        tag = row.reduction
        method = parse_reduction(tag)[0]
        base = is_baseline(tag, baseline)
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        name = "Baseline" if base else METHOD_NAMES.get(method, method)
        lo, hi = getattr(row, f"{y}_lo", float("nan")), getattr(row, f"{y}_hi", float("nan"))
        if not (pd.isna(lo) or pd.isna(hi)):  # 95% interval (eval.report.outcomes)
            yv = getattr(row, y)
            ax.errorbar(getattr(row, x), yv, yerr=[[max(0.0, yv - lo)], [max(0.0, hi - yv)]], fmt="none",
                        ecolor="0.3" if base else colors[rank % len(colors)], capsize=3, lw=1, zorder=1)
        ax.scatter(getattr(row, x), getattr(row, y), marker="*" if base else MARKERS.get(method, "P"),
                   s=220 if base else 60, color="gold" if base else colors[rank % len(colors)],
                   edgecolors="black", linewidths=1.2 if base else 0.5, zorder=3 if base else 2,
                   label=None if name in seen else name)
        seen.add(name)
        ax.annotate("baseline" if base else tag_options_text(tag), (getattr(row, x), getattr(row, y)),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    base_rows = points[points["reduction"].map(lambda t: is_baseline(t, baseline))]
    if not base_rows.empty:
        ax.axhline(float(base_rows[y].iloc[0]), color="0.5", lw=0.8, ls="--", zorder=1)
    ax.margins(0.15)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def save_figure(fig: Any, path: Path) -> Path:
    """Save a PNG atomically and close the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _panel_figure(panels: list[tuple[str, pd.DataFrame]], x: str, y: str, xlabel: str, ylabel: str,
                  baseline: str, path: Path) -> Path:
    """A grid of scatter panels in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False)
    for ax, (title, points) in zip(axes.flat, panels):
        _scatter_panel(ax, points, x, y, title, baseline)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


def _panels(sub: pd.DataFrame, x: str, y: str) -> list[tuple[str, pd.DataFrame]]:
    """One panel per model x dataset with finite x and y."""
    sub = sub[pd.to_numeric(sub[x], errors="coerce").notna() & pd.to_numeric(sub[y], errors="coerce").notna()]
    return [(f"{short_model(model)} / {dataset}", part)
            for (model, dataset), part in sub.groupby(["model", "dataset"], sort=False)]


def tradeoff_plots(df: pd.DataFrame, out_dir: str | Path, baseline: str = "none") -> list[Path]:
    """accuracy vs speed-up, FID vs speed-up, accuracy vs FID (joined on model + reduction) as PNGs."""
    if "is_baseline" not in df.columns:
        df = add_derived(df, baseline)
    out = Path(out_dir)
    written = []
    frame = df.copy()
    for column in ("accuracy", "fid"):
        if column not in frame.columns:
            frame[column] = float("nan")
    frame["accuracy_pct"] = frame["accuracy"] * 100.0
    for suffix in ("lo", "hi"):
        if f"accuracy_{suffix}" in frame.columns:
            frame[f"accuracy_pct_{suffix}"] = pd.to_numeric(frame[f"accuracy_{suffix}"], errors="coerce") * 100.0
    if "domain_fid" not in frame.columns:
        frame["domain_fid"] = float("nan")
    cls, gen = frame[frame["task"] == "classify"], frame[frame["task"] == "generate"]
    for sub, y, ylabel, name in ((cls, "accuracy_pct", "Top-1 accuracy (%)", "accuracy_vs_speedup.png"),
                                 (gen, "fid", "FID (lower is better)", "fid_vs_speedup.png"),
                                 (gen, "domain_fid", "domain FID (lower is better)", "domain_fid_vs_speedup.png")):
        panels = _panels(sub, "speedup", y)
        if panels:
            written.append(_panel_figure(panels, "speedup", y, "Speed-up over baseline (x)", ylabel, baseline,
                                         out / name))
    a = cls[cls["accuracy_pct"].notna()][["model", "dataset", "reduction", "accuracy_pct"]]
    f = gen[gen["fid"].notna()][["model", "dataset", "reduction", "fid"]]
    joined = a.merge(f, on=["model", "reduction"], suffixes=("_cls", "_gen"))
    if not joined.empty:
        panels = [(f"{short_model(m)} / {dc} vs {dg}", part)
                  for (m, dc, dg), part in joined.groupby(["model", "dataset_cls", "dataset_gen"], sort=False)]
        written.append(_panel_figure(panels, "fid", "accuracy_pct", "FID (lower is better)", "Top-1 accuracy (%)",
                                     baseline, out / "accuracy_vs_fid.png"))
    return written


# ----------------------------------------------------------------------------------------------
# Per-class accuracy and sample grids
# ----------------------------------------------------------------------------------------------

def per_class_heatmap(table: pd.DataFrame, path: Path, title: str, class_names: Any = None) -> Path:
    """Heatmap of accuracy (%) per true class (columns) and setting (rows), each cell annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = 100.0 * table.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * table.shape[1], 0.9 + 0.36 * table.shape[0]))
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    names = [class_names[int(c)] if class_names is not None else str(c) for c in table.columns]
    ax.set_xticks(range(table.shape[1]), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index], fontsize=7)
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="white" if v < 60 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="accuracy (%)")
    fig.tight_layout()
    return save_figure(fig, path)


def sample_grid(rows: list[tuple[str, Path]], path: Path, per_class: int = 1, title: str = "",
                class_names: Any = None) -> Path:
    """Generated images: one row per setting, the same items (seed, class) in every column.

    `rows` are (label, image folder with `<stem>.png` + `<stem>.json` holding `label`); columns are the
    first `per_class` items of each class that every row has.
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    def items(folder: Path) -> dict[str, int]:
        return {p.stem: int(json.loads(p.with_suffix(".json").read_text()).get("label", -1))
                for p in sorted(folder.glob("*.png")) if p.with_suffix(".json").is_file()}

    found = [items(folder) for _, folder in rows]
    common = [k for k in found[0] if all(k in f for f in found[1:])] if found else []
    columns: list[str] = []
    for label in sorted(set(found[0][k] for k in common)) if common else []:
        columns += [k for k in common if found[0][k] == label][:per_class]
    if not columns:
        raise ValueError("no generated item is shared by every setting of the grid")
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(0.75 * len(columns) + 1.6, 0.8 * len(rows) + 0.4),
                             squeeze=False)
    for i, ((name, folder), ax_row) in enumerate(zip(rows, axes)):
        for j, (key, ax) in enumerate(zip(columns, ax_row)):
            with Image.open(folder / f"{key}.png") as im:
                ax.imshow(im.convert("L"), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
            if i == 0:
                label = found[0][key]
                ax.set_title(class_names[label] if class_names is not None else f"class {label}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def per_class_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """A per-class accuracy heatmap for every classification model x dataset whose runs hold per-image records."""
    written = []
    cls = df[df["task"] == "classify"] if "run_dir" in df.columns else df.iloc[:0]
    for (model, dataset), part in cls.groupby(["model", "dataset"], sort=False):
        part = part.iloc[sorted(range(len(part)), key=lambda i: reduction_sort_key(part["reduction"].iloc[i]))]
        outcomes = {reduction_label(str(r.reduction)): classification_outcomes(r.run_dir) for r in part.itertuples()
                    if isinstance(r.run_dir, str) and Path(r.run_dir).is_dir()}
        table = per_class_accuracy(outcomes)
        if not table.empty:
            name = f"per_class_accuracy_{short_model(model)}_{dataset}".replace("/", "-").replace(" ", "")
            written.append(per_class_heatmap(table, Path(out_dir) / f"{name}.png",
                                             f"{short_model(model)} / {dataset}: accuracy per true class (%)"))
    return written
