"""A generation run (docs/protocol.md §2): the typed settings (:class:`GenerateRun`) and the work
(:func:`run_generation`): this shard's batches, skipping finished items, one PNG and JSON record per image, or
for a video model (Wan) one folder of frame PNGs plus a GIF and a JSON record per video (bigain.storage.media).

    run = GenerateRun(model_path="bigain/assets/testbed/dit-fmnist", classes=(0, 1), images_per_class=4)
    row = run_generation(run)            # same folder, images and summary row as `python -m bigain.generate ...`
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

import tomesd
from bigain.cli import AUTO, check_output_dir, check_output_file, enable_tf32, launch_shard, save_effective_config
from bigain.data import Item, build_items, check_dataset_args
from bigain.diffusion import CallStats, guided_eps_fn, make_schedule
from bigain.models import OutputSize, check_steps, load_model, model_identity, resolve_run_device
from bigain.models.loading import image_size_multiple
from bigain.models.run_families import check_family_options, check_run_family
from bigain.reduction import apply_reduction, validate_reduction
from bigain.runs.batching import find_batch_size, recorded_batch_size
from bigain.runs.common import RunFields, refuse_auto_with_shards
from bigain.runs.sampling import (
    DEFAULT_STEPS,
    DEFAULTS_BY_KIND,
    check_items_fit,
    conditions,
    count_flops,
    png_bytes,
    sample_batch,
    to_uint8,
)
from bigain.storage import (
    append_csv_row,
    atomic_write_bytes,
    atomic_write_json,
    check_record_paths,
    clean_stale_tmp,
    config_fingerprint,
    deferred,
    try_lock,
    video_files,
    video_finished,
    write_video_item,
)

__all__ = ["GenerateRun", "run_generation"]

LOG = logging.getLogger("bigain.generate")
AUTO_START = 64  # --batch_size auto starts here (or at the item count), then halves


@dataclass(frozen=True)
class GenerateRun(RunFields):
    """Every setting of one generation run (the values `python -m bigain.generate` parses; same names)."""

    # what to generate (exactly one of dataset, prompts_file, classes)
    dataset: Optional[str] = None
    prompts_file: Optional[str] = None
    classes: Optional[tuple[int, ...]] = None
    images_per_class: int = 1
    # data (the shared fields: bigain.runs.common.RunFields)
    real_dir: Optional[str] = None
    # sampling (sampler / guidance None: the model kind's published setup)
    sampler: Optional[str] = None
    steps: int = DEFAULT_STEPS
    guidance: Optional[float] = None
    negative_prompt: Optional[str] = None  # None: the null condition (empty prompt / null class)
    batch_size: int | str = 4  # or "auto": resolved when the model is loaded
    # output size (None: the model's native size / frame count) and a video's GIF frame rate
    height: Optional[int] = None
    width: Optional[int] = None
    num_frames: Optional[int] = None
    fps: float = 16.0
    # outputs
    output_dir: str = "results/generation"
    no_progress: bool = False

    def validate(self) -> None:
        """Check every input that needs no model; raises ValueError / FileNotFoundError."""
        sources = [s for s in ("dataset", "prompts_file", "classes") if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ValueError(f"choose exactly one of --dataset, --prompts_file, --classes (got {sources or 'none'})")
        if self.dataset is not None:
            check_dataset_args(self.dataset, self.dataset_root, self.data_dir, self.split)
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"--guidance must be a finite number >= 0; got {self.guidance}")
        if self.negative_prompt is not None and self.guidance == 1.0:
            raise ValueError("--negative_prompt needs classifier-free guidance: --guidance other than 1")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1; got {self.steps}")
        check_steps(self.steps, self.version, self.model_path)  # scheduler config read, model not loaded
        if self.batch_size != AUTO and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"--batch_size must be an integer >= 1 or auto; got {self.batch_size!r}")
        for flag in ("height", "width", "num_frames"):
            value = getattr(self, flag)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"--{flag} must be an integer >= 1; got {value!r}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"--fps must be a finite number > 0; got {self.fps}")
        if self.images_per_class < 1:
            raise ValueError(f"--images_per_class must be >= 1; got {self.images_per_class}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"--max_images must be positive; got {self.max_images}")
        if self.n_workers < 1 or not 0 <= self.worker_idx < self.n_workers:
            raise ValueError(f"need 0 <= --worker_idx < --n_workers; got {self.worker_idx} / {self.n_workers}")
        if self.real_dir is not None and not Path(self.real_dir).is_dir():
            raise FileNotFoundError(f"--real_dir {self.real_dir} is not a folder of real images")
        if self.model_path is not None:
            folder = Path(self.model_path).expanduser()
            if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
                raise FileNotFoundError(f"--model_path {folder} is not a readable folder (a diffusers or testbed "
                                        "model folder: model_index.json or unet/ or transformer/, plus scheduler/)")
        check_output_dir(self.output_dir, "--output_dir")
        check_output_dir(self.run_dir, "--run_dir")
        check_output_file(self.summary_csv, "--summary_csv")
        validate_reduction(self.method, self.reduction)  # unknown, foreign or out-of-range options, before model work
        check_run_family(self.version, self.model_path, self.reduction, options=self.output_options)  # model_index

    @property
    def output_options(self) -> dict[str, Optional[int]]:
        """The output-size options as given (None: the model's native value)."""
        return {"height": self.height, "width": self.width, "num_frames": self.num_frames}

    def output_size(self, model: Any) -> OutputSize:
        """The size of each item on `model` (native where not given); ValueError for options the family does not
        take or sides that are not a multiple of the model's pixels per token."""
        native = model.native_output
        check_family_options(model.kind, {**self.reduction, **self.output_options},
                             getattr(model, "frame_factor", 4), native.frames)
        size = OutputSize(self.height or native.height, self.width or native.width,
                          (self.num_frames or native.frames) if model.video else None)
        multiple, why = image_size_multiple(model)
        for flag, side in (("--height", self.height), ("--width", self.width)):
            if side is not None and side % multiple:
                lower = max(multiple, side // multiple * multiple)
                raise ValueError(f"{flag} {side} does not fit {model.name}: a multiple of {multiple} ({why}); "
                                 f"nearest allowed: {lower} or {lower + multiple} (native: {native.height} x "
                                 f"{native.width})")
        return size

    @property
    def source_label(self) -> str:
        """Folder name of what is generated."""
        if self.prompts_file:
            return f"prompts-{Path(self.prompts_file).stem}"
        if self.classes is not None:
            ids = "-".join(map(str, self.classes))
            named = ids if len(ids) <= 40 else config_fingerprint({"c": list(self.classes)})[:8]
            return f"classes{named}x{self.images_per_class}"
        return f"{self.dataset}{'_' + self.split if self.split else ''}"

    def run_folder(self, sampler: str, guidance: float, dtype_name: str, size: OutputSize) -> Path:
        """Output folder whose name encodes every setting (or --run_dir)."""
        if self.run_dir:
            return Path(self.run_dir)
        settings = f"{sampler}{self.steps}_g{guidance:g}_s{self.seed}_bs{self.batch_size}_{size.label}_{dtype_name}"
        if self.max_images:
            settings += f"_max{self.max_images}"
        return Path(self.output_dir) / self.source_label / self.model_label / self.reduction_tag / settings

    def items(self) -> list[Item]:
        """Every item of the run, in index order (ValueError when there is none)."""
        items = build_items(self)
        if not items:
            raise ValueError("nothing to generate: the item list is empty")
        return items

    def settings(self, model: Any, dtype_name: str, sampler: str, guidance: float, reduction_options: dict,
                 items: list[Item], size: Optional[OutputSize] = None) -> dict:
        """The settings that change an image (their hash is the run's fingerprint); the output size is among them
        when it is not the model's native one, a video's frame count and GIF rate always."""
        size = size or model.native_output
        extra: dict[str, Any] = {}
        if (size.height, size.width) != (model.native_output.height, model.native_output.width):
            extra["output_size"] = [size.height, size.width]
        if size.frames is not None:
            extra.update(num_frames=size.frames, fps=self.fps)
        if self.negative_prompt is not None:
            extra["negative_prompt"] = self.negative_prompt
        return {**extra,
            "model": model.name, "model_identity": model_identity(model.source), "kind": model.kind,
            "dtype": dtype_name, "image_size": model.image_size, "sampler": sampler, "steps": self.steps,
            "guidance": guidance, "seed": self.seed, "batch_size": self.batch_size,
            "method": tomesd.canonical_name(self.method), "reduction": self.reduction_tag,
            "reduction_options": reduction_options, "reduction_seed": self.effective_reduction_seed,
            "source": self.source_label, "n_items": len(items),
            "items_sha": config_fingerprint({"items": [asdict(it) for it in items]}),
        }

    @property
    def effective_reduction_seed(self) -> int:
        """The reducer's base seed: --reduction_seed, else --seed (batch b adds b)."""
        return self.seed if self.reduction_seed is None else self.reduction_seed


def item_finished(images_dir: Path, index: int, fingerprint: str, video: bool = False) -> bool:
    """Whether item `index` is finished: an image (:func:`finished`) or a video folder plus record (media)."""
    if video:
        return video_finished(images_dir / f"{index:06d}", images_dir / f"{index:06d}.json", fingerprint)
    return finished(images_dir, index, fingerprint)


def finished(images_dir: Path, index: int, fingerprint: str) -> bool:
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


def _write_image(images_dir: Path, index: int, image: Any, record: dict) -> None:
    """One image's PNG, then its record with the PNG's size and sha256 (a SIGTERM waits for both)."""
    data = png_bytes(image)
    record = {**record, "file": f"{index:06d}.png", "png_bytes": len(data),
              "png_sha256": hashlib.sha256(data).hexdigest()}
    with deferred():
        atomic_write_bytes(images_dir / f"{index:06d}.png", data)
        atomic_write_json(images_dir / f"{index:06d}.json", record)


def attention_backend(denoiser: torch.nn.Module) -> str:
    """Names of the attention processors in use (before patching)."""
    procs = getattr(denoiser, "attn_processors", {}) or {}
    return ",".join(sorted({type(p).__name__ for p in procs.values()})) or "n/a"


def _auto_batch_size(model: Any, items: list[Item], schedule: Any, guidance: float, size: OutputSize,
                     negative_prompt: Optional[str] = None, n_shards: int = 1) -> int:
    """`--batch_size auto`: the largest batch of images whose denoiser call (guidance rows included, reducer applied)
    and VAE decode fit, from min(items, AUTO_START) down by halving (bigain.runs.batching). Batch b is seeded with
    seed + b, so the size found is part of the run's settings like a fixed one."""
    refuse_auto_with_shards(n_shards)

    def probe(n: int) -> None:
        batch = [items[i % len(items)] for i in range(n)]
        cond, uncond = conditions(model, batch, guidance, negative_prompt)
        x = torch.zeros((n, *model.latent_shape(size)), device=model.device)
        t = schedule.timesteps[:1].to(model.device).expand(n)
        with torch.no_grad():
            model.decode_latents(guided_eps_fn(model, cond, uncond, guidance)(x, t))

    return find_batch_size(probe, min(len(items), AUTO_START), "images")


def run_generation(run: GenerateRun) -> dict:
    """Generate a run's images (this shard's share, skipping finished ones); returns the summary row (the plan
    with `dry_run`)."""
    wall_start = time.perf_counter()
    run.validate()
    items = run.items()
    proc_idx, n_procs = launch_shard()
    n_shards, shard = run.n_workers * n_procs, run.worker_idx * n_procs + proc_idx
    device, dtype, dtype_name = resolve_run_device(run.device, run.dtype, run.cpu_threads, n_procs, proc_idx)
    if run.dry_run:
        batches = "auto" if run.batch_size == AUTO else -(-len(items) // run.batch_size)
        plan = {"items": len(items), "batches": batches, "shard": f"{shard}/{n_shards}",
                "first": asdict(items[0]), "model": run.model_path or run.version, "reduction": run.reduction_tag}
        print(json.dumps(plan, indent=2))
        return plan

    model = load_model(run.version, model_path=run.model_path, dtype=dtype, device=device)
    enable_tf32(run.tf32, device)
    check_items_fit(model, items)
    sampler, default_guidance = DEFAULTS_BY_KIND[model.kind]
    sampler = run.sampler or sampler
    guidance = default_guidance if run.guidance is None else float(run.guidance)
    if getattr(model, "flow_matching", False) != sampler.startswith("flow"):
        raise ValueError(f"--sampler {sampler} does not fit {model.name} ({model.kind}): rectified-flow models "
                         "(SD3, Flux) take flow / flow-linear, DDPM models euler / ddim")
    if model.null_class is None and model.conditioning == "class" and guidance != 1.0:
        raise ValueError(f"{model.name} has no null class: classifier-free guidance needs --guidance 1")
    if run.negative_prompt is not None and (model.conditioning != "text" or guidance == 1.0):
        raise ValueError(f"--negative_prompt needs a text-conditioned model with classifier-free guidance; "
                         f"{model.name} ({model.kind}) runs {model.conditioning}-conditioned at guidance {guidance:g}")
    size = run.output_size(model)
    schedule = make_schedule(sampler, model.scheduler.config, run.steps)
    attention = attention_backend(model.denoiser)
    reduction_seed = run.effective_reduction_seed
    report = apply_reduction(model.denoiser, run.method, run.reduction, seed=reduction_seed)
    if run.batch_size == AUTO:  # from here on the run is the fixed-size run of the size found
        run = run.replace(batch_size=recorded_batch_size(run.run_dir)
                          or _auto_batch_size(model, items, schedule, guidance, size, run.negative_prompt, n_shards))

    run_dir = run.run_folder(sampler, guidance, dtype_name, size)
    images_dir = run_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    settings = run.settings(model, dtype_name, sampler, guidance, report.options if report else {}, items, size)
    fingerprint = config_fingerprint(settings)
    for folder in (run_dir, images_dir):  # temp files of killed writers
        clean_stale_tmp(folder)
    atomic_write_json(run_dir / "config.json", {**settings, "fingerprint": fingerprint, "attention": attention,
                                                "model_source": model.source,
                                                "patch": report.to_dict() if report else None})
    save_effective_config(run.namespace(), run_dir)  # the command line's view of the run, re-usable as --config

    batches = [items[i : i + run.batch_size] for i in range(0, len(items), run.batch_size)]
    mine = [b for b in range(len(batches)) if b % n_shards == shard]
    check_record_paths(images_dir / f"{it.index:06d}{ext}" for b in mine for it in batches[b]
                       for ext in ((".json",) if model.video else (".png", ".json")))  # folders in records' places
    done = functools.partial(item_finished, images_dir, fingerprint=fingerprint, video=model.video)
    todo = [b for b in mine if not all(done(it.index) for it in batches[b])]
    LOG.info("%s: %d items, %d batches for shard %d/%d, %d to do", run_dir, len(items), len(mine), shard, n_shards,
             len(todo))

    flops_per_image = None
    if not run.no_flops and todo:
        flops_per_image = count_flops(model, schedule, guidance, items[0], size, run.negative_prompt)

    stats, written, sampled, held = CallStats(), 0, 0, 0
    for b in tqdm(todo, desc=f"generate {shard}/{n_shards}", unit="batch", disable=run.no_progress):
        with try_lock(run_dir / ".locks" / f"batch{b:06d}.lock") as held_here:
            if not held_here:  # another live process is sampling this batch
                held += len(batches[b])
                continue
            if all(done(it.index) for it in batches[b]):
                continue  # finished by another process since the scan
            tomesd.reseed(model.denoiser, reduction_seed + b)
            images = to_uint8(sample_batch(model, batches[b], schedule, guidance, run.seed + b, stats, size,
                                           run.negative_prompt))
            sampled += len(batches[b])  # a partly finished batch is sampled whole
            for row, (it, img) in enumerate(zip(batches[b], images)):
                if done(it.index):
                    continue  # finished by an earlier, interrupted run: never rewritten
                record = {**asdict(it), "batch_index": b, "row": row, "seed": run.seed + b,
                          "reduction_seed": reduction_seed + b, "fingerprint": fingerprint,
                          "height": size.height, "width": size.width,
                          **{k: settings[k] for k in ("model", "sampler", "steps", "guidance", "method", "reduction",
                                                       "reduction_options", "image_size", "dtype")}}
                if model.video:  # frames + GIF in <index>/, whole, then the record listing them
                    write_video_item(images_dir / f"{it.index:06d}", video_files(img, run.fps),
                                     images_dir / f"{it.index:06d}.json",
                                     {**record, "folder": f"{it.index:06d}", "num_frames": len(img), "fps": run.fps})
                else:
                    _write_image(images_dir, it.index, img, record)
                written += 1

    wall = time.perf_counter() - wall_start
    calls_per_image = schedule.steps
    row = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "run_dir": str(run_dir), "model": model.name,
        "kind": model.kind, "method": settings["method"], "reduction": settings["reduction"], "sampler": sampler,
        "steps": run.steps, "guidance": guidance, "seed": run.seed, "batch_size": run.batch_size,
        "dtype": dtype_name, "device": str(device), "attention": attention, "image_size": model.image_size,
        "output_size": size.label,
        "shard": f"{shard}/{n_shards}", "items": len(items), "images_written": written,
        "images_skipped": sum(len(batches[b]) for b in mine) - sum(len(batches[b]) for b in todo),
        "calls": stats.calls, "calls_per_image": calls_per_image,
        "rows_per_call_per_image": 2 if guidance != 1.0 else 1,
        "model_time_s": round(stats.seconds, 4), "wall_time_s": round(wall, 3),
        "images_sampled": sampled, "images_held_elsewhere": held, "fingerprint": fingerprint,
        "model_time_per_image_s": round(stats.seconds / sampled, 5) if sampled else "",
        "wall_time_per_image_s": round(wall / sampled, 5) if sampled else "",
        "flops_per_image": f"{flops_per_image:.4g}" if flops_per_image else "",
        "flops_per_call_per_image": f"{flops_per_image / calls_per_image:.4g}" if flops_per_image else "",
        "tf32": bool(run.tf32),
    }
    append_csv_row(run.summary_path, row)
    LOG.info("wrote %d images to %s (%.1fs)", written, images_dir, wall)
    return row
