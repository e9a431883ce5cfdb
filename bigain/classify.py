"""Zero-shot classification with a diffusion model (Li et al., ICCV 2023), adaptive protocol of docs/protocol.md §1.

For an image x0 and every candidate class c the classifier estimates E_t,eps ||eps - eps_theta(x_t, t, c)||
on a fixed timestep grid with noise shared by all classes (a paired comparison), eliminating
classes in stages (--n_samples / --to_keep), and predicts the class with the lowest mean error.

    python -m bigain.classify --dataset pets --version 2-0 --method bigain_tm --ratio 0.7
    python -m bigain.classify --dataset fmnist --model_path bigain/assets/testbed/dit-fmnist
    accelerate launch --multi_gpu --num_processes 4 -m bigain.classify ...   # multi-GPU (or torchrun)
    python -m bigain.classify ... --n_workers 8 --worker_idx 3   # one of 8 independent jobs
    python -m bigain.classify ... --merge_only        # accuracy over all shards' records

Results: <output_dir>/<dataset>_<split>/<model>/<reducer>/<settings>/records/<index>.npz (one per
image), config.json, log*.txt; one row per invocation in <output_dir>/summary.csv (with --run_dir and no
--output_dir: <run_dir>/summary.csv). SIGTERM stops a run resumably (exit 143); --batch_size auto finds the largest
batch that fits (docs/failures.md).
In Python: ``run_classification(ClassifyRun(...))`` (bigain.runs) does what this command does; in memory
(e.g. the testbed benchmark): ``ctx = make_context(model, load_prompts("fmnist"), StageSchedule())`` then
``classify_many(ctx, images, labels)`` -> records (bigain.diffusion; the core is ``classify_image``).
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from bigain.cli import (
    add_config_arg,
    add_data_args,
    add_max_images_arg,
    add_model_args,
    add_output_args,
    add_shard_args,
    batch_size,
    nonneg_int,
    parse_args_with_config,
    positive_int,
    run_cli,
)
from bigain.data import DATASETS, INTERPOLATIONS
from bigain.diffusion import LOSSES, StageSchedule
from bigain.reduction import add_reduction_args
from bigain.runs import ClassifyRun, run_classification

__all__ = ["build_parser", "validate_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `python -m bigain.classify`."""
    p = argparse.ArgumentParser(prog="python -m bigain.classify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="pets", help=f"one of: {', '.join(DATASETS)} (default: pets)")
    add_data_args(g)
    g.add_argument("--img_size", type=positive_int, default=None,
                   help="resize short side + center-crop to this (default: the model's native size, SD 2: 512)")
    g.add_argument("--interpolation", default="bicubic", choices=INTERPOLATIONS, help="resize filter")
    add_max_images_arg(g, "evaluate only this many images, spread evenly over the dataset, or the first N for "
                          "the class-interleaved fmnist subset (default: all)")
    g.add_argument("--loader_workers", type=nonneg_int, default=0, help="DataLoader worker processes for decoding")
    add_model_args(p)

    g = p.add_argument_group("adaptive protocol (docs/protocol.md §1)")
    g.add_argument("--n_samples", type=positive_int, nargs="+", default=[5, 20],
                   help="timesteps scored by the end of each stage, increasing (default: 5 20)")
    g.add_argument("--allow_stages_without_new_timesteps", action="store_true",
                   help="accept --n_samples whose later stages add no timestep (they only eliminate classes)")
    g.add_argument("--to_keep", type=positive_int, nargs="+", default=[5, 1],
                   help="classes kept after each stage; the last must be 1 (default: 5 1)")
    g.add_argument("--n_trials", type=positive_int, default=1, help="noises per timestep (default: 1)")
    g.add_argument("--loss", default="l2", choices=LOSSES, help="error between eps and prediction (default: l2)")
    g.add_argument("--batch_size", type=batch_size, default=32,
                   help="(class, timestep) samples per forward, or auto: the largest that fits (default: 32)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="noise seed; each image uses (seed, image index)")
    add_reduction_args(p)

    g = p.add_argument_group("outputs, resumption, sharding")
    add_output_args(g, "results/classification")
    g.add_argument("--force_recalc", action="store_true", help="recompute images that already have records")
    add_shard_args(g, "the dataset")
    g.add_argument("--merge_only", action="store_true",
                   help="only merge the run's existing records (all shards) into accuracy and a summary row")
    g.add_argument("--no_flops", action="store_true", help="skip the FLOPs-per-call measurement")
    g.add_argument("--dry_run", "--dry-run", action="store_true",
                   help="validate everything, print the plan and exit without loading the model")
    add_config_arg(p)
    return p


def validate_args(args: argparse.Namespace) -> tuple[Any, StageSchedule, str]:
    """Check every input before model work; returns (class table, schedule, split). Raises ValueError etc."""
    return ClassifyRun.from_args(args).validate()


def main(argv: Sequence[str] | None = None) -> dict:
    """Run (or merge) a classification; returns the summary row."""
    args = parse_args_with_config(build_parser(), argv)
    return run_classification(ClassifyRun.from_args(args))


if __name__ == "__main__":
    run_cli(main)
