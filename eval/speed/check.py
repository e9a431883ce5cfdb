"""Check published speed tables against the removed-layers bound: `python -m eval.speed.check DIR [DIR ...]`.

Reads each DIR/speed.csv (and DIR/meta.json when there) written by `python -m eval.speed`, old or new, and prints
one line per reducing row: speed-up (with its interval when the table has one), FLOP-ideal, the removed-layers
bound 1 / (1 - s) and the verdict of `eval.speed.reliability.noise_check`. Tables written before the check have
no interval and no per-round data, so their point estimate is held against the bound and drift cannot be judged;
s is then the `attn_share` column (the attn1 layers only), so rows that also reduce the MLP or cross-attention
are not judged. Exit status 1 when any row is marked, 0 otherwise; 2 on bad input.

    python -m eval.speed.check docs/benchmarks/cpu-*
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from bigain.cli import fraction
from eval.speed.reliability import MAX_DRIFT, noise_check, removed_layers_bound

NOT_ATTN_ONLY = ("merge_mlp", "merge_crossattn")  # options that reduce more than attn1: attn_share is no bound


def _num(value: object) -> float:
    """A float from a CSV cell (NaN when empty or not a number)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def row_share(row: dict) -> tuple[float, str]:
    """(s, where it came from): `reduced_share` when the table has it, else `attn_share` for attention-only
    settings; NaN with the reason otherwise."""
    share = _num(row.get("reduced_share"))
    if not math.isnan(share):
        return share, "reduced_share"
    try:
        options = json.loads(row.get("options") or "{}")
    except (TypeError, ValueError):
        options = {}
    if any(options.get(k) for k in NOT_ATTN_ONLY):
        return float("nan"), "reduces more than attn1; the table has only attn_share"
    share = _num(row.get("attn_share"))
    return share, "attn_share" if not math.isnan(share) else "no time share measured (the run used --no_breakdown)"


def check_rows(rows: Sequence[dict], max_drift: float = MAX_DRIFT) -> list[dict]:
    """Each reducing row with its bound and verdict: keys setting, model, resolution, batch, speedup, speedup_lo,
    speedup_hi, ideal, bound, share_from, verdict ('' = within the bound; 'not judged: ...' without a share)."""
    out = []
    for row in rows:
        if row.get("engine") == "baseline" or row.get("method") == "none":
            continue
        share, source = row_share(row)
        bound = removed_layers_bound(share)
        speedup, lo = _num(row.get("speedup")), _num(row.get("speedup_lo"))
        if math.isnan(bound):
            verdict = f"not judged: {source}"
        else:
            verdict = noise_check(speedup, lo, bound, _num(row.get("baseline_drift")), max_drift)
        out.append({"model": row.get("model"), "resolution": row.get("resolution"), "batch": row.get("batch"),
                    "setting": row.get("setting"), "speedup": speedup, "speedup_lo": lo,
                    "speedup_hi": _num(row.get("speedup_hi")), "ideal": _num(row.get("ideal_speedup")),
                    "share": share, "bound": bound, "share_from": source, "verdict": verdict})
    return out


def is_marked(result: dict) -> bool:
    """A row the check marks unreliable (not one it could not judge)."""
    return bool(result["verdict"]) and not result["verdict"].startswith("not judged")


def format_results(folder: Path, results: Sequence[dict], meta: dict) -> str:
    """A markdown section: the folder, its command, and one table line per checked row."""
    def x(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{v:.2f}x"

    marked = sum(is_marked(r) for r in results)
    load = meta.get("machine_load") or {}
    others = load.get("others_cpu_share")
    machine = ("" if others is None else f"; other processes used {100 * others:.1f}% of the CPUs during the run"
               + ("" if load.get("alone") else " (not alone: rerun on an idle machine)"))
    lines = [f"## {folder}", "", f"command: `{meta.get('command', 'unknown')}`; {marked} of {len(results)} rows "
             f"marked{machine}", "",
             "| model | px | batch | setting | speed-up | interval | FLOP-ideal | s | bound | check |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        interval = "none" if math.isnan(r["speedup_lo"]) else f"[{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}]"
        share = "n/a" if math.isnan(r["share"]) else f"{100 * r['share']:.0f}%"
        check = "UNRELIABLE: " + r["verdict"] if is_marked(r) else (r["verdict"] or "ok")
        lines.append(f"| {r['model']} | {r['resolution']} | {r['batch']} | {r['setting']} | {x(r['speedup'])} | "
                     f"{interval} | {x(r['ideal'])} | {share} | {x(r['bound'])} | {check} |")
    return "\n".join(lines)


def check_folder(folder: Path, max_drift: float = MAX_DRIFT) -> tuple[list[dict], dict]:
    """(checked rows, meta.json or {}) of one speed output folder."""
    frame = pd.read_csv(folder / "speed.csv", dtype=str, keep_default_na=False)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return check_rows(frame.to_dict("records"), max_drift), meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: check every folder, print the tables and a summary; 1 when any row is marked."""
    p = argparse.ArgumentParser(prog="python -m eval.speed.check", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="folders holding speed.csv (e.g. docs/benchmarks/cpu-small)")
    p.add_argument("--max_drift", type=fraction, default=MAX_DRIFT, help="baseline drift limit (tables with per-round "
                   "drift only)")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.folders if not (f / "speed.csv").is_file()]
    if missing:
        p.error(f"no speed.csv in {', '.join(missing)}: give folders written by python -m eval.speed")
    total = marked = 0
    for folder in args.folders:
        results, meta = check_folder(folder, args.max_drift)
        total, marked = total + len(results), marked + sum(is_marked(r) for r in results)
        print(format_results(folder, results, meta) + "\n")
    print(f"{marked} of {total} rows above the removed-layers bound or drifting (docs/speed_method.md)")
    return 1 if marked else 0


if __name__ == "__main__":
    sys.exit(main())
