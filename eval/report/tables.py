"""Report tables: cells with baseline deltas, paper-style tables, markdown/CSV/LaTeX rendering and writing."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import pandas as pd

from bigain.storage import atomic_write_text
from eval.report.rows import add_derived
from eval.report.tags import (
    DEFAULT_METRICS,
    METRICS,
    TASKS,
    Metric,
    ReportError,
    get_metric,
    is_baseline,
    reduction_label,
    reduction_sort_key,
    short_model,
)

# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _fmt(value: float, digits: Optional[int]) -> str:
    """Fixed digits, or three significant digits without exponent for ordinary magnitudes."""
    if digits is not None:
        return f"{value:.{digits}f}"
    mag = abs(value)
    if mag >= 100 or mag == 0:
        return f"{value:.0f}" if mag >= 100 else "0"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _finite(*values: Any) -> bool:
    """All values present and not NaN."""
    return all(v is not None and not pd.isna(v) for v in values)


def format_cell(value: float, base: float, metric: Metric, baseline_row: bool, incomplete: bool = False,
                interval: tuple = (None, None), paired: tuple = (None, None, None, None),
                unreliable: bool = False) -> str:
    """`71.2 (+3.4)`; empty for a missing value; no delta on the baseline row or without a baseline.

    With statistics (`eval.report.outcomes.add_intervals`): `71.2 [62.1, 79.0] (+3.4 [-2.0, +8.8] p=0.21)`, the
    95% interval of the value and the paired difference from the baseline (interval, McNemar p for rates).
    `unreliable` (a speed-up the noise check marked, `eval.speed.reliability`) appends `!`.
    """
    if value is None or pd.isna(value):
        return ""
    text = _fmt(value, metric.digits) + metric.suffix
    if _finite(*interval):
        text += f" [{_fmt(interval[0], metric.digits)}, {_fmt(interval[1], metric.digits)}]"
    delta, low, high, p = paired
    if not baseline_row and metric.delta == "abs" and _finite(delta, low, high):
        signed = [("" if _fmt(v, metric.digits).startswith("-") else "+") + _fmt(v, metric.digits)
                  for v in (delta, low, high)]
        text += f" ({signed[0]} [{signed[1]}, {signed[2]}]" + (f" p={p:.2g}" if _finite(p) else "") + ")"
    elif not baseline_row and base is not None and not pd.isna(base):
        if metric.delta == "abs":
            delta = _fmt(value - base, metric.digits)
            text += f" ({'' if delta.startswith('-') else '+'}{delta})"
        elif metric.delta == "rel" and base != 0:
            text += f" ({100.0 * (value - base) / base:+.0f}%)"
    return text + ("*" if incomplete else "") + ("!" if unreliable else "")


def _dimensions(columns: str) -> tuple[str, str]:
    """(column dimension, the other one) for `columns` = dataset or model."""
    if columns not in ("dataset", "model"):
        raise ReportError(f"columns must be 'dataset' or 'model', got {columns!r}")
    return columns, "model" if columns == "dataset" else "dataset"


def table_values(df: pd.DataFrame, metric: str, columns: str = "dataset", baseline: str = "none") -> pd.DataFrame:
    """Long numeric form of a table: group, reduction, column, value, baseline value, incomplete flag."""
    m = get_metric(metric)
    col_dim, group_dim = _dimensions(columns)
    if "is_baseline" not in df.columns or "time_per_image_s" not in df.columns:
        df = add_derived(df, baseline)
    if m.column not in df.columns:
        raise ReportError(f"metric {metric!r}: no column {m.column!r} in the runs; "
                          f"known metrics: {sorted(METRICS)} or any numeric column")
    values = pd.to_numeric(df[m.column], errors="coerce") * m.scale

    def extra(suffix: str, scale: float = m.scale) -> pd.Series:
        """A statistics column of this metric (see eval.report.outcomes.add_intervals), scaled; NaN when absent."""
        name = f"{m.column}_{suffix}"
        if name not in df.columns:
            return pd.Series(float("nan"), index=df.index)
        return pd.to_numeric(df[name], errors="coerce") * scale

    long = pd.DataFrame({"group": df[group_dim].astype(str), "reduction": df["reduction"].astype(str),
                         "column": df[col_dim].astype(str), "value": values, "lo": extra("lo"), "hi": extra("hi"),
                         "delta": extra("delta"), "delta_lo": extra("delta_lo"), "delta_hi": extra("delta_hi"),
                         "delta_p": extra("delta_p", 1.0),
                         "incomplete": ~df["complete"].astype(bool) if "complete" in df.columns else False,
                         "unreliable": _marked(df) if m.name == "speedup" else False,
                         "is_baseline": df["reduction"].map(lambda t: is_baseline(t, baseline))})
    base = long[long["is_baseline"]].drop_duplicates(["group", "column"], keep="last")
    base = base.set_index(["group", "column"])["value"]
    long["baseline_value"] = [base.get((g, c), float("nan")) for g, c in zip(long["group"], long["column"])]
    return long.reset_index(drop=True)


def _marked(df: pd.DataFrame) -> pd.Series:
    """Rows whose timing the noise check marked (a non-empty `unreliable` cell; absent in older speed.csv files)."""
    if "unreliable" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["unreliable"].fillna("").astype(str).str.strip().ne("")


def build_table(df: pd.DataFrame, metric: str, columns: str = "dataset", baseline: str = "none") -> pd.DataFrame:
    """Paper-style table of strings: rows = method (setting), columns = datasets or models; '' where missing."""
    m = get_metric(metric)
    long = table_values(df, metric, columns, baseline)
    groups = list(dict.fromkeys(long["group"]))
    col_names = list(dict.fromkeys(long["column"]))
    reductions = sorted(dict.fromkeys(long["reduction"]), key=reduction_sort_key)
    # Baseline rows first whatever their tag, then the method order.
    reductions = sorted(reductions, key=lambda r: not is_baseline(r, baseline))
    multi = len(groups) > 1
    pretty_cols = [short_model(c) if columns == "model" else c for c in col_names]
    cells = {(g, r, c): row for g, r, c, row in zip(long["group"], long["reduction"], long["column"],
                                                    long.itertuples(index=False))}
    index, body = [], []
    for g in groups:
        for r in reductions:
            entries = [cells.get((g, r, c)) for c in col_names]
            if all(e is None for e in entries):
                continue
            label = reduction_label(r)
            index.append(f"{short_model(g) if columns == 'dataset' else g} | {label}" if multi else label)
            body.append([format_cell(e.value, e.baseline_value, m, bool(e.is_baseline), bool(e.incomplete),
                                     (e.lo, e.hi), (e.delta, e.delta_lo, e.delta_hi, e.delta_p), bool(e.unreliable))
                         if e is not None else "" for e in entries])
    table = pd.DataFrame(body, index=pd.Index(index, name="Method"), columns=pretty_cols, dtype=object)
    table.attrs.update(metric=m.name, label=m.label, columns=columns)
    return table


def to_markdown(table: pd.DataFrame, caption: str = "") -> str:
    """GitHub markdown table (no tabulate needed); empty cells stay empty."""
    def esc(text: Any) -> str:
        """Escape the column separator."""
        return str(text).replace("|", "\\|")

    head = [table.index.name or ""] + [esc(c) for c in table.columns]
    lines = [f"**{caption}**", ""] if caption else []
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join([" --- "] + [" ---: "] * len(table.columns)) + "|")
    for label, row in zip(table.index, table.itertuples(index=False)):
        lines.append("| " + " | ".join([esc(label)] + [esc(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: Any) -> str:
    """LaTeX-escape a cell."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """booktabs tabular (needs \\usepackage{booktabs}); empty cells stay empty."""
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{tex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\begin{tabular}{l" + "r" * len(table.columns) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join([tex_escape(table.index.name or "")] + [tex_escape(c) for c in table.columns]) + r" \\")
    lines.append(r"\midrule")
    for i, (name, row) in enumerate(zip(table.index, table.itertuples(index=False))):
        lines.append(" & ".join([tex_escape(name)] + [tex_escape(v) for v in row]) + r" \\")
        if i == 0 and len(table.index) > 1 and "Baseline" in str(name) and "Baseline" not in str(table.index[1]):
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """CSV text of a table of strings; empty cells stay empty."""
    return table.to_csv(na_rep="", lineterminator="\n")


def _slug(text: Any) -> str:
    """Filesystem-safe piece of a file name."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(short_model(text))).strip("-") or "x"


