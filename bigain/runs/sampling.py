"""Sampling a batch of generation items with a loaded model: conditions, seeded noise, the sampler, PNG bytes,
and the denoiser FLOPs of one image (the pieces :func:`bigain.runs.generation.run_generation` chains)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from bigain.data import Item
from bigain.diffusion import SAMPLERS, CallStats, Schedule, guided_eps_fn, initial_noise
from bigain.models import OutputSize
from bigain.storage import png_bytes
from eval.flops import count_flops as count_flops_of

__all__ = ["DEFAULT_STEPS", "DEFAULTS_BY_KIND", "check_items_fit", "conditions", "count_flops", "png_bytes",
           "sample_batch", "to_uint8"]

DEFAULT_STEPS = 50
# kind -> (sampler, guidance) of the published setup
DEFAULTS_BY_KIND = {"sd": ("euler", 7.5), "dit": ("ddim", 4.0),
                    # rectified flow: SD3 pipelines' CFG 7.0; Flux without CFG (dev: distilled guidance 3.5 inside)
                    "sd3": ("flow", 7.0), "flux": ("flow-linear", 1.0),
                    # FLUX.2-dev: distilled guidance 4.0 inside, no CFG; Qwen-Image: true CFG 4.0; both linear sigmas
                    "flux2": ("flow-linear", 1.0), "qwen_image": ("flow-linear", 4.0),
                    # Wan 2.x: CFG 5.0 against the empty negative prompt, flow-matching Euler at the scheduler's shift
                    "wan": ("flow", 5.0)}


def conditions(model: Any, batch: Sequence[Item], guidance: float,
               negative_prompt: Optional[str] = None) -> tuple[dict, Optional[dict]]:
    """(cond, uncond) rows for a batch: prompts for text models, class ids otherwise; uncond (guidance != 1 only) is
    the null condition (empty prompt, null class) or the encoded ``negative_prompt``."""
    n = len(batch)
    if model.conditioning == "text":
        cond = model.condition(prompts=[it.prompt for it in batch])
    else:
        cond = model.condition(class_ids=[it.label for it in batch])
    if guidance == 1.0:
        return cond, None
    if negative_prompt is not None:
        return cond, model.condition(prompts=[negative_prompt] * n)
    return cond, model.null_condition(n)


def check_items_fit(model: Any, items: Sequence[Item]) -> None:
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
        bad = sorted({it.label for it in items
                      if model.num_classes is not None and not 0 <= it.label < model.num_classes})
        if bad:
            raise ValueError(f"class ids {bad[:5]} outside [0, {model.num_classes}) for {model.name}")


def sample_batch(model: Any, batch: Sequence[Item], schedule: Schedule, guidance: float, seed: int,
                 stats: Optional[CallStats] = None, size: Optional[OutputSize] = None,
                 negative_prompt: Optional[str] = None) -> torch.Tensor:
    """Images (B, C, H, W) or videos (B, C, F, H, W) in [-1, 1] on CPU for one batch, from noise seeded with ``seed``,
    at ``size`` (None: the model's native output), guided away from ``negative_prompt`` (None: the null condition)."""
    cond, uncond = conditions(model, batch, guidance, negative_prompt)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(batch), *model.latent_shape(size or model.native_output))
    x = initial_noise(shape, schedule, gen, model.device, torch.float32)
    eps_fn = guided_eps_fn(model, cond, uncond, guidance, stats)
    x = SAMPLERS[schedule.name](eps_fn, x, schedule, generator=gen)
    return model.decode_latents(x).float().cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C); videos (B, C, F, H, W) -> (B, F, H, W, C)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(1, -1).numpy()


def count_flops(model: Any, schedule: Schedule, guidance: float, item: Item,
                size: Optional[OutputSize] = None, negative_prompt: Optional[str] = None) -> float:
    """Denoiser FLOPs to generate one image or video of ``size`` (None: native; every step, guidance rows included;
    no text encoder or VAE), counted by `eval.flops.count_flops` (CPU SDPA included)."""
    cond, uncond = conditions(model, [item], guidance, negative_prompt)
    x = initial_noise((1, *model.latent_shape(size or model.native_output)), schedule,
                      torch.Generator().manual_seed(0), model.device)
    sample = SAMPLERS[schedule.name]
    return float(count_flops_of(lambda: sample(guided_eps_fn(model, cond, uncond, guidance), x, schedule)).total)
