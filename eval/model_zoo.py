"""Full-size denoiser architectures from their public configs, with random weights (no download).

Timing and FLOP counts depend only on the architecture, so the benchmark builds each model from
a config dict that matches the published `config.json` of its checkpoint and never loads
weights. Every entry can be shrunk for CPU runs (`num_layers` for DiT/PixArt, `width` scales
U-Net channels) and tiny variants exist for tests; the shrinking is recorded in the spec name.

    spec = get_spec("sd2")                      # SD 2 base U-Net, 512 px default
    model = build_model(spec, dtype=torch.float16, device="cuda")
    inputs = make_inputs(spec, batch=2, resolution=1024)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

__all__ = ["ModelSpec", "MODEL_SPECS", "get_spec", "list_models", "build_model", "make_inputs", "shrink"]

VAE_FACTOR = 8  # pixels per latent cell (all SD/DiT/PixArt VAEs here)

# --- public configs (diffusers config.json of each checkpoint, defaults spelt out) ----------

SD15_UNET = {  # runwayml/stable-diffusion-v1-5, unet/config.json
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5,
    "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "center_input_sample": False,
}

SD2_BASE_UNET = {  # stabilityai/stable-diffusion-2-base, unet/config.json (head counts 5/10/20/20, dim 64)
    **SD15_UNET,
    "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True,
    "upcast_attention": False, "dual_cross_attention": False,
}

SDXL_UNET = {  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
    "upcast_attention": False,
}

DIT_XL_2 = {  # facebook/DiT-XL-2-256 (sample_size 32) and -512 (64), transformer/config.json
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
    "num_layers": 28, "sample_size": 32, "patch_size": 2, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False,
    "norm_eps": 1e-5, "attention_bias": True, "upcast_attention": False,
}

PIXART_ALPHA = {  # PixArt-alpha/PixArt-XL-2-512x512 (sample_size 64) and -1024-MS (128), transformer/config.json
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
    "num_layers": 28, "sample_size": 64, "patch_size": 2, "cross_attention_dim": 1152,
    "caption_channels": 4096, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6,
    "attention_bias": True, "upcast_attention": False, "use_additional_conditions": False,
}


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture: diffusers class, config, default resolution and conditioning sizes."""

    name: str
    kind: str  # "unet", "sdxl", "dit", "pixart"
    config: dict[str, Any]
    resolution: int  # default image side in pixels
    text_tokens: int = 77  # conditioning sequence length (U-Nets, PixArt)
    note: str = ""
    description: str = field(default="", compare=False)

    @property
    def family(self) -> str:
        return "unet" if self.kind in ("unet", "sdxl") else "transformer"

    @property
    def latent_channels(self) -> int:
        return int(self.config["in_channels"])


MODEL_SPECS: dict[str, ModelSpec] = {
    "sd15": ModelSpec("sd15", "unet", SD15_UNET, 512, description="SD 1.5 U-Net (860M)"),
    "sd2": ModelSpec("sd2", "unet", SD2_BASE_UNET, 512, description="SD 2 base U-Net (865M)"),
    "sdxl": ModelSpec("sdxl", "sdxl", SDXL_UNET, 1024, description="SDXL base U-Net (2.6B)"),
    "dit-xl-2-256": ModelSpec("dit-xl-2-256", "dit", DIT_XL_2, 256, description="DiT-XL/2 256 (675M)"),
    "dit-xl-2-512": ModelSpec("dit-xl-2-512", "dit", {**DIT_XL_2, "sample_size": 64}, 512,
                              description="DiT-XL/2 512 (675M)"),
    "pixart-512": ModelSpec("pixart-512", "pixart", PIXART_ALPHA, 512, text_tokens=120,
                            description="PixArt-alpha XL/2 512 (611M)"),
    "pixart-1024": ModelSpec("pixart-1024", "pixart",
                             {**PIXART_ALPHA, "sample_size": 128, "use_additional_conditions": True}, 1024,
                             text_tokens=120, description="PixArt-alpha XL/2 1024-MS (611M)"),
    # Tiny variants (tests): same classes and block layouts, a few channels.
    "tiny-sd": ModelSpec("tiny-sd", "unet", {
        **SD2_BASE_UNET, "sample_size": 16, "block_out_channels": (16, 32),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "attention_head_dim": (2, 4), "cross_attention_dim": 16, "norm_num_groups": 8, "layers_per_block": 1}, 128,
        text_tokens=5, description="tiny SD 2 style U-Net (attention at full resolution)"),
    "tiny-sdxl": ModelSpec("tiny-sdxl", "sdxl", {
        **SDXL_UNET, "sample_size": 16, "block_out_channels": (16, 32, 32), "transformer_layers_per_block": (1, 1, 2),
        "attention_head_dim": (2, 4, 4), "cross_attention_dim": 16, "addition_time_embed_dim": 4,
        "projection_class_embeddings_input_dim": 16 + 6 * 4, "norm_num_groups": 8, "layers_per_block": 1}, 128,
        text_tokens=5, description="tiny SDXL layout"),
    "tiny-dit": ModelSpec("tiny-dit", "dit", {
        **DIT_XL_2, "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "sample_size": 16,
        "num_embeds_ada_norm": 10}, 128, description="tiny DiT"),
    "tiny-pixart": ModelSpec("tiny-pixart", "pixart", {
        **PIXART_ALPHA, "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "sample_size": 16,
        "cross_attention_dim": 16, "caption_channels": 16}, 128, text_tokens=5, description="tiny PixArt"),
}


