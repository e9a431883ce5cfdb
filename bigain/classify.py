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
image), config.json, log*.txt; one row per invocation in <output_dir>/summary.csv.
In memory (e.g. the testbed benchmark): ``ctx = make_context(model, load_prompts("fmnist"), Schedule())``
then ``classify_many(ctx, images, labels)`` -> records; the core is :func:`classify_image`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bigain.cli import check_output_dir, check_output_file, nonneg_int, positive_int, run_cli
from bigain.classifier import LOSSES, ClassifyResult, RunContext, Schedule, classify_dataset_image, \
    classify_image, classify_many, image_seed, make_context, make_noise, per_sample_error
from bigain.datasets import DATASETS, INTERPOLATIONS, build_dataset, check_dataset_args, load_prompts, \
    subset_indices
from bigain.reduction import run_reduction_tag
from bigain.identity import model_identity
from bigain.records import append_csv_row, atomic_write_json, clean_stale_tmp, config_fingerprint, load_record, \
    merge_records, record_path, save_record, try_lock

__all__ = ["LOSSES", "Schedule", "ClassifyResult", "RunContext", "classify_image", "classify_dataset_image",
           "classify_many", "make_context", "image_seed", "make_noise", "per_sample_error", "build_parser", "validate_args", "main"]

LOG = logging.getLogger("bigain.classify")


# ----------------------------------------------------------------------------- CLI


