"""Paper-style tables and speed/quality trade-off plots from any set of runs (issue 7, part 3).

Inputs are any mix of summary CSVs (`bigain.classify`, `bigain.generate`, `eval.speed`'s
speed.csv), run folders (holding `result*.json`, `metrics.json`, `summary.csv`) and folders that
are searched recursively for them. Every row gets a task (classify / generate / speed), a model,
a dataset and a reduction tag (`bigain_tm_ratio0.7`; `none` is the baseline); when the same
(task, model, dataset, reduction) appears more than once the latest complete row wins.

Tables: rows = method with its setting (baseline first), columns = datasets or models, cells =
one metric with its difference from the baseline row of the same column, e.g. `71.2 (+3.4)`.
Speed-up is the baseline's model time per image over the method's, within the same task, model
and dataset (speed.csv brings its own). A run that is missing is an empty cell, never a zero.
A cell from an incomplete run (no complete one exists) is marked `*`.

    python -m eval.report results/classify results/gen/summary.csv --out results/report
    python -m eval.report results --out report --task classify --metric accuracy speedup \
        --columns dataset --formats md tex
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import pandas as pd

__all__ = [
    "DEFAULTS", "TASKS", "METRICS", "DEFAULT_METRICS", "Metric", "ReportError", "collect_rows", "add_derived",
    "parse_reduction", "reduction_label", "build_table", "table_values", "iter_tables", "write_table", "write_tables",
    "tradeoff_plots", "build_parser", "main",
]

TASKS = ("classify", "generate", "speed")
DEFAULTS: dict[str, Any] = {"columns": "dataset", "formats": ("md", "csv", "tex"), "baseline": "none"}
BASELINE_TAGS = ("none", "baseline")
KEY = ("task", "model", "dataset", "reduction")

# Method tag -> display name; the order is the row order of every table.
METHOD_NAMES: dict[str, str] = {
    "none": "Baseline", "baseline": "Baseline", "tome": "ToMe", "bigain_tm": "BiGain_TM", "lgtm": "BiGain_TM",
    "todo": "ToDo", "bigain_td": "BiGain_TD", "iekvd": "BiGain_TD", "sito": "SiTo", "upstream": "upstream ToMe",
}
METHOD_ORDER = ("none", "baseline", "tome", "upstream", "bigain_tm", "lgtm", "todo", "bigain_td", "iekvd", "sito")
# Option names a reduction tag may carry (bigain.reduction.REDUCTION_FLAGS, plus the reducer seed).
OPTION_KEYS = (
    "ratio", "df", "df_level2", "alpha", "alpha_schedule", "alpha_start", "alpha_end", "mode", "stop_threshold",
    "max_downsample", "blocks", "sx", "sy", "use_rand", "laplacian_norm", "strip_layout", "noise_alpha", "sim_beta",
    "merge_attn", "merge_crossattn", "merge_mlp", "rseed",
)
OPTION_SHORT = {"ratio": "r"}
MODEL_NAMES = {
    "stable-diffusion-2-base": "SD 2.0", "stable-diffusion-2-1-base": "SD 2.1", "stable-diffusion-v1-5": "SD 1.5",
    "stable-diffusion-v1-4": "SD 1.4", "DiT-XL-2-512": "DiT-XL/2-512", "DiT-XL-2-256": "DiT-XL/2-256",
}
# Keys written by eval.metrics (torch-fidelity names) -> report column names.
COLUMN_ALIASES = {
    "frechet_inception_distance": "fid", "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std", "inception_score_mean": "inception_score",
    "inception_score_std": "inception_score_std", "domain_frechet_distance": "domain_fid",
    "flops_g": "gflops",
}
GENERATION_METRICS = ("fid", "kid_mean", "inception_score", "clip_score", "domain_fid", "class_consistency")
NUMERIC = ("accuracy", "images", "expected_images", "calls_per_image", "model_time_s", "images_per_s",
           "images_written", "items", "model_time_per_image_s", "flops_per_call_per_image", "flops_per_image",
           "wall_time_s", "flops_per_call", "gflops", "speedup", "ideal_speedup", "latency_ms", "baseline_ms",
           "resolution", "batch", "kid_std", "inception_score_std", *GENERATION_METRICS)
RUN_FILES = ("result*.json", "metrics.json")
SUMMARY_FILES = ("summary.csv", "speed.csv")


class ReportError(ValueError):
    """Bad input to the report (no rows, unknown metric, missing path)."""


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """How one table cell is read (`column`), scaled, printed and compared with the baseline."""

    name: str
    column: str
    label: str
    scale: float = 1.0
    digits: Optional[int] = None  # None: three significant digits
    delta: str = "abs"  # abs: value - baseline; rel: percent change; none: no delta
    suffix: str = ""
    higher_is_better: bool = True


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "accuracy", "Top-1 accuracy (%)", scale=100.0, digits=1),
    Metric("fid", "fid", "FID", digits=2, higher_is_better=False),
    Metric("kid_mean", "kid_mean", "KID (x1e3)", scale=1e3, digits=2, higher_is_better=False),
    Metric("inception_score", "inception_score", "Inception Score", digits=2),
    Metric("clip_score", "clip_score", "CLIP score", digits=2),
    Metric("domain_fid", "domain_fid", "Domain FID", digits=2, higher_is_better=False),
    Metric("class_consistency", "class_consistency", "Class consistency (%)", scale=100.0, digits=1),
    Metric("speedup", "speedup", "Speed-up (x)", digits=2, delta="none", suffix="x"),
    Metric("ideal_speedup", "ideal_speedup", "FLOP-ideal speed-up (x)", digits=2, delta="none", suffix="x"),
    Metric("flops", "gflops", "GFLOPs per call", delta="rel", higher_is_better=False),
    Metric("time_per_image", "time_per_image_s", "Model time per image (s)", delta="rel", higher_is_better=False),
    Metric("calls_per_image", "calls_per_image", "Denoiser calls per image", digits=1, delta="rel"),
    Metric("images_per_s", "images_per_s", "Images per second", delta="rel"),
)}
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "classify": ("accuracy", "speedup", "flops"),
    "generate": (*GENERATION_METRICS, "speedup", "flops"),
    "speed": ("speedup", "ideal_speedup", "flops"),
}


def get_metric(name: str) -> Metric:
    """A named metric, or a plain one for any other numeric column."""
    if name in METRICS:
        return METRICS[name]
    column = COLUMN_ALIASES.get(name, name)
    return Metric(name, column, column)


# ----------------------------------------------------------------------------------------------
# Reduction tags
# ----------------------------------------------------------------------------------------------

def parse_reduction(tag: Any) -> tuple[str, list[tuple[str, str]]]:
    """`bigain_td_alpha0.5_df2` -> ('bigain_td', [('alpha', '0.5'), ('df', '2')]); unknown tags -> (tag, [])."""
    text = str(tag).strip()
    low = text.lower()
    method = next((m for m in sorted(METHOD_NAMES, key=len, reverse=True) if low == m or low.startswith(m + "_")),
                  None)
    if method is None:
        return text, []
    tokens = [t for t in text[len(method) + 1:].split("_")] if len(text) > len(method) else []
    options: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        for k in range(1, len(tokens) - i + 1):
            part = "_".join(tokens[i:i + k])
            names = [n for n in OPTION_KEYS if part.startswith(n) and len(part) > len(n)]
            if names:
                name = max(names, key=len)
                options.append((name, part[len(name):]))
                i += k
                break
        else:  # not an option we know: keep the rest verbatim
            options.append(("", "_".join(tokens[i:])))
            break
    return method, options


def _option_text(value: str) -> str:
    """Option value as printed (booleans lower-case)."""
    return value.lower() if value in ("True", "False") else value


def reduction_label(tag: Any) -> str:
    """Display name of a reduction tag: `bigain_tm_ratio0.7` -> `BiGain_TM (r=0.7)`, `none` -> `Baseline`."""
    method, options = parse_reduction(tag)
    name = METHOD_NAMES.get(method, method)
    parts = [f"{OPTION_SHORT.get(k, k)}={_option_text(v)}" if k else v for k, v in options]
    return f"{name} ({', '.join(parts)})" if parts else name


def _sort_value(value: str) -> tuple[int, float, str]:
    """Numbers sort numerically, before text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def reduction_sort_key(tag: Any) -> tuple:
    """Baseline first, then the paper's method order, then option values."""
    method, options = parse_reduction(tag)
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, method, tuple((k, _sort_value(v)) for k, v in options))


