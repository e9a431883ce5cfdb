"""Generation under token compression (docs/protocol.md §2): SD text-to-image and DiT class-conditional.

    python -m bigain.generate --version 2-0 --dataset imagenet --method bigain_tm --ratio 0.7
    python -m bigain.generate --version dit-512 --dataset imagenet100 --method todo --df 2
    python -m bigain.generate --model_path bigain/assets/testbed/dit-fmnist --classes 0 1 2 --images_per_class 8
    accelerate launch -m bigain.generate ...                                       # multi-GPU

One image per evaluation item: the class prompt of its label (classification datasets), the
first caption (coco2017), a line of ``--prompts_file``, or ``--classes`` x ``--images_per_class``.
Defaults: SD (U-Net) 50 Euler steps, guidance 7.5; DiT 50 DDIM steps (eta 0), guidance 4.0 with
the null class. Batch ``b`` starts from noise drawn with seed ``seed + b`` and reseeds the reducer
with ``reduction_seed + b`` (default ``seed + b``), so an image depends only on the settings and
its position, never on sharding or resumption. PNGs and one JSON record each go to
``<run_dir>/images/<index>.png|json`` as they are made; a rerun skips finished images; one row per
invocation goes to the summary CSV.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from bigain.cli import check_output_dir, check_output_file, finite_float, nonneg_int, positive_int, run_cli
from bigain.identity import model_identity
from bigain.reduction import run_reduction_tag
from bigain.records import append_csv_row, atomic_write_bytes, atomic_write_json, clean_stale_tmp, \
    config_fingerprint, try_lock
from bigain.generation_items import Item, build_items
from bigain.samplers import CallStats, Schedule, guided_eps_fn, initial_noise, make_schedule, SAMPLERS

__all__ = ["Item", "build_parser", "validate_args", "build_items", "main", "DEFAULT_STEPS", "DEFAULTS_BY_KIND"]

LOG = logging.getLogger("bigain.generate")
DEFAULT_STEPS = 50
# kind -> (sampler, guidance) of the published setup
DEFAULTS_BY_KIND = {"sd": ("euler", 7.5), "dit": ("ddim", 4.0),
                    # rectified flow: SD3 pipelines' CFG 7.0; Flux without CFG (dev: distilled guidance 3.5 inside)
                    "sd3": ("flow", 7.0), "flux": ("flow-linear", 1.0)}


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Every flag of ``python -m bigain.generate``."""
    from bigain.models import MODEL_VERSIONS
    from bigain.reduction import add_reduction_args

    p = argparse.ArgumentParser(prog="python -m bigain.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to generate (one of)")
    g.add_argument("--dataset", default=None,
                   help="one image per evaluation item: class prompt / class of its label, first COCO caption")
    g.add_argument("--prompts_file", default=None, help=".txt (one prompt per line) or .csv with a prompt column")
    g.add_argument("--classes", type=nonneg_int, nargs="+", default=None, help="class ids (class-conditional models)")
    g.add_argument("--images_per_class", type=positive_int, default=1, help="with --classes (default: 1)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset_root", default=None, help="root of the datasets (default: $DATASET_ROOT)")
    g.add_argument("--split", default=None, help="split whose items are generated (default: the eval split)")
    g.add_argument("--data_dir", default=None, help="--dataset folder: folder with one sub-folder per class")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="--dataset folder: leave out files that do not decode as images (default: error naming them)")
    g.add_argument("--prompts_csv", default=None, help="prompt CSV (prompt,classname,classidx) for class prompts")
    g.add_argument("--max_images", type=positive_int, default=None, help="only this many items, spread evenly")
    g.add_argument("--real_dir", default=None, help="real-image folder the run will be scored against (checked)")

    g = p.add_argument_group("model")
    g.add_argument("--version", default="2-0", help=f"{', '.join(MODEL_VERSIONS)} or a hub id (default: 2-0)")
    g.add_argument("--model_path", default=os.environ.get("MODEL_PATH") or None,
                   help="local diffusers/testbed folder; overrides --version (default: $MODEL_PATH)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on Ampere+ GPUs (recorded)")
    g.add_argument("--cpu_threads", type=positive_int, default=None, help="torch intra-op CPU threads")

    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", default=None, choices=sorted(SAMPLERS), help="default: euler (SD), ddim (DiT), flow (SD3), flow-linear (Flux)")
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps (default: {DEFAULT_STEPS})")
    g.add_argument("--guidance", type=finite_float, default=None, help="classifier-free guidance (SD 7.5, DiT 4.0)")
    g.add_argument("--batch_size", type=positive_int, default=4, help="images per batch (default: 4)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="batch b uses seed + b")
    add_reduction_args(p)

    g = p.add_argument_group("outputs, resumption, sharding")
    g.add_argument("--output_dir", default="results/generation", help="base folder of runs")
    g.add_argument("--run_dir", default=None, help="explicit run folder (default: derived from every setting)")
    g.add_argument("--summary_csv", default=None, help="summary CSV (default: <output_dir>/summary.csv)")
    g.add_argument("--n_workers", type=positive_int, default=1, help="independent jobs sharing the batches")
    g.add_argument("--worker_idx", type=nonneg_int, default=0, help="this job's index in [0, n_workers)")
    g.add_argument("--no_flops", action="store_true", help="skip the FLOPs measurement")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g.add_argument("--dry_run", "--dry-run", action="store_true", help="validate, print the plan, exit")
    from bigain.config import add_config_arg

    add_config_arg(p)
    return p


def validate_args(args: argparse.Namespace) -> None:
    """Check every input that needs no model; raises ValueError / FileNotFoundError."""
    from bigain.datasets import check_dataset_args
    from bigain.reduction import validate_reduction


    sources = [s for s in ("dataset", "prompts_file", "classes") if getattr(args, s) is not None]
    if len(sources) != 1:
        raise ValueError(f"choose exactly one of --dataset, --prompts_file, --classes (got {sources or 'none'})")
    if args.dataset is not None:
        check_dataset_args(args.dataset, args.dataset_root, args.data_dir, args.split)
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ValueError(f"--guidance must be a finite number >= 0; got {args.guidance}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1; got {args.batch_size}")
    if args.images_per_class < 1:
        raise ValueError(f"--images_per_class must be >= 1; got {args.images_per_class}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max_images must be positive; got {args.max_images}")
    if args.n_workers < 1 or not 0 <= args.worker_idx < args.n_workers:
        raise ValueError(f"need 0 <= --worker_idx < --n_workers; got {args.worker_idx} / {args.n_workers}")
    if args.real_dir is not None and not Path(args.real_dir).is_dir():
        raise FileNotFoundError(f"--real_dir {args.real_dir} is not a folder of real images")
    if args.model_path is not None:
        folder = Path(args.model_path).expanduser()
        if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
            raise FileNotFoundError(f"--model_path {folder} is not a readable folder (a diffusers or testbed "
                                    "model folder: model_index.json or unet/ or transformer/, plus scheduler/)")
    check_output_dir(args.output_dir, "--output_dir")
    check_output_dir(args.run_dir, "--run_dir")
    check_output_file(args.summary_csv, "--summary_csv")
    validate_reduction(args)  # unknown, foreign or out-of-range reducer options, before model work


def _source_label(args: argparse.Namespace) -> str:
    """Folder name of what is generated."""
    if args.prompts_file:
        return f"prompts-{Path(args.prompts_file).stem}"
    if args.classes is not None:
        ids = "-".join(map(str, args.classes))
        return f"classes{ids if len(ids) <= 40 else config_fingerprint({'c': args.classes})[:8]}x{args.images_per_class}"
    return f"{args.dataset}{'_' + args.split if args.split else ''}"


def _model_label(args: argparse.Namespace) -> str:
    """Folder name of the model."""
    return Path(args.model_path).resolve().name if args.model_path else str(args.version).replace("/", "--")


def _run_dir(args: argparse.Namespace, sampler: str, guidance: float, dtype: str, size: int) -> Path:
    """Output folder whose name encodes every setting."""
    if args.run_dir:
        return Path(args.run_dir)
    settings = f"{sampler}{args.steps}_g{guidance:g}_s{args.seed}_bs{args.batch_size}_{size}px_{dtype}"
    if args.max_images:
        settings += f"_max{args.max_images}"
    return Path(args.output_dir) / _source_label(args) / _model_label(args) / run_reduction_tag(args) / settings


def _shard() -> tuple[int, int]:
    """(process index, process count) under ``accelerate launch`` / torchrun; (0, 1) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes


# ----------------------------------------------------------------------------- sampling


def _conditions(model: Any, batch: Sequence[Item], guidance: float) -> tuple[dict, Optional[dict]]:
    """(cond, uncond) rows for a batch: prompts for text models, class ids otherwise."""
    n = len(batch)
    if model.conditioning == "text":
        cond = model.condition(prompts=[it.prompt for it in batch])
    else:
        cond = model.condition(class_ids=[it.label for it in batch])
    uncond = model.null_condition(n) if guidance != 1.0 else None
    return cond, uncond


def _check_items_fit(model: Any, items: Sequence[Item]) -> None:
    """Every item has what the model conditions on (before any sampling)."""
    if model.conditioning == "text":
        missing = [it.index for it in items if not it.prompt]
        if missing:
            raise ValueError(f"{model.name} is text-conditioned but items {missing[:5]} have no prompt "
                             "(give --prompts_csv / --prompts_file, or a dataset with a prompt CSV)")
    else:
        missing = [it.index for it in items if it.label is None]
        if missing:
            raise ValueError(f"{model.name} is class-conditioned but items {missing[:5]} have no class id")
        bad = sorted({it.label for it in items if model.num_classes is not None and not 0 <= it.label < model.num_classes})
        if bad:
            raise ValueError(f"class ids {bad[:5]} outside [0, {model.num_classes}) for {model.name}")


def sample_batch(model: Any, batch: Sequence[Item], schedule: Schedule, guidance: float, seed: int,
                 stats: Optional[CallStats] = None) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) on CPU for one batch, from noise seeded with ``seed``."""
    cond, uncond = _conditions(model, batch, guidance)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(batch), model.in_channels, model.sample_size, model.sample_size)
    x = initial_noise(shape, schedule, gen, model.device, torch.float32)
    eps_fn = guided_eps_fn(model, cond, uncond, guidance, stats)
    x = SAMPLERS[schedule.name](eps_fn, x, schedule, generator=gen)
    return model.decode_latents(x).float().cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of one uint8 (H, W, C) image (grey when C == 1)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def count_flops(model: Any, schedule: Schedule, guidance: float, item: Item) -> float:
    """Denoiser FLOPs to generate one image (every step, guidance rows included; no text encoder or VAE), counted
    by `eval.flops.count_flops` (CPU SDPA included)."""
    from eval.flops import count_flops as count

    cond, uncond = _conditions(model, [item], guidance)
    x = initial_noise((1, model.in_channels, model.sample_size, model.sample_size), schedule,
                      torch.Generator().manual_seed(0), model.device)
    sample = SAMPLERS[schedule.name]
    return float(count(lambda: sample(guided_eps_fn(model, cond, uncond, guidance), x, schedule)).total)


