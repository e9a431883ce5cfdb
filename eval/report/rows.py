"""Reading runs for the report: summary CSVs, run folders, speed CSVs; normalising, de-duplicating, derived columns."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from bigain.storage import read_csv_rows
from eval.report.tags import COLUMN_ALIASES, GENERATION_METRICS, KEY, TASKS, ReportError, is_baseline, parse_reduction

NUMERIC = ("accuracy", "images", "expected_images", "calls_per_image", "model_time_s", "images_per_s",
           "images_written", "items", "model_time_per_image_s", "flops_per_call_per_image", "flops_per_image",
           "wall_time_s", "flops_per_call", "gflops", "speedup", "ideal_speedup", "latency_ms", "baseline_ms",
           "resolution", "batch", "kid_std", "inception_score_std", *GENERATION_METRICS)
RUN_FILES = ("result*.json", "metrics.json")
SUMMARY_FILES = ("summary.csv", "speed.csv")


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
    try:  # rows with the wrong field count (cut by a killed writer) are named and skipped
        header, records = read_csv_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        print(f"warning: skipping {path}: {err}", file=sys.stderr)
        return []
    frame = pd.DataFrame(records, columns=header, dtype=str)
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
    return ([row for d in _run_dirs_under(path) for row in _run_folder_rows(d)]
            + [row for p in summaries for row in _csv_rows(p)])


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
