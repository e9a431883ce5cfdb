"""Compatibility matrix of the patch with the diffusers toolbox, measured on tiny models (docs/compat/README.md).

    python -m eval.compat                                   # bigain_tm and bigain_td, every backbone and feature
    python -m eval.compat --methods all --output_dir docs/compat
    python -m eval.compat --backbones flux sd3 --features compile_fullgraph 'backend:*' --strict
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from typing import Optional, Sequence

import torch
from tqdm import tqdm

import tomesd
from bigain.cli import check_output_dir, positive_int, run_cli
from eval.compat.features import RunOptions, all_features
from eval.compat.matrix import run_matrix, select_features, summary, write_matrix
from eval.compat.subjects import BACKBONES

DEFAULT_METHODS = ["bigain_tm", "bigain_td"]


def method_names() -> list[str]:
    """Every reducing method of the engine (`none` reduces nothing, so it has no cell)."""
    return [m for m in tomesd.list_methods() if m != "none"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.compat", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", choices=[*BACKBONES, "all"], default=["all"])
    p.add_argument("--features", nargs="+", default=None, metavar="NAME",
                   help="feature names or shell patterns ('backend:*', 'cache:*'); default: all")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, metavar="METHOD",
                   help=f"methods to patch with, or 'all' ({', '.join(method_names())}); default: "
                        f"{' '.join(DEFAULT_METHODS)}")
    p.add_argument("--output_dir", default="docs/compat", help="where compat.md and compat.csv go")
    p.add_argument("--compile_backend", default="eager", choices=["eager", "aot_eager", "inductor"],
                   help="dynamo backend of the fullgraph check (eager: graph capture only, fastest)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    p.add_argument("--strict", action="store_true", help="exit 1 when any cell is failing")
    p.add_argument("--list", action="store_true", help="print the feature names and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, check every input before any model is built, run the cells, write, print the tables and a summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    features = all_features()
    if args.list:
        print("\n".join(features))
        return 0
    methods = method_names() if args.methods == ["all"] else args.methods
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        parser.error(f"--methods {' '.join(unknown)}: unknown; choose from {', '.join(method_names())} or all")
    backbones = list(BACKBONES) if "all" in args.backbones else list(dict.fromkeys(args.backbones))
    chosen = select_features(args.features, features)
    check_output_dir(args.output_dir, "--output_dir")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    results = run_matrix(backbones, methods, chosen, RunOptions(compile_backend=args.compile_backend),
                         progress=lambda cells: tqdm(cells, desc="compat cells", unit="cell", file=sys.stderr,
                                                     mininterval=1.0))
    command = "python -m eval.compat " + " ".join(sys.argv[1:] if argv is None else argv)
    csv_path, md_path = write_matrix(results, args.output_dir, command.strip(), time.perf_counter() - t0)
    print(md_path.read_text())
    line = summary(results)
    print(line)
    print(f"wrote {md_path} and {csv_path}", file=sys.stderr)
    return 1 if args.strict and any(r.cell.status == "failing" for r in results) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