def _available_metrics(sub: pd.DataFrame, task: str, wanted: Optional[Sequence[str]]) -> list[str]:
    """Metrics to tabulate for one task: the requested ones, or the task's defaults that have values."""
    names = list(wanted) if wanted else list(DEFAULT_METRICS.get(task, ("accuracy", "speedup")))
    out = []
    for name in names:
        column = get_metric(name).column
        if column in sub.columns and pd.to_numeric(sub[column], errors="coerce").notna().any():
            out.append(name)
    return out


def _task_order(tasks: Iterable[str]) -> list[str]:
    """Tasks in TASKS order, unknown ones last."""
    return sorted(set(tasks), key=lambda t: (TASKS.index(t) if t in TASKS else len(TASKS), t))


def iter_tables(df: pd.DataFrame, metrics: Optional[Sequence[str]] = None, columns: str = "dataset",
                baseline: str = "none") -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(file stem, caption, table) for every task x metric x group (model when columns=dataset) with values."""
    _, group_dim = _dimensions(columns)
    used: set[str] = set()
    for task in _task_order(df["task"]):
        sub = df[df["task"] == task]
        groups = list(dict.fromkeys(sub[group_dim]))
        for name in _available_metrics(sub, task, metrics):
            m = get_metric(name)
            for group in groups:
                part = sub[sub[group_dim] == group]
                if not pd.to_numeric(part[m.column], errors="coerce").notna().any():
                    continue
                stem = f"{task}_{name}" + (f"_{_slug(group)}" if len(groups) > 1 else "")
                while stem in used:  # two groups with the same slug
                    stem += "_"
                used.add(stem)
                who = short_model(group) if group_dim == "model" else group
                caption = f"{task}: {m.label}" + (f", {group_dim} {who}" if who else "")
                yield stem, caption, build_table(part, name, columns, baseline)


def write_table(table: pd.DataFrame, out_dir: Path, stem: str, caption: str, formats: Sequence[str]) -> list[Path]:
    """`<stem>.md|csv|tex` for one table (atomic writes)."""
    render = {"md": lambda: to_markdown(table, caption), "csv": lambda: to_csv(table),
              "tex": lambda: to_latex(table, caption, f"tab:{stem}")}
    return [atomic_write_text(out_dir / f"{stem}.{fmt}", render[fmt]()) for fmt in formats]


def write_tables(df: pd.DataFrame, out_dir: str | Path, metrics: Optional[Sequence[str]] = None,
                 columns: str = "dataset", formats: Sequence[str] = ("md", "csv", "tex"),
                 tasks: Optional[Sequence[str]] = None, baseline: str = "none") -> list[Path]:
    """Every table (see iter_tables) in each format, plus report.md (all tables) and rows.csv (the runs used)."""
    out = Path(out_dir)
    _dimensions(columns)
    bad = sorted(set(formats) - {"md", "csv", "tex"})
    if bad:
        raise ReportError(f"unknown format(s) {bad}; choose from md, csv, tex")
    held = _task_order(df["task"])
    if tasks is not None:
        df = df[df["task"].isin(tasks)]
    if df.empty:
        raise ReportError(f"no rows for task(s) {list(tasks or [])}; the runs hold {held}")
    counts = ", ".join(f"{t}: {int((df['task'] == t).sum())}" for t in _task_order(df["task"]))
    sections = ["# BiGain report", "",
                f"{len(df)} runs ({counts}). Cells: value (difference from the baseline row of the same column; "
                "percent change for FLOPs and time); empty: no run or no value; *: incomplete run. Speed-up: "
                "baseline model time per image / the method's, same task, model and dataset "
                "(speed benchmark: its own interleaved measurement, with its 95% interval in brackets; !: marked "
                "unreliable by its noise check, docs/speed_method.md).", ""]
    written: list[Path] = []
    for stem, caption, table in iter_tables(df, metrics, columns, baseline):
        written += write_table(table, out, stem, caption, formats)
        sections += [f"## {stem}", "", to_markdown(table, caption)]
    if metrics and not written:
        numeric = sorted(c for c in df.columns if not c.startswith("_") and pd.api.types.is_numeric_dtype(df[c]))
        raise ReportError(f"none of the metrics {list(metrics)} has values in the runs; known metrics: "
                          f"{sorted(METRICS)}; numeric columns: {numeric}")
    keep = [c for c in df.columns if not c.startswith("_")]
    written.append(atomic_write_text(out / "rows.csv", df[keep].to_csv(index=False, na_rep="", lineterminator="\n")))
    written.append(atomic_write_text(out / "report.md", "\n".join(sections)))
    return written
