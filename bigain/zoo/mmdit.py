"""Tiny SD3 / SD3.5 / Flux transformers built from configs (offline, CPU, seeded) and their inputs."""
from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

TEXT_TOKENS, TEXT_DIM, POOLED_DIM = 5, 16, 8


def tiny_sd3(seed: int = 0, num_layers: int = 2, dual: bool = False) -> SD3Transformer2DModel:
    """SD3 (dual=False) or SD3.5 (dual attention in block 0, RMS q/k norm): 16x16 latents, patch 2."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16,
        pooled_projection_dim=POOLED_DIM,
        out_channels=4, pos_embed_max_size=16, dual_attention_layers=(0,) if dual else (),
        qk_norm="rms_norm" if dual else None,
    ).eval()


def tiny_flux(seed: int = 0, num_layers: int = 2, num_single_layers: int = 2,
              guidance: bool = False) -> FluxTransformer2DModel:
    """Flux with 2 double- and 2 single-stream blocks, 3-axis rotary embedding (2+2+4 = head dim 8)."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
        guidance_embeds=guidance, axes_dims_rope=(2, 2, 4),
    ).eval()


def sd3_inputs(batch: int = 2, size: tuple[int, int] = (16, 16), seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, *size, generator=g),
        "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g),
        "pooled_projections": torch.randn(batch, POOLED_DIM, generator=g),
        "timestep": torch.linspace(950, 50, batch),
    }


def flux_image_ids(height: int, width: int) -> torch.Tensor:
    """Row-major (row, column) ids as Flux pipelines make them: (H*W, 3) with axis 0 = 0."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(-1, 3)


def flux_inputs(batch: int = 2, size: tuple[int, int] = (8, 8), seed: int = 1) -> dict:
    """`size` is the packed token grid (a 16x16 latent packed 2x2 is 8x8)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, size[0] * size[1], 8, generator=g),
        "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g),
        "pooled_projections": torch.randn(batch, POOLED_DIM, generator=g),
        "timestep": torch.linspace(0.95, 0.05, batch),
        "img_ids": flux_image_ids(*size),
        "txt_ids": torch.zeros(TEXT_TOKENS, 3),
    }


def image_tokens(name: str, inputs: dict) -> int:
    """Image tokens of a call (SD3: latent / patch 2; Flux: the packed sequence)."""
    if name == "flux":
        return inputs["hidden_states"].shape[1]
    h, w = inputs["hidden_states"].shape[-2:]
    return (h // 2) * (w // 2)
