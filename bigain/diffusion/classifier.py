"""Diffusion classifier core (Li et al., ICCV 2023), adaptive protocol of docs/protocol.md §1, without the CLI.

Timestep grid and staged elimination (:class:`StageSchedule`), per-image noise (:func:`image_seed`,
:func:`make_noise`), per-sample errors, :func:`classify_image` for one encoded image, and the
in-memory API: ``ctx = make_context(model, load_prompts("fmnist"), StageSchedule())`` then
``classify_many(ctx, images, labels)`` -> records. The command line (run folders, sharding,
merging, summary rows) is `bigain.classify` over `bigain.runs.classification`.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import tomesd
from bigain.data import match_channels
from bigain.storage import ImageRecord

__all__ = ["LOSSES", "StageSchedule", "forward_process", "ClassifyResult", "RunContext", "classify_image",
           "classify_dataset_image",
           "classify_many", "make_context", "image_seed", "make_noise", "per_sample_error"]

LOSSES = ("l2", "l1", "huber")


# ----------------------------------------------------------------------------- protocol pieces


@dataclass(frozen=True)
class StageSchedule:
    """Timestep grid and staged elimination: stage s scores n_samples[s] grid points and keeps to_keep[s] classes."""

    n_samples: tuple[int, ...] = (5, 20)
    to_keep: tuple[int, ...] = (5, 1)
    num_train_timesteps: int = 1000
    n_trials: int = 1

    @property
    def num_slots(self) -> int:
        """M = max(n_samples): size of the timestep grid."""
        return max(self.n_samples)

    def grid(self) -> list[int]:
        """range(T//M//2, T, T//M) truncated to M (M=20: 25, 75, ..., 975)."""
        T, M = self.num_train_timesteps, self.num_slots
        return list(range(T // M // 2, T, T // M))[:M]

    def stage_slots(self) -> list[list[int]]:
        """Grid indices newly evaluated at each stage: grid[(M//n)//2 :: M//n][:n] minus those already done."""
        M, done, stages = self.num_slots, set(), []
        for n in self.n_samples:
            step = M // n
            new = [i for i in list(range(step // 2, M, step))[:n] if i not in done]
            done.update(new)
            stages.append(new)
        return stages

    def calls_per_image(self, num_classes: int) -> int:
        """Denoiser evaluations per image: sum over stages of classes alive x new timesteps x trials."""
        alive, total = num_classes, 0
        for new, keep in zip(self.stage_slots(), self.to_keep):
            total += alive * len(new) * self.n_trials
            alive = min(alive, keep)
        return total

    def validate(self, num_classes: int) -> None:
        """ValueError for inconsistent lists or more classes kept than exist."""
        ns, tk = list(self.n_samples), list(self.to_keep)
        if not ns or len(ns) != len(tk):
            raise ValueError(f"--n_samples and --to_keep need the same (non-zero) length; got {ns} and {tk}")
        if any(n < 1 for n in ns) or any(k < 1 for k in tk):
            raise ValueError(f"--n_samples and --to_keep must be positive; got {ns} and {tk}")
        if tk[-1] != 1:
            raise ValueError(f"the last --to_keep must be 1 (one predicted class); got {tk}")
        if any(b > a for a, b in zip(tk, tk[1:])):
            raise ValueError(f"--to_keep must not increase from stage to stage; got {tk}")
        if max(ns) > self.num_train_timesteps:
            raise ValueError(f"--n_samples cannot exceed T={self.num_train_timesteps}; got {ns}")
        if self.n_trials < 1:
            raise ValueError(f"--n_trials must be >= 1; got {self.n_trials}")
        if tk[0] > num_classes:
            raise ValueError(f"--to_keep {tk} keeps more classes than the dataset has ({num_classes})")


def image_seed(seed: int, index: int) -> int:
    """Seed of an image's noise, a function of (seed, dataset index) only: order/shard/resume independent."""
    digest = hashlib.sha256(f"bigain-classify:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def make_noise(shape: Sequence[int], num_slots: int, n_trials: int, seed: int) -> torch.Tensor:
    """(num_slots, n_trials, *shape) standard normal noise from a CPU generator (device independent)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((num_slots, n_trials, *shape), generator=gen, dtype=torch.float32)


def per_sample_error(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Error of each sample, averaged over C, H, W: l2 (MSE), l1 or huber (delta 1)."""
    pred, target = pred.float(), target.float()
    if loss == "l2":
        err = F.mse_loss(pred, target, reduction="none")
    elif loss == "l1":
        err = F.l1_loss(pred, target, reduction="none")
    elif loss == "huber":
        err = F.huber_loss(pred, target, reduction="none", delta=1.0)
    else:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    return err.flatten(1).mean(1)


def forward_process(model: Any, latent_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per training timestep: the scales of x0 and of the noise in x_t, and whether the target is the velocity.

    DDPM-trained models (SD, DiT, testbed): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, target eps (Li et al. 2023).
    Rectified-flow models (SD3, Flux; `model.flow_matching`): x_t = (1 - sigma_t) x0 + sigma_t eps with the
    scheduler's sigma_t (see bigain.models.flow), target eps - x0 -- each model is scored by its own training
    loss. The published diffusion classifiers only ran on DDPM models; this extension to SD3/Flux is ours.
    """
    if getattr(model, "flow_matching", False):
        sigma = model.flow_sigmas(latent_shape).to(torch.float64)
        return 1 - sigma, sigma, True
    acp = model.alphas_cumprod.to(torch.float64)
    return acp.sqrt(), (1 - acp).sqrt(), False


@dataclass
class ClassifyResult:
    """Output of classify_image: errors[row, slot, trial] (NaN = not evaluated) and the winning row."""

    errors: np.ndarray
    pred_row: int
    calls: int
    model_time_s: float
    survivors: list[list[int]]  # rows kept after each stage


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def classify_image(model: Any, x0: torch.Tensor, cond: dict[str, torch.Tensor], schedule: StageSchedule,
                   noise: torch.Tensor, *, batch_size: int = 32, loss: str = "l2",
                   on_batch: Callable[[int], None] | None = None) -> ClassifyResult:
    """Adaptive diffusion classification of one encoded image.

    `model` provides ``predict_eps(x_t, t, cond)``, ``alphas_cumprod``, ``select(cond, rows)``
    and ``device`` (a :class:`bigain.models.LoadedModel`), or for rectified-flow models
    ``predict_target`` and ``flow_sigmas`` (see :func:`forward_process`); `x0` is (1, C, H, W) or (C, H, W);
    `cond` has one row per candidate class; `noise` is (M, n_trials, C, H, W) (see make_noise).
    All (class, timestep, trial) triples of a stage are flattened and run `batch_size` at a time,
    so a batch mixes timesteps and classes.
    """
    device = model.device
    x0 = x0.reshape(1, *x0.shape[-3:]).to(device, torch.float32)
    num_rows = next(iter(cond.values())).shape[0]
    grid = torch.tensor(schedule.grid(), dtype=torch.long)
    scale_x0, scale_eps, velocity = forward_process(model, x0.shape[1:])
    scale_x0, scale_eps = scale_x0.float().to(device), scale_eps.float().to(device)
    noise = noise.to(device, torch.float32)
    errors = np.full((num_rows, schedule.num_slots, schedule.n_trials), np.nan, dtype=np.float32)
    alive = list(range(num_rows))
    calls, model_time, survivors = 0, 0.0, []
    for new_slots, keep in zip(schedule.stage_slots(), schedule.to_keep):
        triples = [(r, s, k) for r in alive for s in new_slots for k in range(schedule.n_trials)]
        for start in range(0, len(triples), batch_size):
            chunk = triples[start : start + batch_size]
            rows = torch.tensor([c[0] for c in chunk], dtype=torch.long)
            slots = torch.tensor([c[1] for c in chunk], dtype=torch.long)
            trials = torch.tensor([c[2] for c in chunk], dtype=torch.long)
            t = grid[slots].to(device)
            eps = noise[slots.to(device), trials.to(device)]
            x_t = scale_x0[t].view(-1, 1, 1, 1) * x0 + scale_eps[t].view(-1, 1, 1, 1) * eps
            batch_cond = model.select(cond, rows)
            _sync(device)
            tic = time.perf_counter()
            pred = model.predict_target(x_t, t, batch_cond) if velocity else model.predict_eps(x_t, t, batch_cond)
            _sync(device)
            model_time += time.perf_counter() - tic
            err = per_sample_error(pred, eps - x0 if velocity else eps, loss).cpu().numpy()
            errors[rows.numpy(), slots.numpy(), trials.numpy()] = err
            calls += len(chunk)
            if on_batch is not None:
                on_batch(len(chunk))
        scores = _row_scores(errors, alive)
        order = np.argsort(scores, kind="stable")
        alive = sorted(alive[i] for i in order[: min(keep, len(alive))])
        survivors.append(list(alive))
    best = alive[int(np.argmin(_row_scores(errors, alive)))]
    return ClassifyResult(errors=errors, pred_row=best, calls=calls, model_time_s=model_time, survivors=survivors)


def _row_scores(errors: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Mean of all errors evaluated so far for each of `rows`."""
    sub = errors[list(rows)].reshape(len(rows), -1)
    mask = np.isfinite(sub)
    return np.where(mask, sub, 0).sum(1) / np.maximum(mask.sum(1), 1)


# ----------------------------------------------------------------------------- in-memory runs


@dataclass
class RunContext:
    """What every image of a run shares: model, class conditions (encoded once), protocol settings."""

    model: Any
    cond: dict[str, torch.Tensor]
    classidx: np.ndarray  # classidx of each condition row
    schedule: StageSchedule
    seed: int = 0
    reduction_seed: int | None = None  # reducer generator seed base (default: seed); None-patched models ignore it
    batch_size: int = 32
    loss: str = "l2"
    patched: bool = False
    fingerprint: str = ""


def classify_dataset_image(ctx: RunContext, index: int, image: torch.Tensor, label: Any) -> ImageRecord:
    """Classify dataset image `index` ((C, H, W) in [-1, 1]); depends only on (image, index, settings).

    The noise comes from image_seed(seed, index) and the reducer is reseeded with
    reduction_seed + index, so the record is the same alone, in any order, shard or resume.
    """
    tic = time.perf_counter()
    model = ctx.model
    if ctx.patched:
        tomesd.reseed(model.denoiser, (ctx.seed if ctx.reduction_seed is None else ctx.reduction_seed) + int(index))
    image = match_channels(image.reshape(1, *image.shape[-3:]), model.image_channels)
    x0 = model.encode_images(image).float()
    seed = image_seed(ctx.seed, index)
    noise = make_noise(x0.shape[1:], ctx.schedule.num_slots, ctx.schedule.n_trials, seed)
    res = classify_image(model, x0, ctx.cond, ctx.schedule, noise, batch_size=ctx.batch_size, loss=ctx.loss)
    if isinstance(label, (list, tuple)) or (torch.is_tensor(label) and label.ndim > 0):
        labels = [int(v) for v in label]
    else:
        labels = [int(label)]
    return ImageRecord(index=int(index), labels=labels, pred=int(ctx.classidx[res.pred_row]), errors=res.errors,
                       timesteps=np.asarray(ctx.schedule.grid()), classidx=ctx.classidx, calls=res.calls,
                       model_time_s=res.model_time_s, wall_time_s=time.perf_counter() - tic,
                       fingerprint=ctx.fingerprint, meta={"survivors": res.survivors, "seed": seed})


def make_context(model: Any, table: Any, schedule: StageSchedule | None = None, *, seed: int = 0,
                 reduction_seed: int | None = None, batch_size: int = 32, loss: str = "l2") -> RunContext:
    """RunContext for in-memory use (e.g. the testbed benchmark): encodes the class table's conditions once.

    `table` is a bigain.data.datasets.ClassTable (e.g. ``load_prompts("fmnist")``); whether the
    denoiser is patched is read from tomesd, so patch it (or not) before calling.
    """
    schedule = schedule or StageSchedule()
    schedule.validate(len(table))
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    cond = model.condition(prompts=list(table.prompts), class_ids=list(table.classidx))
    return RunContext(model=model, cond=cond, classidx=np.asarray(table.classidx, dtype=np.int64), schedule=schedule,
                      seed=seed, reduction_seed=reduction_seed, batch_size=batch_size, loss=loss,
                      patched=tomesd.get_patch(model.denoiser) is not None)


def classify_many(ctx: RunContext, images: torch.Tensor | Sequence[torch.Tensor], labels: Sequence[Any],
                  indices: Sequence[int] | None = None, progress: bool = True) -> list[ImageRecord]:
    """Classify in-memory images ([-1, 1], (C, H, W) each); `indices` (default 0..N-1) seed each image's noise."""
    indices = list(range(len(labels))) if indices is None else list(indices)
    records, correct = [], 0
    bar = tqdm(zip(indices, images, labels), total=len(indices), desc="classify", unit="img", disable=not progress)
    for index, image, label in bar:
        records.append(classify_dataset_image(ctx, index, image, label))
        correct += int(records[-1].correct)
        bar.set_postfix(acc=f"{correct / len(records):.3f}")
    return records