def _add_reduction_args(parser: argparse.ArgumentParser) -> None:
    """The shared reducer flags (bigain.reduction)."""
    from bigain.reduction import add_reduction_args

    add_reduction_args(parser)


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `python -m bigain.classify`."""
    from bigain.models import MODEL_VERSIONS

    p = argparse.ArgumentParser(prog="python -m bigain.classify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="pets", help=f"one of: {', '.join(DATASETS)} (default: pets)")
    g.add_argument("--dataset_root", default=None, help="root of the datasets (default: $DATASET_ROOT)")
    g.add_argument("--split", default=None, help="evaluated split (default: the dataset's test/val split)")
    g.add_argument("--data_dir", default=None, help="--dataset folder: folder with one sub-folder per class")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="--dataset folder: leave out files that do not decode as images (default: error naming them)")
    g.add_argument("--prompts_csv", default=None,
                   help="prompt CSV (prompt,classname,classidx) replacing the shipped one")
    g.add_argument("--img_size", type=positive_int, default=None,
                   help="resize short side + center-crop to this (default: the model's native size, SD 2: 512)")
    g.add_argument("--interpolation", default="bicubic", choices=INTERPOLATIONS, help="resize filter")
    g.add_argument("--max_images", type=positive_int, default=None,
                   help="evaluate only this many images, spread evenly over the dataset, or the first N for "
                        "the class-interleaved fmnist subset (default: all)")
    g.add_argument("--loader_workers", type=nonneg_int, default=0, help="DataLoader worker processes for decoding")

    g = p.add_argument_group("model")
    g.add_argument("--version", default="2-0",
                   help=f"model: {', '.join(MODEL_VERSIONS)} or a hub id (default: 2-0 = SD 2 base)")
    g.add_argument("--model_path", default=os.environ.get("MODEL_PATH") or None,
                   help="local diffusers/testbed folder; overrides --version (default: $MODEL_PATH)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                   help="weights/activations dtype (auto: fp16 on GPU, fp32 on CPU)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (auto: GPU when present)")
    g.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on Ampere+ GPUs (recorded)")
    g.add_argument("--cpu_threads", type=positive_int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice; 1 on busy shared machines)")

    g = p.add_argument_group("adaptive protocol (docs/protocol.md §1)")
    g.add_argument("--n_samples", type=positive_int, nargs="+", default=[5, 20],
                   help="timesteps scored by the end of each stage, increasing (default: 5 20)")
    g.add_argument("--allow_stages_without_new_timesteps", action="store_true",
                   help="accept --n_samples whose later stages add no timestep (they only eliminate classes)")
    g.add_argument("--to_keep", type=positive_int, nargs="+", default=[5, 1],
                   help="classes kept after each stage; the last must be 1 (default: 5 1)")
    g.add_argument("--n_trials", type=positive_int, default=1, help="noises per timestep (default: 1)")
    g.add_argument("--loss", default="l2", choices=LOSSES, help="error between eps and prediction (default: l2)")
    g.add_argument("--batch_size", type=positive_int, default=32, help="(class, timestep) samples per forward (default: 32)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="noise seed; each image uses (seed, image index)")
    _add_reduction_args(p)

    g = p.add_argument_group("outputs, resumption, sharding")
    g.add_argument("--output_dir", default="results/classification", help="base folder of runs")
    g.add_argument("--run_dir", default=None, help="explicit run folder (default: derived from every setting)")
    g.add_argument("--summary_csv", default=None, help="summary CSV (default: <output_dir>/summary.csv)")
    g.add_argument("--force_recalc", action="store_true", help="recompute images that already have records")
    g.add_argument("--n_workers", type=positive_int, default=1, help="number of independent jobs sharing the dataset")
    g.add_argument("--worker_idx", type=nonneg_int, default=0, help="this job's index in [0, n_workers)")
    g.add_argument("--merge_only", action="store_true",
                   help="only merge the run's existing records (all shards) into accuracy and a summary row")
    g.add_argument("--no_flops", action="store_true", help="skip the FLOPs-per-call measurement")
    g.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="validate everything, print the plan and exit without loading the model")
    from bigain.config import add_config_arg

    add_config_arg(p)
    return p


def validate_args(args: argparse.Namespace) -> tuple[Any, Schedule, str]:
    """Check every input before model work; returns (class table, schedule, split). Raises ValueError etc."""
    from bigain.reduction import validate_reduction


    split = check_dataset_args(args.dataset, args.dataset_root, args.data_dir, args.split)
    if args.prompts_csv:
        table = load_prompts(args.prompts_csv)
    elif args.dataset == "folder":
        table = load_prompts(Path(args.data_dir) / "prompts.csv")
    else:
        table = load_prompts(args.dataset)
    schedule = Schedule(tuple(args.n_samples), tuple(args.to_keep), 1000, args.n_trials)
    schedule.validate(len(table))
    empty = [s for s, new in enumerate(schedule.stage_slots()) if s > 0 and not new]
    if empty and not args.allow_stages_without_new_timesteps:
        raise ValueError(f"--n_samples {list(args.n_samples)}: stage(s) {empty} add no new timestep (each stage must "
                         "score more timesteps than the last, e.g. 5 20); pass --allow_stages_without_new_timesteps "
                         "to eliminate classes on the earlier stages' errors alone")
    check_output_dir(args.output_dir, "--output_dir")
    check_output_dir(args.run_dir, "--run_dir")
    check_output_file(args.summary_csv, "--summary_csv")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1; got {args.batch_size}")
    if args.n_workers < 1 or not 0 <= args.worker_idx < args.n_workers:
        raise ValueError(f"need 0 <= --worker_idx < --n_workers; got {args.worker_idx} / {args.n_workers}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max_images must be positive; got {args.max_images}")
    if args.img_size is not None and args.img_size < 8:
        raise ValueError(f"--img_size must be >= 8; got {args.img_size}")
    validate_reduction(args)  # unknown, foreign or out-of-range reducer options, before model work
    return table, schedule, split


def _model_label(args: argparse.Namespace) -> str:
    """Folder name of the model."""
    if args.model_path:
        return Path(args.model_path).resolve().name
    return str(args.version).replace("/", "--")


def _run_dir(args: argparse.Namespace, split: str, img_size: int | str, dtype: str) -> Path:
    """Output folder whose name encodes every setting."""
    if args.run_dir:
        return Path(args.run_dir)
    settings = (f"ns{'-'.join(map(str, args.n_samples))}_tk{'-'.join(map(str, args.to_keep))}_{args.loss}"
                f"_tr{args.n_trials}_s{args.seed}_{img_size}px-{args.interpolation}_{dtype}_bs{args.batch_size}")
    return Path(args.output_dir) / f"{args.dataset}_{split}" / _model_label(args) / run_reduction_tag(args) / settings


def _model_identity(model: Any, args: argparse.Namespace, run_dir: Path) -> dict:
    """Identity of the weights (bigain.identity); a merge without the model loaded takes it from --model_path or
    the run's config.json."""
    if model is not None:
        return model_identity(model.source)
    if args.model_path:
        return model_identity(args.model_path)
    try:
        return json.loads((run_dir / "config.json").read_text())["result_config"]["model_identity"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"--merge_only without --model_path needs {run_dir / 'config.json'} with the model's "
                         "identity, or drop --img_size so the model is loaded") from err