def _finished(images_dir: Path, index: int, fingerprint: str) -> bool:
    """An image is finished when its record (written last) carries the run's fingerprint and its PNG has the
    size and sha256 the record stores (a truncated or replaced PNG is regenerated)."""
    rec, png = images_dir / f"{index:06d}.json", images_dir / f"{index:06d}.png"
    try:
        meta = json.loads(rec.read_text())
        if meta.get("fingerprint") != fingerprint or png.stat().st_size != meta.get("png_bytes"):
            return False
        return hashlib.sha256(png.read_bytes()).hexdigest() == meta.get("png_sha256")
    except (OSError, ValueError, AttributeError):
        return False


def _attention_backend(denoiser: torch.nn.Module) -> str:
    """Names of the attention processors in use (before patching)."""
    procs = getattr(denoiser, "attn_processors", {}) or {}
    return ",".join(sorted({type(p).__name__ for p in procs.values()})) or "n/a"


# ----------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Generate a run's images (this shard's share, skipping finished ones); returns the summary row."""
    wall_start = time.perf_counter()
    from bigain.config import parse_args_with_config

    args = parse_args_with_config(build_parser(), argv)
    validate_args(args)
    items = build_items(args)
    if not items:
        raise ValueError("nothing to generate: the item list is empty")
    proc_idx, n_procs = _shard()
    n_shards, shard = args.n_workers * n_procs, args.worker_idx * n_procs + proc_idx

    from bigain.models import load_model, resolve_run_device
    from bigain.reduction import apply_reduction

    import tomesd

    device, dtype, dtype_name = resolve_run_device(args.device, args.dtype, args.cpu_threads, n_procs, proc_idx)
    if args.dry_run:
        plan = {"items": len(items), "batches": -(-len(items) // args.batch_size), "shard": f"{shard}/{n_shards}",
                "first": asdict(items[0]), "model": args.model_path or args.version, "reduction": run_reduction_tag(args)}
        print(json.dumps(plan, indent=2))
        return plan

    model = load_model(args.version, model_path=args.model_path, dtype=dtype, device=device)
    if args.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _check_items_fit(model, items)
    sampler, default_guidance = DEFAULTS_BY_KIND[model.kind]
    sampler = args.sampler or sampler
    guidance = default_guidance if args.guidance is None else float(args.guidance)
    if getattr(model, "flow_matching", False) != sampler.startswith("flow"):
        raise ValueError(f"--sampler {sampler} does not fit {model.name} ({model.kind}): rectified-flow models "
                         "(SD3, Flux) take flow / flow-linear, DDPM models euler / ddim")
    if model.null_class is None and model.conditioning == "class" and guidance != 1.0:
        raise ValueError(f"{model.name} has no null class: classifier-free guidance needs --guidance 1")
    schedule = make_schedule(sampler, model.scheduler.config, args.steps)
    attention = _attention_backend(model.denoiser)
    reduction_seed = args.seed if args.reduction_seed is None else args.reduction_seed
    report = apply_reduction(model.denoiser, args, seed=reduction_seed)

    run_dir = _run_dir(args, sampler, guidance, dtype_name, model.image_size)
    images_dir = run_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": model.name, "model_identity": model_identity(model.source), "kind": model.kind, "dtype": dtype_name,
        "image_size": model.image_size, "sampler": sampler, "steps": args.steps, "guidance": guidance,
        "seed": args.seed, "batch_size": args.batch_size, "method": tomesd.canonical_name(args.method),
        "reduction": run_reduction_tag(args), "reduction_options": report.options if report else {},
        "reduction_seed": reduction_seed, "source": _source_label(args), "n_items": len(items),
        "items_sha": config_fingerprint({"items": [asdict(it) for it in items]}),
    }
    fingerprint = config_fingerprint(settings)
    for folder in (run_dir, images_dir):  # temp files of killed writers
        clean_stale_tmp(folder)
    atomic_write_json(run_dir / "config.json", {**settings, "fingerprint": fingerprint, "attention": attention,
                                                "model_source": model.source,
                                                "patch": report.to_dict() if report else None})
    from bigain.config import save_effective_config

    save_effective_config(args, run_dir)

    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    mine = [b for b in range(len(batches)) if b % n_shards == shard]
    todo = [b for b in mine if not all(_finished(images_dir, it.index, fingerprint) for it in batches[b])]
    LOG.info("%s: %d items, %d batches for shard %d/%d, %d to do", run_dir, len(items), len(mine), shard, n_shards,
             len(todo))

    flops_per_image = None
    if not args.no_flops and todo:
        flops_per_image = count_flops(model, schedule, guidance, items[0])

    from tqdm import tqdm

    stats, written, sampled, held = CallStats(), 0, 0, 0
    for b in tqdm(todo, desc=f"generate {shard}/{n_shards}", unit="batch", disable=args.no_progress):
        with try_lock(run_dir / ".locks" / f"batch{b:06d}.lock") as held_here:
            if not held_here:  # another live process is sampling this batch
                held += len(batches[b])
                continue
            if all(_finished(images_dir, it.index, fingerprint) for it in batches[b]):
                continue  # finished by another process since the scan
            tomesd.reseed(model.denoiser, reduction_seed + b)
            images = to_uint8(sample_batch(model, batches[b], schedule, guidance, args.seed + b, stats))
            sampled += len(batches[b])  # a partly finished batch is sampled whole
            for row, (it, img) in enumerate(zip(batches[b], images)):
                if _finished(images_dir, it.index, fingerprint):
                    continue  # finished by an earlier, interrupted run: never rewritten
                data = png_bytes(img)
                atomic_write_bytes(images_dir / f"{it.index:06d}.png", data)
                record = {**asdict(it), "file": f"{it.index:06d}.png", "batch_index": b, "row": row,
                          "seed": args.seed + b, "reduction_seed": reduction_seed + b, "fingerprint": fingerprint,
                          "png_bytes": len(data), "png_sha256": hashlib.sha256(data).hexdigest(),
                          **{k: settings[k] for k in ("model", "sampler", "steps", "guidance", "method", "reduction",
                                                       "reduction_options", "image_size", "dtype")}}
                atomic_write_json(images_dir / f"{it.index:06d}.json", record)
                written += 1

    wall = time.perf_counter() - wall_start
    calls_per_image = schedule.steps
    row = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "run_dir": str(run_dir), "model": model.name,
        "kind": model.kind, "method": settings["method"], "reduction": settings["reduction"], "sampler": sampler,
        "steps": args.steps, "guidance": guidance, "seed": args.seed, "batch_size": args.batch_size,
        "dtype": dtype_name, "device": str(device), "attention": attention, "image_size": model.image_size,
        "shard": f"{shard}/{n_shards}", "items": len(items), "images_written": written,
        "images_skipped": sum(len(batches[b]) for b in mine) - sum(len(batches[b]) for b in todo),
        "calls": stats.calls, "calls_per_image": calls_per_image, "rows_per_call_per_image": 2 if guidance != 1.0 else 1,
        "model_time_s": round(stats.seconds, 4), "wall_time_s": round(wall, 3),
        "images_sampled": sampled, "images_held_elsewhere": held, "fingerprint": fingerprint,
        "model_time_per_image_s": round(stats.seconds / sampled, 5) if sampled else "",
        "wall_time_per_image_s": round(wall / sampled, 5) if sampled else "",
        "flops_per_image": f"{flops_per_image:.4g}" if flops_per_image else "",
        "flops_per_call_per_image": f"{flops_per_image / calls_per_image:.4g}" if flops_per_image else "",
        "tf32": bool(args.tf32),
    }
    summary = Path(args.summary_csv) if args.summary_csv else Path(args.output_dir) / "summary.csv"
    append_csv_row(summary, row)
    LOG.info("wrote %d images to %s (%.1fs)", written, images_dir, wall)
    return row


if __name__ == "__main__":
    run_cli(main)