def is_baseline(tag: Any, baseline: str = "none") -> bool:
    """True for the baseline's reduction tag (`none`/`baseline`, or the one asked for)."""
    text = str(tag).strip().lower()
    return text == baseline.lower() or (baseline.lower() in BASELINE_TAGS and text in BASELINE_TAGS)


def short_model(name: Any) -> str:
    """Display name of a model id or path (`stabilityai/stable-diffusion-2-base` -> `SD 2.0`)."""
    text = str(name).rstrip("/")
    last = text.replace("--", "/").split("/")[-1] or text
    return MODEL_NAMES.get(last, last)


# ----------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    """A JSON object, or an empty dict (with a warning) when unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        print(f"warning: skipping {path}: {err}", file=sys.stderr)
        return {}
    return obj if isinstance(obj, dict) else {}


def _metrics_of(path: Path) -> dict:
    """The scalar entries of a metrics.json, renamed to report columns."""
    return {COLUMN_ALIASES.get(k, k): v for k, v in _read_json(path).items() if not isinstance(v, (dict, list))}


def _metrics_file(run_dir: Path) -> Optional[Path]:
    """A run's metrics.json: in the run folder or next to its images (eval.metrics' default)."""
    for path in (run_dir / "metrics.json", run_dir / "images" / "metrics.json"):
        if path.is_file():
            return path
    return None