def _shard() -> tuple[int, int]:
    """(process rank, process count) under `accelerate launch` / torchrun (RANK, WORLD_SIZE); (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _barrier(n_procs: int) -> None:
    """Wait for every process of a multi-process launch (gloo works on CPU and GPU hosts alike)."""
    if n_procs <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    dist.barrier()
    dist.destroy_process_group()


def _setup_logging(run_dir: Path, tag: str) -> None:
    """Log to stderr and <run_dir>/log<tag>.txt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    LOG.setLevel(logging.INFO)
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for h in (logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / f"log{tag}.txt")):
        h.setFormatter(fmt)
        LOG.addHandler(h)
    LOG.propagate = False


def count_flops_per_call(model: Any, latent_shape: Sequence[int], cond: dict[str, torch.Tensor],
                         schedule: Schedule, batch_size: int) -> float:
    """FLOPs of one denoiser call (torch.utils.flop_counter, CPU SDPA included), averaged over a batch of grid timesteps."""
    grid = schedule.grid()
    n = max(1, min(batch_size, len(grid)))
    t = torch.tensor([grid[int(i * len(grid) / n)] for i in range(n)], device=model.device)
    rows = [i % next(iter(cond.values())).shape[0] for i in range(n)]
    x = torch.zeros((n, *latent_shape), device=model.device)
    batch_cond = model.select(cond, rows)
    from eval.flops import count_flops

    return count_flops(model, (x, t, batch_cond)).total / n


