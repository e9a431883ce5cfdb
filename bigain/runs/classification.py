"""A classification run (docs/protocol.md §1): the typed settings (:class:`ClassifyRun`) and the work
(:func:`run_classification`): shard the images, resume from per-image records, merge into accuracy and a summary row.

    run = ClassifyRun(dataset="fmnist", split="subset", model_path="bigain/assets/testbed/dit-fmnist", max_images=20)
    row = run_classification(run)        # same folder, records and summary row as `python -m bigain.classify ...`
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import tomesd
from bigain.cli import AUTO, check_output_dir, check_output_file, enable_tf32, launch_shard, save_effective_config
from bigain.data import build_dataset, check_dataset_args, load_prompts, make_transform, subset_indices
from bigain.diffusion import RunContext, StageSchedule, classify_dataset_image, forward_process
from bigain.models import check_image_size, load_model, model_identity, resolve_run_device
from bigain.models.run_families import check_run_family, check_task
from bigain.reduction import apply_reduction, validate_reduction
from bigain.runs.batching import find_batch_size, recorded_batch_size
from bigain.runs.common import RunFields, barrier, git_commit, refuse_auto_with_shards, setup_logging
from bigain.storage import (
    append_csv_row,
    atomic_write_json,
    check_record_paths,
    clean_stale_tmp,
    config_fingerprint,
    load_record,
    merge_records,
    record_path,
    save_record,
    try_lock,
)
from eval.flops import count_flops

__all__ = ["ClassifyRun", "run_classification", "count_flops_per_call"]

LOG = logging.getLogger("bigain.classify")


@dataclass(frozen=True)
class ClassifyRun(RunFields):
    """Every setting of one classification run (the values `python -m bigain.classify` parses; same names)."""

    # data (the shared fields: bigain.runs.common.RunFields)
    dataset: str = "pets"
    img_size: Optional[int] = None
    interpolation: str = "bicubic"
    loader_workers: int = 0
    # adaptive protocol
    n_samples: tuple[int, ...] = (5, 20)
    allow_stages_without_new_timesteps: bool = False
    to_keep: tuple[int, ...] = (5, 1)
    n_trials: int = 1
    loss: str = "l2"
    batch_size: int | str = 32  # or "auto": resolved when the model is loaded
    # outputs, resumption
    output_dir: str = "results/classification"
    force_recalc: bool = False
    merge_only: bool = False

    def validate(self) -> tuple[Any, StageSchedule, str]:
        """Check every input before model work; returns (class table, schedule, split). Raises ValueError etc."""
        split = check_dataset_args(self.dataset, self.dataset_root, self.data_dir, self.split)
        if self.prompts_csv:
            table = load_prompts(self.prompts_csv)
        elif self.dataset == "folder":
            table = load_prompts(Path(self.data_dir) / "prompts.csv")
        else:
            table = load_prompts(self.dataset)
        schedule = StageSchedule(tuple(self.n_samples), tuple(self.to_keep), 1000, self.n_trials)
        schedule.validate(len(table))
        empty = [s for s, new in enumerate(schedule.stage_slots()) if s > 0 and not new]
        if empty and not self.allow_stages_without_new_timesteps:
            raise ValueError(f"--n_samples {list(self.n_samples)}: stage(s) {empty} add no new timestep (each stage "
                             "must score more timesteps than the last, e.g. 5 20); pass "
                             "--allow_stages_without_new_timesteps to eliminate classes on the earlier stages' "
                             "errors alone")
        check_output_dir(self.output_dir, "--output_dir")
        check_output_dir(self.run_dir, "--run_dir")
        check_output_file(self.summary_csv, "--summary_csv")
        if self.batch_size != AUTO and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"--batch_size must be an integer >= 1 or auto; got {self.batch_size!r}")
        if self.n_workers < 1 or not 0 <= self.worker_idx < self.n_workers:
            raise ValueError(f"need 0 <= --worker_idx < --n_workers; got {self.worker_idx} / {self.n_workers}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"--max_images must be positive; got {self.max_images}")
        if self.img_size is not None and self.img_size < 8:
            raise ValueError(f"--img_size must be >= 8; got {self.img_size}")
        validate_reduction(self.method, self.reduction)  # unknown, foreign or out-of-range options, before model work
        check_run_family(self.version, self.model_path, self.reduction, task="classify")  # from model_index.json
        return table, schedule, split

    def run_folder(self, split: str, img_size: Any, dtype_name: str) -> Path:
        """Output folder whose name encodes every setting (or --run_dir)."""
        if self.run_dir:
            return Path(self.run_dir)
        settings = (f"ns{'-'.join(map(str, self.n_samples))}_tk{'-'.join(map(str, self.to_keep))}_{self.loss}"
                    f"_tr{self.n_trials}_s{self.seed}_{img_size}px-{self.interpolation}_{dtype_name}_bs{self.batch_size}")
        return Path(self.output_dir) / f"{self.dataset}_{split}" / self.model_label / self.reduction_tag / settings

    def result_config(self, table: Any, split: str, img_size: int, dtype_name: str, identity: dict) -> dict:
        """The settings that change a record (their hash is the run's fingerprint)."""
        return {
            "dataset": self.dataset, "split": split, "prompts_sha": prompts_sha(table), "img_size": img_size,
            "interpolation": self.interpolation, "model": self.model_label, "dtype": dtype_name,
            "n_samples": list(self.n_samples), "to_keep": list(self.to_keep), "n_trials": self.n_trials,
            "loss": self.loss, "seed": self.seed, "batch_size": self.batch_size, "reduction": self.reduction_tag,
            "model_identity": identity,
            **({"skip_bad_images": True} if self.skip_bad_images else {}),  # changes the image list
        }

    def fingerprint(self, table: Any, split: str, img_size: int, dtype_name: str, identity: dict) -> str:
        """Hash of :meth:`result_config`: records carrying another fingerprint are recomputed."""
        return config_fingerprint(self.result_config(table, split, img_size, dtype_name, identity))


def prompts_sha(table: Any) -> str:
    """Hash of the class table (a changed CSV invalidates records)."""
    return hashlib.sha256(json.dumps(table.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def run_classification(run: ClassifyRun) -> dict:
    """Run (or merge) a classification; returns the summary row (the dry-run plan with `dry_run`)."""
    wall_start = time.perf_counter()
    table, schedule, split = run.validate()
    proc_idx, n_procs = launch_shard()
    n_shards, shard = run.n_workers * n_procs, run.worker_idx * n_procs + proc_idx
    device, dtype, dtype_name = resolve_run_device(run.device, run.dtype, run.cpu_threads, n_procs, proc_idx)

    dataset = build_dataset(run.dataset, root=run.dataset_root, split=split, img_size=run.img_size,
                            interpolation=run.interpolation, data_dir=run.data_dir, prompts_csv=run.prompts_csv,
                            skip_bad_images=run.skip_bad_images)
    indices = subset_indices(len(dataset), run.max_images, prefix=dataset.prefix_subsets)
    mine = indices[shard::n_shards]
    calls_expected = schedule.calls_per_image(len(table))

    if run.dry_run:
        plan = {"run_dir": str(run.run_folder(split, run.img_size or "native", dtype_name)), "dataset": run.dataset,
                "split": split, "images": len(indices), "this_shard": len(mine), "shard": f"{shard}/{n_shards}",
                "classes": len(table), "timestep_grid": schedule.grid(),
                "timesteps_per_stage": [[schedule.grid()[i] for i in s] for s in schedule.stage_slots()],
                "to_keep": list(schedule.to_keep), "calls_per_image": calls_expected,
                "model": run.model_path or run.version, "method": run.method, "reduction": run.reduction_tag,
                "dtype": dtype_name, "device": str(device)}
        print(json.dumps(plan, indent=2))
        return plan

    model = None
    if not (run.merge_only and run.img_size):  # merging needs the model only to learn its native size
        model = load_model(run.version, model_path=run.model_path, dtype=dtype, device=device)
        check_task(model.kind, "classify", model.name)  # a hub model's family is known only once loaded
    enable_tf32(run.tf32, device)
    img_size = run.img_size or model.image_size
    latent_side = check_image_size(model, img_size) if model is not None else None
    dataset.transform = make_transform(img_size, run.interpolation)
    if run.batch_size == AUTO:  # from here on the run is the fixed-size run of the size found
        run = run.replace(batch_size=recorded_batch_size(run.run_dir)
                          or _auto_batch_size(run, model, table, schedule, latent_side, n_shards))
    run_dir = run.run_folder(split, img_size, dtype_name)
    setup_logging(LOG, run_dir, "" if n_shards == 1 else f".{shard}of{n_shards}")

    result_config = run.result_config(table, split, img_size, dtype_name, _model_identity(model, run, run_dir))
    fingerprint = config_fingerprint(result_config)
    if run.merge_only:
        return _finish(run, run_dir, indices, fingerprint, result_config, wall_start, shard, n_shards,
                       flops=None)

    check_record_paths(record_path(run_dir, i) for i in mine)  # a folder in a record's place: refused up front
    reduction_seed = run.seed if run.reduction_seed is None else run.reduction_seed
    report = apply_reduction(model.denoiser, run.method, run.reduction, seed=reduction_seed, latent_size=latent_side)
    LOG.info("model %s (%s) on %s, %s; %s", model.name, model.source, device, dtype_name,
             str(report) if report is not None else "no token reduction")
    _warn_if_foreign_classes(model, table)
    cond = model.condition(prompts=list(table.prompts), class_ids=list(table.classidx))
    latent_shape = (model.in_channels, latent_side, latent_side)
    flops = None if run.no_flops else count_flops_per_call(model, latent_shape, cond, schedule, run.batch_size)
    if shard == 0:
        args = run.namespace()  # the command line's view of the run, recorded with it
        # re-usable as --config (without the `config` key itself, which a config may not set)
        save_effective_config(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "config"}), run_dir)
        atomic_write_json(run_dir / "config.json", {
            "args": vars(args), "result_config": result_config, "fingerprint": fingerprint,
            "model": model.describe(), "patch": report.to_dict() if report is not None else None,
            "timestep_grid": schedule.grid(), "stage_slots": schedule.stage_slots(),
            "calls_per_image": calls_expected, "flops_per_call": flops, "images": len(indices),
            "classes": table.to_dict(), "git_commit": git_commit(), "torch": torch.__version__,
            "attention": "torch SDPA (diffusers AttnProcessor2_0)", "tf32": bool(run.tf32)})

    for folder in (run_dir, run_dir / "records"):  # temp files of killed writers
        clean_stale_tmp(folder)
    todo, done_correct = _scan_shard(run_dir, mine, fingerprint, run.force_recalc)
    LOG.info("run dir %s: %d images in this shard (%d/%d), %d to compute, %d classes, %d calls/image",
             run_dir, len(mine), shard, n_shards, len(todo), len(table), calls_expected)
    ctx = RunContext(model=model, cond=cond, classidx=np.asarray(table.classidx, dtype=np.int64), schedule=schedule,
                     seed=run.seed, reduction_seed=run.reduction_seed, batch_size=run.batch_size, loss=run.loss,
                     patched=report is not None, fingerprint=fingerprint)
    computed = _run_images(ctx, dataset, todo, len(mine), done_correct, run_dir, run.loader_workers,
                           desc=f"classify {run.dataset}", force=run.force_recalc)

    barrier(n_procs)
    if proc_idx != 0:
        return {}
    return _finish(run, run_dir, indices, fingerprint, result_config, wall_start, shard, n_shards,
                   flops=flops, computed=computed)


def largest_call(schedule: StageSchedule, num_classes: int) -> int:
    """Samples in the largest stage (classes alive x new timesteps x trials): no batch is ever bigger."""
    alive, largest = num_classes, 1
    for new, keep in zip(schedule.stage_slots(), schedule.to_keep):
        largest = max(largest, alive * len(new) * schedule.n_trials)
        alive = min(alive, keep)
    return largest


def _auto_batch_size(run: ClassifyRun, model: Any, table: Any, schedule: StageSchedule, latent_side: int,
                     n_shards: int = 1) -> int:
    """`--batch_size auto`: the largest batch of the run's denoiser calls (reducer applied, classes and grid
    timesteps cycling) that fits, from the largest stage down by halving (bigain.runs.batching)."""
    refuse_auto_with_shards(n_shards)
    if model is None:
        raise ValueError("--merge_only with --batch_size auto needs --run_dir of a run whose config.json records "
                         "its batch size, or the --batch_size the run used")
    reduction_seed = run.seed if run.reduction_seed is None else run.reduction_seed
    apply_reduction(model.denoiser, run.method, run.reduction, seed=reduction_seed, latent_size=latent_side)
    cond = model.condition(prompts=list(table.prompts), class_ids=list(table.classidx))
    shape, grid, rows = (model.in_channels, latent_side, latent_side), schedule.grid(), len(table)
    velocity = forward_process(model, shape)[2]
    predict = model.predict_target if velocity else model.predict_eps

    def probe(n: int) -> None:
        x = torch.zeros((n, *shape), device=model.device)
        t = torch.tensor([grid[i % len(grid)] for i in range(n)], device=model.device)
        with torch.no_grad():
            predict(x, t, model.select(cond, [i % rows for i in range(n)]))

    try:
        return find_batch_size(probe, largest_call(schedule, len(table)), "(class, timestep) samples")
    finally:
        tomesd.remove_patch(model.denoiser)


def _model_identity(model: Any, run: ClassifyRun, run_dir: Path) -> dict:
    """Identity of the weights (bigain.models.identity); a merge without the model loaded takes it from --model_path or
    the run's config.json."""
    if model is not None:
        return model_identity(model.source)
    if run.model_path:
        return model_identity(run.model_path)
    try:
        return json.loads((run_dir / "config.json").read_text())["result_config"]["model_identity"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"--merge_only without --model_path needs {run_dir / 'config.json'} with the model's "
                         "identity, or drop --img_size so the model is loaded") from err


def count_flops_per_call(model: Any, latent_shape: Sequence[int], cond: dict[str, torch.Tensor],
                         schedule: StageSchedule, batch_size: int) -> float:
    """FLOPs of one denoiser call (torch.utils.flop_counter, CPU SDPA included), averaged over a batch of grid
    timesteps."""
    grid = schedule.grid()
    n = max(1, min(batch_size, len(grid)))
    t = torch.tensor([grid[int(i * len(grid) / n)] for i in range(n)], device=model.device)
    rows = [i % next(iter(cond.values())).shape[0] for i in range(n)]
    x = torch.zeros((n, *latent_shape), device=model.device)
    batch_cond = model.select(cond, rows)
    return count_flops(model, (x, t, batch_cond)).total / n


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


def _finish(run: ClassifyRun, run_dir: Path, indices: list[int], fingerprint: str, result_config: dict,
            wall_start: float, shard: int, n_shards: int, flops: float | None, computed: int = 0) -> dict:
    """Merge every shard's records, log accuracy, append the summary row."""
    merged = merge_records(run_dir, indices, fingerprint)
    wall = time.perf_counter() - wall_start
    row = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "dataset": run.dataset, "split": result_config["split"],
        "model": result_config["model"], "method": run.method, "reduction": result_config["reduction"],
        "n_samples": " ".join(map(str, run.n_samples)), "to_keep": " ".join(map(str, run.to_keep)),
        "n_trials": run.n_trials, "loss": run.loss, "seed": run.seed, "img_size": result_config["img_size"],
        "dtype": result_config["dtype"], "batch_size": run.batch_size,
        "accuracy": round(merged.accuracy, 6) if merged.images else "", "images": merged.images,
        "expected_images": merged.expected, "complete": merged.complete,
        "calls_per_image": round(merged.calls_per_image, 2) if merged.images else "",
        "model_time_s": round(merged.model_time_s, 3), "image_time_s": round(merged.image_wall_time_s, 3),
        "images_per_s": round(merged.images / merged.image_wall_time_s, 4) if merged.image_wall_time_s else "",
        "wall_time_s": round(wall, 3), "flops_per_call": f"{flops:.4g}" if flops else "",
        "shard": f"{shard}/{n_shards}", "merge_only": bool(run.merge_only), "run_dir": str(run_dir),
        "fingerprint": fingerprint, "images_computed": computed,
    }
    append_csv_row(run.summary_path, row)
    atomic_write_json(run_dir / f"result{'' if n_shards == 1 else f'.{shard}of{n_shards}'}.json",
                      {**row, **merged.to_dict()})
    acc = f"{100 * merged.accuracy:.2f}%" if merged.images else "n/a"
    LOG.info("accuracy %s over %d/%d images (%s); %.1f calls/image, model time %.1fs, wall %.1fs",
             acc, merged.images, merged.expected, "complete" if merged.complete else
             f"{len(merged.missing)} missing: run the other shards, then --merge_only",
             merged.calls_per_image if merged.images else math.nan, merged.model_time_s, wall)
    return row