def list_models() -> list[str]:
    return list(MODEL_SPECS)


def shrink(spec: ModelSpec, num_layers: Optional[int] = None, width: Optional[float] = None) -> ModelSpec:
    """A reduced copy for CPU runs: fewer DiT/PixArt blocks, or U-Net channels scaled by `width`.

    U-Net head counts are kept (head dim scales with width) and GroupNorm groups are kept at 32
    when the scaled widths allow it, else halved until they divide every width.
    """
    config = copy.deepcopy(spec.config)
    name = spec.name
    if num_layers is not None:
        if spec.family != "transformer":
            raise ValueError("num_layers shrinks DiT/PixArt; use width for U-Nets")
        config["num_layers"] = int(num_layers)
        name += f"-L{num_layers}"
    if width is not None and width != 1:
        if spec.family != "unet":
            raise ValueError("width scales U-Net channels; use num_layers for DiT/PixArt")
        widths = tuple(int(round(c * width)) for c in config["block_out_channels"])
        groups = int(config.get("norm_num_groups", 32))
        while any(c % groups for c in widths):
            groups //= 2
        heads = config["attention_head_dim"]
        heads = heads if isinstance(heads, (tuple, list)) else (heads,) * len(widths)
        if any(c % h for c, h in zip(widths, heads)):
            raise ValueError(f"width {width} gives channels {widths} not divisible by head counts {heads}")
        config.update(block_out_channels=widths, norm_num_groups=groups)
        name += f"-w{width:g}"
    return replace(spec, name=name, config=config,
                   note=", ".join(filter(None, [spec.note, f"{num_layers} layers" if num_layers else "",
                                                f"widths x{width:g}" if width not in (None, 1) else ""])))


def get_spec(name: str, num_layers: Optional[int] = None, width: Optional[float] = None) -> ModelSpec:
    """Look up a named architecture (ValueError lists the known names), optionally shrunk."""
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; known: {list_models()}")
    spec = MODEL_SPECS[name]
    return shrink(spec, num_layers, width) if (num_layers is not None or width not in (None, 1)) else spec


def model_class(spec: ModelSpec) -> type:
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

    return {"unet": UNet2DConditionModel, "sdxl": UNet2DConditionModel, "dit": DiTTransformer2DModel,
            "pixart": PixArtTransformer2DModel}[spec.kind]


def build_model(spec: ModelSpec | str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                seed: int = 0) -> torch.nn.Module:
    """The architecture with seeded random weights, in eval mode, on `device` in `dtype`.

    DiT/PixArt zero-initialise their adaLN gates and output layer; every parameter gets small
    noise so that all blocks contribute (timing does not depend on it).
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class(spec)(**spec.config)
    if dtype != torch.float32:
        model = model.to(dtype=dtype)
    model = model.eval().requires_grad_(False)
    if spec.family == "transformer":
        gen = torch.Generator(device=device).manual_seed(seed)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * 0.02)
    return model


def latent_side(resolution: int) -> int:
    if resolution % VAE_FACTOR:
        raise ValueError(f"resolution {resolution} is not a multiple of {VAE_FACTOR}")
    return resolution // VAE_FACTOR


def make_inputs(spec: ModelSpec, batch: int, resolution: Optional[int] = None, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", seed: int = 0, timesteps: Optional[torch.Tensor] = None
                ) -> tuple[tuple, dict]:
    """(args, kwargs) for one denoiser call at `resolution` px; the latent is passed positionally.

    Timesteps default to one per sample spread over [1, 999] (the classifier's mixed batch);
    never 0, so ToDo's timestep gate keeps every sample compressed.
    """
    side = latent_side(resolution or spec.resolution)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    latent = torch.randn(batch, spec.latent_channels, side, side, generator=gen).to(device, dtype)
    if timesteps is None:
        timesteps = torch.linspace(999, 1, batch).round().long()
    timesteps = timesteps.to(device)
    cfg = spec.config
    if spec.family == "unet":
        text = torch.randn(batch, spec.text_tokens, cfg["cross_attention_dim"], generator=gen).to(device, dtype)
        kwargs: dict[str, Any] = {"timestep": timesteps, "encoder_hidden_states": text, "return_dict": False}
        if spec.kind == "sdxl":
            pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
            side_px = float(resolution or spec.resolution)
            time_ids = torch.tensor([side_px, side_px, 0.0, 0.0, side_px, side_px]).expand(batch, 6)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(batch, pooled, generator=gen).to(device, dtype),
                "time_ids": time_ids.to(device, dtype),
            }
        return (latent,), kwargs
    if spec.kind == "dit":
        labels = torch.arange(batch, device=device) % int(cfg["num_embeds_ada_norm"])
        return (latent,), {"timestep": timesteps, "class_labels": labels, "return_dict": False}
    text = torch.randn(batch, spec.text_tokens, cfg["caption_channels"], generator=gen).to(device, dtype)
    added: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
    if cfg.get("use_additional_conditions"):
        side_px = float(resolution or spec.resolution)
        added = {"resolution": torch.tensor([[side_px, side_px]] * batch, device=device, dtype=dtype),
                 "aspect_ratio": torch.ones(batch, 1, device=device, dtype=dtype)}
    return (latent,), {"timestep": timesteps, "encoder_hidden_states": text, "added_cond_kwargs": added,
                       "return_dict": False}