def _git_commit() -> str:
    """Current commit of the repository ('' outside git)."""
    try:
        import subprocess

        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def main(argv: Sequence[str] | None = None) -> dict:
    """Run (or merge) a classification; returns the summary row."""
    from bigain.config import parse_args_with_config, save_effective_config

    wall_start = time.perf_counter()
    args = parse_args_with_config(build_parser(), argv)
    table, schedule, split = validate_args(args)
    proc_idx, n_procs = _shard()
    n_shards, shard = args.n_workers * n_procs, args.worker_idx * n_procs + proc_idx

    from bigain.models import resolve_run_device

    device, dtype, dtype_name = resolve_run_device(args.device, args.dtype, args.cpu_threads, n_procs, proc_idx)

    dataset = build_dataset(args.dataset, root=args.dataset_root, split=split, img_size=args.img_size,
                            interpolation=args.interpolation, data_dir=args.data_dir, prompts_csv=args.prompts_csv,
                            skip_bad_images=args.skip_bad_images)
    indices = subset_indices(len(dataset), args.max_images, prefix=dataset.prefix_subsets)
    mine = indices[shard::n_shards]
    calls_expected = schedule.calls_per_image(len(table))

    if args.dry_run:
        run_dir = _run_dir(args, split, args.img_size or "native", dtype_name)
        plan = {"run_dir": str(run_dir), "dataset": args.dataset, "split": split, "images": len(indices),
                "this_shard": len(mine), "shard": f"{shard}/{n_shards}", "classes": len(table),
                "timestep_grid": schedule.grid(),
                "timesteps_per_stage": [[schedule.grid()[i] for i in s] for s in schedule.stage_slots()],
                "to_keep": list(schedule.to_keep), "calls_per_image": calls_expected,
                "model": args.model_path or args.version, "method": args.method, "reduction": run_reduction_tag(args),
                "dtype": dtype_name, "device": str(device)}
        print(json.dumps(plan, indent=2))
        return plan

    from bigain.models import check_image_size, load_model
    from bigain.reduction import apply_reduction

    model = None
    if not (args.merge_only and args.img_size):  # merging needs the model only to learn its native size
        model = load_model(args.version, model_path=args.model_path, dtype=dtype, device=device)
    if args.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    img_size = args.img_size or model.image_size
    latent_side = check_image_size(model, img_size) if model is not None else None
    dataset.transform = _transform_for(img_size, args.interpolation)
    run_dir = _run_dir(args, split, img_size, dtype_name)
    _setup_logging(run_dir, "" if n_shards == 1 else f".{shard}of{n_shards}")

    result_config = {
        "dataset": args.dataset, "split": split, "prompts_sha": _prompts_sha(table), "img_size": img_size,
        "interpolation": args.interpolation, "model": _model_label(args), "dtype": dtype_name,
        "n_samples": list(args.n_samples), "to_keep": list(args.to_keep), "n_trials": args.n_trials,
        "loss": args.loss, "seed": args.seed, "batch_size": args.batch_size, "reduction": run_reduction_tag(args),
        "model_identity": _model_identity(model, args, run_dir),
        **({"skip_bad_images": True} if args.skip_bad_images else {}),  # changes the image list
    }
    fingerprint = config_fingerprint(result_config)

    if args.merge_only:
        return _finish(args, run_dir, indices, fingerprint, result_config, wall_start, shard, n_shards,
                       flops=None, report=None)

    report = apply_reduction(model.denoiser, args, seed=args.seed, latent_size=latent_side)
    LOG.info("model %s (%s) on %s, %s; %s", model.name, model.source, device, dtype_name,
             str(report) if report is not None else "no token reduction")
    _warn_if_foreign_classes(model, table)
    cond = model.condition(prompts=list(table.prompts), class_ids=list(table.classidx))
    latent_shape = (model.in_channels, latent_side, latent_side)
    flops = None
    if not args.no_flops:
        flops = count_flops_per_call(model, latent_shape, cond, schedule, args.batch_size)
    if shard == 0:
        # re-usable as --config (without the `config` key itself, which a config may not set)
        save_effective_config(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "config"}), run_dir)
        atomic_write_json(run_dir / "config.json", {
            "args": vars(args), "result_config": result_config, "fingerprint": fingerprint,
            "model": model.describe(), "patch": report.to_dict() if report is not None else None,
            "timestep_grid": schedule.grid(), "stage_slots": schedule.stage_slots(),
            "calls_per_image": calls_expected, "flops_per_call": flops, "images": len(indices),
            "classes": table.to_dict(), "git_commit": _git_commit(), "torch": torch.__version__,
            "attention": "torch SDPA (diffusers AttnProcessor2_0)", "tf32": bool(args.tf32)})

    for folder in (run_dir, run_dir / "records"):  # temp files of killed writers
        clean_stale_tmp(folder)
    todo, done_correct = _scan_shard(run_dir, mine, fingerprint, args.force_recalc)
    LOG.info("run dir %s: %d images in this shard (%d/%d), %d to compute, %d classes, %d calls/image",
             run_dir, len(mine), shard, n_shards, len(todo), len(table), calls_expected)
    ctx = RunContext(model=model, cond=cond, classidx=np.asarray(table.classidx, dtype=np.int64), schedule=schedule,
                     seed=args.seed, reduction_seed=args.reduction_seed, batch_size=args.batch_size, loss=args.loss,
                     patched=report is not None, fingerprint=fingerprint)
    computed = _run_images(ctx, dataset, todo, len(mine), done_correct, run_dir, args.loader_workers,
                desc=f"classify {args.dataset}", force=args.force_recalc)

    _barrier(n_procs)
    if proc_idx != 0:
        return {}
    return _finish(args, run_dir, indices, fingerprint, result_config, wall_start, shard, n_shards,
                   flops=flops, report=report, computed=computed)


def _warn_if_foreign_classes(model: Any, table: Any) -> None:
    """Warn when a class-conditional model's own label names do not look like the dataset's classes."""
    names = getattr(model, "class_names", None)
    if model.conditioning != "class" or not names:
        return
    hits = sum(1 for i, n in zip(table.classidx, table.classnames)
               if 0 <= i < len(names) and n.lower() in str(names[i]).lower())
    if hits < len(table) / 2:
        LOG.warning("only %d/%d dataset classes match the model's label names (e.g. classidx %d = %r vs %r): "
                    "a class-conditional model can only classify its own label space", hits, len(table),
                    table.classidx[0], table.classnames[0], names[table.classidx[0]] if
                    table.classidx[0] < len(names) else None)


def _transform_for(img_size: int, interpolation: str):
    """Dataset transform at the model's size."""
    from bigain.datasets import make_transform

    return make_transform(img_size, interpolation)


