"""Paper-style tables and speed/quality trade-off plots from any set of runs.

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
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from bigain.cli import add_config_arg, check_output_dir, parse_args_with_config, run_cli
from bigain.storage import atomic_write_text
from eval.report.outcomes import add_intervals, paired_markdown
from eval.report.plots import per_class_plots, tradeoff_plots
from eval.report.rows import collect_rows
from eval.report.tables import write_tables
from eval.report.tags import METRICS, TASKS, ReportError

DEFAULTS: dict[str, Any] = {"columns": "dataset", "formats": ("md", "csv", "tex"), "baseline": "none"}


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
    p.add_argument("--no_stats", action="store_true",
                   help="skip the 95%% intervals and paired tests read from the runs' per-image records and images")
    p.add_argument("--domain_reference", default="fmnist-test",
                   help="reference set of the domain FID intervals (a name eval.metrics knows; default fmnist-test)")
    add_config_arg(p)
    return p


def write_paired(df: Any, out: Path) -> list[Path]:
    """paired.md (BiGain vs its counterpart at the same compression), also appended to report.md; [] if no pairs."""
    text = paired_markdown(df)
    if not text:
        return []
    section = ("## Paired comparisons\n\nSame test images / same generated (seed, class) items; paired bootstrap "
               "95% intervals, exact McNemar p-values for rates.\n\n" + text)
    report = out / "report.md"
    if report.is_file():
        atomic_write_text(report, report.read_text() + "\n" + section)
    return [atomic_write_text(out / "paired.md", section)]


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    """CLI: collect rows, write tables (and plots), print what was written."""
    args = parse_args_with_config(build_parser(), argv)
    check_output_dir(args.out, "--out")
    try:
        df = collect_rows(args.runs, baseline=args.baseline)
        if not args.no_stats:
            df = add_intervals(df, args.baseline, args.domain_reference)
        written = write_tables(df, args.out, args.metric, args.columns, args.formats, args.task, args.baseline)
        if args.task:
            df = df[df["task"].isin(args.task)]
        if not args.no_stats:
            written += write_paired(df, Path(args.out))
        if not args.no_plots:
            written += tradeoff_plots(df, args.out, args.baseline)
            written += per_class_plots(df, args.out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    counts = df.groupby("task").size().to_dict()
    print(f"{len(df)} runs ({', '.join(f'{k}: {v}' for k, v in counts.items())}) -> {args.out}", file=sys.stderr)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    run_cli(main)
