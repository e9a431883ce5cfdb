"""Speed, FLOPs and memory of token reduction against the unpatched SDPA baseline (docs/protocol.md §3).

Every method setting is timed against the baseline in the same process, interleaved round by round, until the
speed-ups' 95% intervals are narrow or a time cap (docs/speed_method.md); the columns are described in
`eval.speed.tables`. Weights are random (`eval.speed.model_zoo`).

    python -m eval.speed --preset cpu-small --out results/speed/cpu-small
    python -m eval.speed --preset gpu --out results/speed/gpu            # fp16, CUDA
    python -m eval.speed --preset gpu --models sd2 --batches 2 --cuda_graphs --out results/speed/gpu-graphs
    python -m eval.speed --models sd2@w0.25 --methods tome todo --ratios 0.5 --resolutions 512 --batches 2
    python -m eval.speed --models flux-dev@L4 --resolutions 1024 --batches 1 --attention_backend _flash_3 --compile
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from bigain.cli import (
    add_config_arg,
    check_output_dir,
    fraction,
    nonneg_float,
    nonneg_int,
    parse_args_with_config,
    positive_int,
    run_cli,
)
from eval.speed.allocator import ALLOCATORS, set_allocator
from eval.speed.cases import (
    METHODS,
    PRESET_FLAGS,
    PRESETS,
    Case,
    attention_backend_names,
    grid,
    make_settings,
    parse_model,
    preset_cases,
)
from eval.speed.reliability import MAX_DRIFT, TARGET_HALFWIDTH, machine_load, machine_snapshot
from eval.speed.tables import RANDOM_WEIGHTS_NOTE, environment, markdown_table, unreliable_rows, write_outputs
from eval.speed.timing import BREAKDOWN_CALLS, run_benchmark

DEFAULTS: dict[str, Any] = {
    "preset": None, "models": None, "methods": list(METHODS), "ratios": [0.3, 0.5, 0.7], "dfs": [2, 4],
    "max_downsample": [1], "blocks": ["published"], "resolutions": None, "batches": None, "dtype": "float32",
    "device": "cpu", "repeats": 5, "warmup": 1, "out": "results/speed", "upstream": True, "breakdown": True,
    "flops_batch1": True, "seed": 0, "threads": None, "cuda_graphs": False, "attention_backend": None,
    "compile": False, "compile_backend": "inductor", "allocator": "steady",
    "target_halfwidth": TARGET_HALFWIDTH, "max_seconds": 60.0, "max_rounds": 30, "max_drift": MAX_DRIFT,
}


def cases_from_args(args: argparse.Namespace) -> list[Case]:
    """The cases a command line asks for: a preset (filtered, its setting grid replaced by explicit setting flags)
    or the grid of --models x --resolutions x --batches."""
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


def with_run_options(cases: list[Case], args: argparse.Namespace) -> list[Case]:
    """--attention_backend / --compile applied to every case (duplicates that this makes are dropped)."""
    if args.attention_backend is not None:
        cases = [dataclasses.replace(c, attention_backend=args.attention_backend) for c in cases]
    if args.compile:
        cases = [dataclasses.replace(c, compile=True) for c in cases]
    return list(dict.fromkeys(cases))


def build_parser() -> argparse.ArgumentParser:
    """CLI options (underscore spellings; the dashed ones of earlier versions stay as aliases); defaults from
    DEFAULTS."""
    p = argparse.ArgumentParser(prog="python -m eval.speed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULTS["preset"],
                   help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--models", nargs="+", default=DEFAULTS["models"],
                   help="model_zoo names, optionally shrunk: sd2@w0.25 (U-Net widths), dit-xl-2-256@L4 (blocks)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=DEFAULTS["methods"])
    p.add_argument("--ratios", nargs="+", type=fraction, default=DEFAULTS["ratios"])
    p.add_argument("--dfs", nargs="+", type=positive_int, default=DEFAULTS["dfs"])
    p.add_argument("--max_downsample", "--max-downsample", nargs="+", type=positive_int,
                   default=DEFAULTS["max_downsample"])
    p.add_argument("--blocks", nargs="+", choices=["published", "all"], default=DEFAULTS["blocks"],
                   help="DiT/PixArt block patterns")
    p.add_argument("--resolutions", nargs="+", type=positive_int, default=DEFAULTS["resolutions"])
    p.add_argument("--batches", nargs="+", type=positive_int, default=DEFAULTS["batches"],
                   help="default 2 (the CFG pair)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=DEFAULTS["dtype"])
    p.add_argument("--device", default=DEFAULTS["device"])
    p.add_argument("--repeats", type=positive_int, default=DEFAULTS["repeats"],
                   help="timed rounds at least (speed-up: median of per-round ratios)")
    p.add_argument("--target_halfwidth", type=nonneg_float, default=DEFAULTS["target_halfwidth"],
                   help="time more rounds until every speed-up's 95%% interval has this relative half-width "
                        "(0: exactly --repeats rounds)")
    p.add_argument("--max_seconds", type=nonneg_float, default=DEFAULTS["max_seconds"],
                   help="time cap on one case's rounds beyond --repeats (seconds)")
    p.add_argument("--max_rounds", type=positive_int, default=DEFAULTS["max_rounds"], help="round cap per case")
    p.add_argument("--max_drift", type=fraction, default=DEFAULTS["max_drift"],
                   help="baseline drift (last- vs first-third median round time) that marks a case unreliable")
    p.add_argument("--warmup", type=nonneg_int, default=DEFAULTS["warmup"], help="warm-up calls per setting")
    p.add_argument("--threads", type=positive_int, default=DEFAULTS["threads"],
                   help="torch CPU threads (default: torch's choice); 1 on a shared machine, where waiting "
                        "for a busy second core stalls every parallel op")
    p.add_argument("--allocator", choices=ALLOCATORS, default=DEFAULTS["allocator"],
                   help="CPU: steady keeps freed memory in the process (glibc mallopt), so calls do not page-fault "
                        "their activations in again (docs/speed_method.md); default: glibc's own behaviour")
    p.add_argument("--seed", type=nonneg_int, default=DEFAULTS["seed"])
    p.add_argument("--out", default=DEFAULTS["out"])
    p.add_argument("--dry_run", "--dry-run", action="store_true",
                   help="list the cases and the number of forward calls, run nothing")
    p.add_argument("--no_upstream", "--no-upstream", dest="upstream", action="store_false", help="skip upstream tomesd")
    p.add_argument("--no_breakdown", "--no-breakdown", dest="breakdown", action="store_false",
                   help="skip the instrumented calls (overhead breakdown)")
    p.add_argument("--cuda_graphs", "--cuda-graphs", action="store_true",
                   help="time CUDA-graph replays of each setting's forward (fixed shapes; needs --device cuda)")
    p.add_argument("--attention_backend", default=DEFAULTS["attention_backend"],
                   choices=attention_backend_names(), metavar="NAME",
                   help="set this diffusers attention backend on every model (model.set_attention_backend); a "
                        "backend that cannot run here skips its cases. Stock U-Net/DiT/PixArt/SD3 processors call "
                        "SDPA directly, so there only patched processors that dispatch use it")
    p.add_argument("--compile", action="store_true", help="time every case under torch.compile (per setting)")
    p.add_argument("--compile_backend", default=DEFAULTS["compile_backend"],
                   choices=["inductor", "aot_eager", "eager", "cudagraphs"], help="torch.compile backend")
    p.add_argument("--flops_full_batch", "--flops-full-batch", dest="flops_batch1", action="store_false",
                   help="count FLOPs at the full batch (default: batch 1, scaled; FLOPs are linear in batch)")
    add_config_arg(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    """CLI: time the cases (or, with --dry_run, list them), write the outputs and print the headline table."""
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    if args.cuda_graphs and not str(args.device).startswith("cuda"):
        parser.error(f"--cuda_graphs needs a CUDA device (--device cuda), got --device {args.device}")
    for key, value in PRESET_FLAGS.get(args.preset, {}).items():
        if getattr(args, key) == DEFAULTS[key]:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = with_run_options(cases_from_args(args), args)
    if not cases:
        raise ValueError("no case left: the --models / --resolutions / --batches filters exclude every preset case")
    if not args.dry_run:
        check_output_dir(args.out, "--out")
    if args.dry_run:
        per_setting = args.warmup + args.repeats + 2 + BREAKDOWN_CALLS * int(args.breakdown)  # + 2 FLOP counts
        runs = sum(len(c.settings) + 1 for c in cases)
        for c in cases:
            extra = "".join([f", backend {c.attention_backend}" if c.attention_backend else "",
                             ", compiled" if c.compile else ""])
            print(f"{c.model} {c.resolution}px batch {c.batch}{extra}: baseline + {len(c.settings)} settings")
        print(f"{len(cases)} cases, {runs} setting runs, {runs * per_setting} forward calls "
              f"({per_setting} per setting run) on {args.device} in {args.dtype}, at least; more rounds (up to "
              f"{args.max_rounds}, {args.max_seconds:.0f} s per case) until the speed-up intervals' half-width is "
              f"<= {args.target_halfwidth:.0%}")
        return []
    device = torch.device(args.device)
    allocator = set_allocator(args.allocator, device.type)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    before = machine_snapshot()

    def run_meta(done: int, load: Optional[dict] = None) -> dict[str, Any]:
        return {"command": "python -m eval.speed " + " ".join(sys.argv[1:] if argv is None else argv),
                "weights": RANDOM_WEIGHTS_NOTE, "environment": environment(device), "allocator": allocator,
                "seconds": time.perf_counter() - t0, "complete": done == len(cases), "cases_done": done,
                "rounds": {"min": args.repeats, "max": args.max_rounds, "target_halfwidth": args.target_halfwidth,
                           "max_seconds_per_case": args.max_seconds},
                **({"noise_check": {"max_drift": args.max_drift, "unreliable": unreliable_rows(rows_so_far)},
                    "machine_load": load} if load is not None else {}),
                "cases": [{"model": c.model, "resolution": c.resolution, "batch": c.batch,
                           "attention_backend": c.attention_backend, "compile": c.compile,
                           "settings": [s.label for s in c.settings]} for c in cases]}

    progress = {"cases": 0}
    rows_so_far: list[dict] = []

    def write_partial(rows: list[dict], block_rows: list[dict]) -> None:
        """After each case: every output so far, atomically (a run cut short keeps what finished)."""
        progress["cases"] += 1
        write_outputs(rows, block_rows, Path(args.out), run_meta(progress["cases"]), plot_png=False)

    rows, block_rows = run_benchmark(cases, dtype=args.dtype, device=device, repeats=args.repeats,
                                     warmup=args.warmup, seed=args.seed, upstream=args.upstream,
                                     breakdown=args.breakdown, flops_batch1=args.flops_batch1, log=log,
                                     cuda_graphs=args.cuda_graphs, compile_backend=args.compile_backend,
                                     target_halfwidth=args.target_halfwidth or None, max_seconds=args.max_seconds,
                                     max_rounds=args.max_rounds, max_drift=args.max_drift, on_case=write_partial)
    rows_so_far[:] = rows
    load = machine_load(before, machine_snapshot())
    marked = unreliable_rows(rows)
    meta = run_meta(len(cases), load)
    write_outputs(rows, block_rows, Path(args.out), meta)
    print(markdown_table(rows, load))
    if marked:
        log(f"warning: {len(marked)} row(s) marked UNRELIABLE by the noise check (above the removed-layers bound or "
            f"baseline drift; see the 'check' column and docs/speed_method.md): rerun on an idle machine")
    log(f"wrote {args.out}/speed.csv, speed.md, blocks.csv, blocks.md, speed.png, meta.json "
        f"({meta['seconds']:.0f} s)")
    return rows


if __name__ == "__main__":
    run_cli(main)