def _prompts_sha(table: Any) -> str:
    """Hash of the class table (a changed CSV invalidates records)."""
    return hashlib.sha256(json.dumps(table.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _scan_shard(run_dir: Path, mine: Sequence[int], fingerprint: str, force: bool) -> tuple[list[int], int]:
    """(images without a valid record, correct predictions among those with one); force: recompute all."""
    if force:
        return list(mine), 0
    todo, correct = [], 0
    for i in mine:
        rec = load_record(record_path(run_dir, i), fingerprint)
        if rec is None:
            todo.append(i)
        else:
            correct += int(rec.correct)
    return todo, correct


def _run_images(ctx: RunContext, dataset: Any, todo: list[int], shard_size: int, done_correct: int, run_dir: Path,
                loader_workers: int = 0, desc: str = "classify", force: bool = False) -> int:
    """Classify `todo` images, writing one record each; progress bar with running accuracy over the shard.

    Each image is computed under a per-image lock: an image another live process holds is skipped, and
    one finished while waiting is not recomputed. Returns the number of images computed here.
    """
    from tqdm.auto import tqdm

    correct, seen = done_correct, shard_size - len(todo)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, todo), batch_size=None, shuffle=False,
                                         num_workers=loader_workers)
    bar = tqdm(total=shard_size, initial=seen, desc=desc, unit="img", dynamic_ncols=True)
    computed = 0
    for index, (image, label) in zip(todo, loader):
        with try_lock(run_dir / ".locks" / f"{index:08d}.lock") as held_here:
            rec = None if (not held_here or force) else load_record(record_path(run_dir, index), ctx.fingerprint)
            if not held_here:  # another process is computing it
                bar.update(1)
                continue
            if rec is None:
                rec = classify_dataset_image(ctx, index, image, label)
                save_record(record_path(run_dir, index), rec)
                computed += 1
        seen += 1
        correct += int(rec.correct)
        bar.update(1)
        bar.set_postfix(acc=f"{correct / seen:.3f}", s_img=f"{rec.wall_time_s:.2f}")
    bar.close()
    return computed


def _finish(args: argparse.Namespace, run_dir: Path, indices: list[int], fingerprint: str, result_config: dict,
            wall_start: float, shard: int, n_shards: int, flops: float | None, report: Any, computed: int = 0) -> dict:
    """Merge every shard's records, log accuracy, append the summary row."""
    merged = merge_records(run_dir, indices, fingerprint)
    wall = time.perf_counter() - wall_start
    row = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "dataset": args.dataset, "split": result_config["split"],
        "model": result_config["model"], "method": args.method, "reduction": result_config["reduction"],
        "n_samples": " ".join(map(str, args.n_samples)), "to_keep": " ".join(map(str, args.to_keep)),
        "n_trials": args.n_trials, "loss": args.loss, "seed": args.seed, "img_size": result_config["img_size"],
        "dtype": result_config["dtype"], "batch_size": args.batch_size,
        "accuracy": round(merged.accuracy, 6) if merged.images else "", "images": merged.images,
        "expected_images": merged.expected, "complete": merged.complete,
        "calls_per_image": round(merged.calls_per_image, 2) if merged.images else "",
        "model_time_s": round(merged.model_time_s, 3), "image_time_s": round(merged.image_wall_time_s, 3),
        "images_per_s": round(merged.images / merged.image_wall_time_s, 4) if merged.image_wall_time_s else "",
        "wall_time_s": round(wall, 3), "flops_per_call": f"{flops:.4g}" if flops else "",
        "shard": f"{shard}/{n_shards}", "merge_only": bool(args.merge_only), "run_dir": str(run_dir),
        "fingerprint": fingerprint, "images_computed": computed,
    }
    summary = Path(args.summary_csv) if args.summary_csv else Path(args.output_dir) / "summary.csv"
    append_csv_row(summary, row)
    atomic_write_json(run_dir / f"result{'' if n_shards == 1 else f'.{shard}of{n_shards}'}.json",
                      {**row, **merged.to_dict()})
    acc = f"{100 * merged.accuracy:.2f}%" if merged.images else "n/a"
    LOG.info("accuracy %s over %d/%d images (%s); %.1f calls/image, model time %.1fs, wall %.1fs",
             acc, merged.images, merged.expected, "complete" if merged.complete else
             f"{len(merged.missing)} missing: run the other shards, then --merge_only",
             merged.calls_per_image if merged.images else math.nan, merged.model_time_s, wall)
    return row


if __name__ == "__main__":
    run_cli(main)
