"""How often SiTo's kept set depends on the precision of its similarity computation (a measurement on the
shipped testbed models).

SiTo: the official code computes the similarity graph, scores and recovery argmax in fp16 whatever
the model dtype; this engine uses the model dtype (fp32 here) with fp32 degree sums. On real block
inputs of the testbed U-Net (32x32 = 1,024-token level) and DiT (16x16), for test images noised at
several timesteps, this compares the pruned sets planned from the fp32 metric and from the same
metric in fp16 (same seeded noise).

    python -m eval.speed.sito_precision
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bigain.testbed import ASSETS_DIR
from tomesd.reducers.base import ReductionContext
from tomesd.reducers.sito import SiTo, SiToOptions
from tomesd.rng import CounterRandom

TESTBED = Path(ASSETS_DIR)
TIMESTEPS = (100, 300, 500, 700, 900)


def test_images(count: int) -> torch.Tensor:
    """First `count` shipped test images, padded to 32x32, in [-1, 1], (count, 1, 32, 32)."""
    images = np.load(TESTBED / "fmnist_test_subset.npz")["images"][:count]
    x = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
    return F.pad(x, (2, 2, 2, 2), value=-1.0)


def noised(x0: torch.Tensor, t: int, folder: str) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps under the model's own scheduler config (seeded eps)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(TESTBED / folder / "scheduler")
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
    return scheduler.add_noise(x0, eps, torch.tensor([t]))


def first_block_metrics(kind: str, x0: torch.Tensor, labels: torch.Tensor, t: int,
                        share_noise: bool = False) -> torch.Tensor:
    """The first transformer block's metric (U-Net: block input; DiT: attention input) for each row.

    `share_noise`: every row gets the first row's noisy input (the classifier's class rows).
    """
    seen = []
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        model = UNet2DConditionModel.from_pretrained(TESTBED / "unet-fmnist" / "unet").eval()
        emb = load_file(TESTBED / "unet-fmnist" / "class_embeddings.safetensors")["embeddings"]
        block = next(m for n, m in model.named_modules() if n.endswith("transformer_blocks.0"))
        handle = block.register_forward_pre_hook(
            lambda m, a, k: seen.append(k.get("hidden_states", a[0] if a else None)),
                                                 with_kwargs=True)
        call = lambda x: model(x, torch.full((x.shape[0],), t), encoder_hidden_states=emb[labels])  # noqa: E731
        folder = "unet-fmnist"
    else:
        from diffusers import DiTTransformer2DModel

        model = DiTTransformer2DModel.from_pretrained(TESTBED / "dit-fmnist" / "transformer").eval()
        handle = model.transformer_blocks[0].attn1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        call = lambda x: model(x, timestep=torch.full((x.shape[0],), t), class_labels=labels)  # noqa: E731
        folder = "dit-fmnist"
    xt = noised(x0[:1], t, folder).expand_as(x0) if share_noise else noised(x0, t, folder)
    with torch.no_grad():
        call(xt.contiguous())
    handle.remove()
    return seen[0]


def pruned_mask(metric: torch.Tensor, side: int, ratio: float = 0.7) -> torch.Tensor:
    """(B, N) bool: tokens SiTo prunes (same seeded noise for every call)."""
    plan = SiTo.plan(ReductionContext(metric, side, side, None, CounterRandom(0)), SiToOptions(ratio=ratio))
    ids = torch.arange(metric.shape[1], dtype=torch.float32).view(1, -1, 1).expand(metric.shape[0], -1, 1)
    kept = plan.reduce(ids.contiguous())[..., 0].long()
    mask = torch.ones(metric.shape[:2], dtype=torch.bool)
    return mask.scatter_(1, kept, False)


def main() -> dict:
    torch.set_num_threads(1)
    x0 = test_images(16)
    results = {}
    for kind, side in (("unet", 32), ("dit", 16)):
        flips, differing = [], 0
        for t in TIMESTEPS:
            metric = first_block_metrics(kind, x0, torch.arange(16) % 10, t)
            a, b = pruned_mask(metric.float(), side), pruned_mask(metric.half(), side)
            flips.append((a != b).float().mean().item())
            differing += int((a != b).any(-1).sum())
        results[kind] = {"tokens": side * side, "plans": 16 * len(TIMESTEPS), "plans_differing": differing,
                         "mean_token_flip_share": float(np.mean(flips)), "max_token_flip_share": float(np.max(flips))}
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
