"""The demo's four small random-weight backbones (`python -m bigain.demo`), built from configs."""
from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel


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
        "SDXL-style U-Net": (sdxl, {"sample": latent, "timestep": t, "encoder_hidden_states": text},
                             {"max_downsample": 2}),
        "DiT": (dit, {"hidden_states": latent, "timestep": t, "class_labels": torch.tensor([1, 2])}, {}),
        "PixArt": (pixart,
                   {"hidden_states": latent, "timestep": t, "encoder_hidden_states": torch.randn(2, 8, 32, generator=g),
                            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}, {}),
    }