def _config_fields(run_dir: Path) -> dict:
    """Scalar fields of a run's config.json (top level, `args`, `result_config`); dataset from `source`."""
    cfg = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    fields = {k: v for k, v in cfg.items() if not isinstance(v, (dict, list))}
    for section in ("args", "result_config"):
        part = cfg.get(section)
        if isinstance(part, dict):
            fields.update({k: v for k, v in part.items() if not isinstance(v, (dict, list))})
    if not fields.get("model") and fields.get("version"):
        fields["model"] = fields["version"]
    if not fields.get("dataset") and fields.get("source"):
        fields["dataset"] = fields["source"]
    fields.pop("source", None)  # `source` in report rows is the file a row came from
    return fields


def _generation_complete(run_dir: Path, fields: dict) -> Optional[bool]:
    """Whether a generation run folder holds all its images (PNG count vs config n_items); None if unknown."""
    images, expected = run_dir / "images", pd.to_numeric(fields.get("n_items"), errors="coerce")
    if not images.is_dir() or pd.isna(expected):
        return None
    return sum(1 for _ in images.glob("*.png")) >= int(expected)


def _enrich(row: dict) -> dict:
    """Fill a summary row from its run folder: dataset (config.json), metrics.json, generation completeness."""
    if not _filled(row.get("run_dir")):
        return row
    run_dir = Path(str(row["run_dir"]))
    if not run_dir.is_dir():
        return row
    fields = _config_fields(run_dir) if (run_dir / "config.json").is_file() else {}
    if not _filled(row.get("dataset")) and _filled(fields.get("dataset")):
        row["dataset"] = fields["dataset"]
    metrics = _metrics_file(run_dir)
    if metrics is not None:
        row.update({k: v for k, v in _metrics_of(metrics).items() if not _filled(row.get(k))})
    if "images_written" in row and not _filled(row.get("complete")):
        done = _generation_complete(run_dir, fields)
        if done is not None:
            row["complete"] = done
    return row


