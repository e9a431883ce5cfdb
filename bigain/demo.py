"""Engine demo: patch small diffusers models built from configs and show what each method does.

Runs offline in seconds: for an SD-style U-Net, an SDXL-style U-Net, a DiT and a PixArt
transformer (random weights, built from configs), print the patch report of every method and
how far its output moves from the unpatched baseline.
"""
from __future__ import annotations

import argparse

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

import tomesd
from bigain.cli import nonneg_int
from bigain.cli import run_cli
from bigain.reduction import PAPER_SETTINGS

DEMO_METHODS = {method: options for method, options in PAPER_SETTINGS if method != "none"}  # the paper's settings


def demo_models(seed: int = 0) -> dict[str, tuple[torch.nn.Module, dict, dict]]:
    """Name -> (model, inputs, placement) for four small random-weight backbones."""
    torch.manual_seed(seed)
    unet_kw = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, cross_attention_dim=32,
                   attention_head_dim=8, norm_num_groups=8)
    sd = UNet2DConditionModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **unet_kw)
    sdxl = UNet2DConditionModel(block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **unet_kw)
    dit = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
                                num_layers=6, sample_size=32, patch_size=2, num_embeds_ada_norm=10)
    pixart = PixArtTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
                                      num_layers=4, sample_size=32, patch_size=2, cross_attention_dim=64,
                                      caption_channels=32, norm_num_groups=8)
    for model in (dit, pixart):  # DiT-style zero init would make every block an identity
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(2, 4, 32, 32, generator=g)
    t = torch.tensor([800, 300])
    text = torch.randn(2, 8, 32, generator=g)
    return {
        "SD-style U-Net": (sd, {"sample": latent, "timestep": t, "encoder_hidden_states": text}, {}),
        "SDXL-style U-Net": (sdxl, {"sample": latent, "timestep": t, "encoder_hidden_states": text}, {"max_downsample": 2}),
        "DiT": (dit, {"hidden_states": latent, "timestep": t, "class_labels": torch.tensor([1, 2])}, {}),
        "PixArt": (pixart, {"hidden_states": latent, "timestep": t, "encoder_hidden_states": torch.randn(2, 8, 32, generator=g),
                            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}, {}),
    }


def relative_change(out: torch.Tensor, base: torch.Tensor) -> float:
    """||out - base|| / ||base||."""
    return float((out - base).norm() / base.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bigain.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=nonneg_int, default=0)
    args = parser.parse_args(argv)
    print("Random-weight models built from configs (a code-path demo, not a quality measurement).\n")
    for name, (model, inputs, placement) in demo_models(args.seed).items():
        model.eval()
        with torch.no_grad():
            base = model(**inputs).sample
            print(f"== {name}")
            for method, options in DEMO_METHODS.items():
                with tomesd.patched(model, method=method, seed=args.seed, **options, **placement) as report:
                    out = model(**inputs).sample
                print(f"{report}\n  relative output change vs baseline: {relative_change(out, base):.4f}")
            assert torch.equal(model(**inputs).sample, base), "remove_patch must restore the model exactly"
        print()


if __name__ == "__main__":
    run_cli(main)
