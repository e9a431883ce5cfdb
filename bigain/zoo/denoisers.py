"""Tiny diffusers denoisers built from configs (offline, CPU, seeded) for engine tests."""
from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

CROSS_DIM = 16


def tiny_sd_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD-style: attention at full latent resolution (ds=1) and at ds=2."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL-style: no attention at full resolution (first attention at ds=2)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_DIM, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def sd2_sized_unet() -> UNet2DConditionModel:
    """SD 2 architecture (block layout of stabilityai/stable-diffusion-2-base) with tiny widths."""
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM, attention_head_dim=4, norm_num_groups=4,
    ).eval()


def tiny_dit(seed: int = 0, num_layers: int = 2) -> DiTTransformer2DModel:
    """DiT with adaLN-zero blocks, patch 2, 4 latent channels, learned sigma (8 output channels)."""
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=num_layers,
        sample_size=16, patch_size=2, num_embeds_ada_norm=10,
    ).eval()
    randomize_zero_init(model)
    return model


def tiny_pixart(seed: int = 0) -> PixArtTransformer2DModel:
    """PixArt-alpha style (ada_norm_single blocks, cross-attention to text)."""
    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=16, patch_size=2, cross_attention_dim=16, caption_channels=16,
        norm_num_groups=4,
    ).eval()
    randomize_zero_init(model)
    return model


def randomize_zero_init(model: torch.nn.Module) -> None:
    """DiT/PixArt zero-init their gates and output; perturb every parameter so blocks matter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def unet_inputs(batch: int = 2, size: tuple[int, int] = (16, 16), seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, *size, generator=g),
        "timestep": torch.linspace(999, 1, batch).round(),
        "encoder_hidden_states": torch.randn(batch, 5, CROSS_DIM, generator=g),
    }


def dit_inputs(batch: int = 2, size: tuple[int, int] = (16, 16), seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, *size, generator=g),
        "timestep": torch.linspace(999, 1, batch).round().long(),
        "class_labels": torch.arange(batch) % 10,
    }


def pixart_inputs(batch: int = 2, size: tuple[int, int] = (16, 16), seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, *size, generator=g),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
        "timestep": torch.linspace(999, 1, batch).round().long(),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


# Every method at a setting that reduces, and at its idle setting (ratio 0 / df 1), for backbone tests.
METHODS = {
    "tome": {"ratio": 0.5},
    "bigain_tm": {"ratio": 0.5},
    "todo": {"df": 2},
    "bigain_td": {"alpha": 0.5},
    "sito": {"ratio": 0.5},
}
IDLE = {"tome": {"ratio": 0.0}, "bigain_tm": {"ratio": 0.0}, "todo": {"df": 1}, "bigain_td": {"df": 1},
        "sito": {"ratio": 0.0}}
# Settings whose result depends on each sample's timestep (gates, alpha schedules), for per-sample tests.
PER_SAMPLE = {
    "tome": {"ratio": 0.6, "use_rand": False},
    "bigain_tm": {"ratio": 0.6},
    "todo": {"df": 2, "stop_threshold": 0.3},
    "bigain_td": {"alpha_schedule": True, "stop_threshold": 0.2},
    "sito": {"ratio": 0.6},
}