def _run_folder_rows(run_dir: Path) -> list[dict]:
    """Rows of one run folder: each result*.json (plus metrics.json), or metrics.json with config.json."""
    path = _metrics_file(run_dir)
    metrics = _metrics_of(path) if path is not None else {}
    rows = []
    for path in sorted(run_dir.glob("result*.json")):
        row = {k: v for k, v in _read_json(path).items() if not isinstance(v, (dict, list))}
        if row:
            rows.append({**row, **metrics, "source": str(path)})
    if not rows and metrics:
        fields = _config_fields(run_dir)
        done = _generation_complete(run_dir, fields)
        rows.append({**fields, **metrics, "run_dir": str(run_dir), "source": str(path),
                     **({"complete": done} if done is not None else {})})
    if not rows and (run_dir / "summary.csv").is_file():
        rows = _csv_rows(run_dir / "summary.csv")
    return rows


def _speed_row(row: dict) -> dict:
    """A speed.csv row in report terms: reduction tag from method + options, dataset = resolution and batch."""
    out = dict(row)
    try:
        options = json.loads(row.get("options") or "{}")
    except (TypeError, json.JSONDecodeError):
        options = {}
    method = str(row.get("method", "none"))
    parts = [method] + [f"{k}{'-'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                        for k, v in sorted(options.items())]
    out["reduction"] = "_".join(parts).replace("/", "-").replace(" ", "")
    res, batch = row.get("resolution", ""), row.get("batch", "")
    out["dataset"] = f"{res}px b{batch}" if res not in ("", None) else str(row.get("dataset", ""))
    out["task"] = "speed"
    out["complete"] = True
    return out


def _csv_rows(path: Path) -> list[dict]:
    """Rows of a summary or speed CSV (speed rows translated, others filled from their run folder)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        print(f"warning: skipping {path}: {err}", file=sys.stderr)
        return []
    is_speed = path.name == "speed.csv" or {"setting", "speedup", "latency_ms"} <= set(frame.columns)
    out = []
    for row in frame.to_dict("records"):
        row = {COLUMN_ALIASES.get(k, k): v for k, v in row.items()}
        row = _speed_row(row) if is_speed else _enrich(row)
        out.append({**row, "source": str(path)})
    return out


def _run_dirs_under(path: Path) -> list[Path]:
    """Run folders below `path`: folders with result*.json or metrics.json (images/metrics.json -> its run)."""
    found = set()
    for pattern in RUN_FILES:
        for p in path.rglob(pattern):
            folder = p.parent
            if folder.name == "images" and (folder.parent / "config.json").is_file():
                folder = folder.parent
            found.add(folder)
    return sorted(found)


def _rows_from_path(path: Path) -> list[dict]:
    """Rows from one input: a CSV file, a run folder, or a folder searched recursively."""
    if path.is_file():
        if path.suffix == ".csv":
            return _csv_rows(path)
        if path.suffix == ".json":
            return _run_folder_rows(path.parent)
        raise ReportError(f"{path}: expected a .csv, a result/metrics .json or a folder")
    if not path.is_dir():
        raise ReportError(f"{path}: no such file or folder")
    summaries = sorted(p for name in SUMMARY_FILES for p in path.rglob(name))
    # Run folders first: a summary row of the same run (same time) then wins, with the CSV's columns.
    return [row for d in _run_dirs_under(path) for row in _run_folder_rows(d)] + \
        [row for p in summaries for row in _csv_rows(p)]


def _infer_task(row: dict) -> str:
    """classify / generate / speed from a row's own `task` or the columns it has."""
    task = str(row.get("task", "") or "").strip().lower()
    if task in TASKS:
        return task
    if task in ("classification", "classifier"):
        return "classify"
    if task in ("generation", "sample", "sampling"):
        return "generate"
    if "setting" in row and "speedup" in row:
        return "speed"
    if _filled(row.get("accuracy")) or _filled(row.get("n_samples")):
        return "classify"
    if any(_filled(row.get(k)) for k in GENERATION_METRICS) or "images_written" in row or "sampler" in row:
        return "generate"
    return "classify" if "accuracy" in row else "generate"


def _filled(value: Any) -> bool:
    """A value that is there (not None, '', NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() != ""


def _as_bool(value: Any) -> bool:
    """CSV/JSON truthiness ('True', 'true', 1, True); empty counts as complete."""
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    text = str(value).strip().lower()
    return text in ("", "1", "true", "yes")


def _normalise(rows: list[dict]) -> pd.DataFrame:
    """One DataFrame with task/model/dataset/method/reduction filled and numbers parsed."""
    for order, row in enumerate(rows):
        row["task"] = _infer_task(row)
        row["_order"] = order
        row["complete"] = _as_bool(row.get("complete", True))
        method = str(row.get("method", "") or "").strip().lower()
        if not str(row.get("reduction", "") or "").strip():
            row["reduction"] = method or "none"
        if not method:
            row["method"] = parse_reduction(row["reduction"])[0]
        for key in ("model", "dataset"):
            value = row.get(key)
            row[key] = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if column in NUMERIC:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if "time" in frame.columns:
        frame["_time"] = pd.to_datetime(frame["time"], errors="coerce")
    else:
        frame["_time"] = pd.NaT
    return frame


def _generation_time(frame: pd.DataFrame) -> pd.DataFrame:
    """Generation model time per image over every invocation (resumes, shards) of the same run folder."""
    if "images_written" not in frame.columns:
        return frame
    frame = frame.copy()
    written = pd.to_numeric(frame["images_written"], errors="coerce")
    if "model_time_s" not in frame.columns:
        return frame
    seconds = pd.to_numeric(frame["model_time_s"], errors="coerce")
    use = (frame["task"] == "generate") & (written > 0) & seconds.notna()
    if not use.any():
        return frame
    run = frame.get("run_dir", pd.Series("", index=frame.index)).fillna("").astype(str)
    keys = [frame[k].astype(str) for k in KEY] + [run]
    parts = pd.DataFrame({"s": seconds.where(use, 0.0), "n": written.where(use, 0.0)})
    totals = parts.groupby(keys, sort=False).transform("sum")
    per_image = (totals["s"] / totals["n"]).where(totals["n"] > 0)
    frame["time_per_image_s"] = per_image.where(frame["task"] == "generate")
    return frame


def _deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per (task, model, dataset, reduction): complete before incomplete, then latest."""
    frame = _generation_time(frame)
    ranked = frame.sort_values(["complete", "_time", "_order"], kind="stable", na_position="first")
    kept = ranked.drop_duplicates(list(KEY), keep="last")
    return kept.sort_values("_order").reset_index(drop=True)


def add_derived(frame: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """Add gflops, time_per_image_s and (for classify/generate) speedup over the same model+dataset's baseline."""
    df = frame.copy()
    for column in ("gflops", "flops_per_call", "flops_per_call_per_image", "model_time_s", "images",
                   "model_time_per_image_s", "time_per_image_s", "speedup"):
        if column not in df.columns:
            df[column] = float("nan")
        df[column] = pd.to_numeric(df[column], errors="coerce")
    flops = df["flops_per_call"].where(df["flops_per_call"].notna(), df["flops_per_call_per_image"])
    df["gflops"] = df["gflops"].where(df["gflops"].notna(), flops / 1e9)
    images = df["images"].where(df["images"] > 0)
    own_time = (df["model_time_s"] / images).where(images.notna(), df["model_time_s"])
    own_time = df["model_time_per_image_s"].where(df["model_time_per_image_s"].notna(), own_time)
    df["time_per_image_s"] = df["time_per_image_s"].where(df["time_per_image_s"].notna(), own_time)
    df["is_baseline"] = df["reduction"].map(lambda t: is_baseline(t, baseline))
    base = df[df["is_baseline"]].drop_duplicates(["task", "model", "dataset"], keep="last")
    base_time = base.set_index(["task", "model", "dataset"])["time_per_image_s"]
    own = df["task"] != "speed"
    keys = list(zip(df["task"], df["model"], df["dataset"]))
    ref = pd.Series([base_time.get(k, float("nan")) for k in keys], index=df.index, dtype=float)
    computed = ref / df["time_per_image_s"].where(df["time_per_image_s"] > 0)
    df["speedup"] = df["speedup"].where(~own, computed)
    return df


def collect_rows(paths: Iterable[str | Path], baseline: str = "none") -> pd.DataFrame:
    """Rows of every run under `paths`, one per (task, model, dataset, reduction), with derived columns."""
    paths = [Path(p) for p in paths]
    rows = [row for p in paths for row in _rows_from_path(p)]
    if not rows:
        searched = ", ".join(str(p) for p in paths) or "(no paths)"
        raise ReportError(f"no runs found in {searched} (looked for {', '.join(SUMMARY_FILES)} and run folders "
                          f"with {', '.join(RUN_FILES)}, recursively)")
    return add_derived(_deduplicate(_normalise(rows)), baseline)


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


def format_cell(value: float, base: float, metric: Metric, baseline_row: bool, incomplete: bool = False) -> str:
    """`71.2 (+3.4)`; empty for a missing value; no delta on the baseline row or without a baseline."""
    if value is None or pd.isna(value):
        return ""
    text = _fmt(value, metric.digits) + metric.suffix
    if not baseline_row and base is not None and not pd.isna(base):
        if metric.delta == "abs":
            delta = _fmt(value - base, metric.digits)
            text += f" ({'' if delta.startswith('-') else '+'}{delta})"
        elif metric.delta == "rel" and base != 0:
            text += f" ({100.0 * (value - base) / base:+.0f}%)"
    return text + ("*" if incomplete else "")


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
    long = pd.DataFrame({"group": df[group_dim].astype(str), "reduction": df["reduction"].astype(str),
                         "column": df[col_dim].astype(str), "value": values,
                         "incomplete": ~df["complete"].astype(bool) if "complete" in df.columns else False,
                         "is_baseline": df["reduction"].map(lambda t: is_baseline(t, baseline))})
    base = long[long["is_baseline"]].drop_duplicates(["group", "column"], keep="last")
    base = base.set_index(["group", "column"])["value"]
    long["baseline_value"] = [base.get((g, c), float("nan")) for g, c in zip(long["group"], long["column"])]
    return long.reset_index(drop=True)


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
            body.append([format_cell(e.value, e.baseline_value, m, bool(e.is_baseline), bool(e.incomplete))
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


def _atomic_write_text(path: Path, text: str) -> Path:
    """Write text through a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    return [_atomic_write_text(out_dir / f"{stem}.{fmt}", render[fmt]()) for fmt in formats]


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
                "(speed benchmark: its own interleaved measurement).", ""]
    written: list[Path] = []
    for stem, caption, table in iter_tables(df, metrics, columns, baseline):
        written += write_table(table, out, stem, caption, formats)
        sections += [f"## {stem}", "", to_markdown(table, caption)]
    if metrics and not written:
        numeric = sorted(c for c in df.columns if not c.startswith("_") and pd.api.types.is_numeric_dtype(df[c]))
        raise ReportError(f"none of the metrics {list(metrics)} has values in the runs; known metrics: "
                          f"{sorted(METRICS)}; numeric columns: {numeric}")
    keep = [c for c in df.columns if not c.startswith("_")]
    written.append(_atomic_write_text(out / "rows.csv", df[keep].to_csv(index=False, na_rep="", lineterminator="\n")))
    written.append(_atomic_write_text(out / "report.md", "\n".join(sections)))
    return written


# ----------------------------------------------------------------------------------------------
# Trade-off plots
# ----------------------------------------------------------------------------------------------

MARKERS = {"none": "*", "tome": "o", "upstream": "x", "bigain_tm": "s", "todo": "^", "bigain_td": "D", "sito": "v"}


def _setting_text(tag: str) -> str:
    """Short point label: the options of a tag (`r=0.7`), or the method name."""
    method, options = parse_reduction(tag)
    parts = [f"{OPTION_SHORT.get(k, k)}={_option_text(v)}" if k else v for k, v in options]
    return ", ".join(parts) if parts else METHOD_NAMES.get(method, method)


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
        tag = getattr(row, "reduction")
        method = parse_reduction(tag)[0]
        base = is_baseline(tag, baseline)
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        name = "Baseline" if base else METHOD_NAMES.get(method, method)
        ax.scatter(getattr(row, x), getattr(row, y), marker="*" if base else MARKERS.get(method, "P"),
                   s=220 if base else 60, color="gold" if base else colors[rank % len(colors)],
                   edgecolors="black", linewidths=1.2 if base else 0.5, zorder=3 if base else 2,
                   label=None if name in seen else name)
        seen.add(name)
        ax.annotate("baseline" if base else _setting_text(tag), (getattr(row, x), getattr(row, y)),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    base_rows = points[points["reduction"].map(lambda t: is_baseline(t, baseline))]
    if not base_rows.empty:
        ax.axhline(float(base_rows[y].iloc[0]), color="0.5", lw=0.8, ls="--", zorder=1)
    ax.margins(0.15)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _save_figure(fig: Any, path: Path) -> Path:
    """Save a PNG atomically and close the figure."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


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
    return _save_figure(fig, path)


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
    cls, gen = frame[frame["task"] == "classify"], frame[frame["task"] == "generate"]
    for sub, y, ylabel, name in ((cls, "accuracy_pct", "Top-1 accuracy (%)", "accuracy_vs_speedup.png"),
                                 (gen, "fid", "FID (lower is better)", "fid_vs_speedup.png")):
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
# CLI
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """CLI options; defaults come from DEFAULTS."""
    p = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="summary CSVs, run folders, or folders searched recursively")
    p.add_argument("--out", required=True, help="output folder for tables, plots, rows.csv and report.md")
    p.add_argument("--task", nargs="+", choices=TASKS, default=None, help="tasks to tabulate (default: all found)")
    p.add_argument("--metric", nargs="+", default=None,
                   help=f"metrics ({', '.join(METRICS)}, or any numeric column); default: each task's usual ones")
    p.add_argument("--columns", choices=("dataset", "model"), default=DEFAULTS["columns"],
                   help="table columns (the other dimension gets one table each)")
    p.add_argument("--formats", nargs="+", choices=("md", "csv", "tex"), default=list(DEFAULTS["formats"]))
    p.add_argument("--baseline", default=DEFAULTS["baseline"], help="reduction tag of the baseline row")
    p.add_argument("--no_plots", action="store_true", help="skip the trade-off PNGs")
    from bigain.config import add_config_arg

    add_config_arg(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    """CLI: collect rows, write tables (and plots), print what was written."""
    from bigain.config import parse_args_with_config

    args = parse_args_with_config(build_parser(), argv)
    try:
        df = collect_rows(args.runs, baseline=args.baseline)
        written = write_tables(df, args.out, args.metric, args.columns, args.formats, args.task, args.baseline)
        if args.task:
            df = df[df["task"].isin(args.task)]
        if not args.no_plots:
            written += tradeoff_plots(df, args.out, args.baseline)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    counts = df.groupby("task").size().to_dict()
    print(f"{len(df)} runs ({', '.join(f'{k}: {v}' for k, v in counts.items())}) -> {args.out}", file=sys.stderr)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
