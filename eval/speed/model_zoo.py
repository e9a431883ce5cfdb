"""Full-size denoiser architectures from their public configs, with random weights (no download).

Timing and FLOP counts depend only on the architecture, so the benchmark builds each model from
a config dict that matches the published `config.json` of its checkpoint and never loads
weights. Every entry can be shrunk for CPU runs (`num_layers` for DiT/PixArt, `width` scales
U-Net channels) and tiny variants (configs in `bigain.zoo.speed`) exist for tests; the shrinking is recorded in the spec
name.

    spec = get_spec("sd2")                      # SD 2 base U-Net, 512 px default
    model = build_model(spec, dtype=torch.float16, device="cuda")
    inputs = make_inputs(spec, batch=2, resolution=1024)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from bigain.zoo.speed import TINY_SPEED_CONFIGS

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


SD3_MEDIUM = {  # stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json (2B)
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192,
}

SD35_MEDIUM = {  # stabilityai/stable-diffusion-3.5-medium, transformer/config.json (2.5B): dual attention, QK norm
    **SD3_MEDIUM, "pos_embed_max_size": 384, "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm",
}

FLUX_DEV = {  # black-forest-labs/FLUX.1-dev, transformer/config.json (12B); FLUX.1-schnell: no guidance embedding
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# SD3 text: 77 CLIP tokens + 256 T5 tokens (pipeline default); Flux: T5 only (schnell 256, dev 512).
SD3_TEXT_TOKENS = 77 + 256

# The 2026 families. Configs as the checkpoints' transformer/config.json give them (diffusers 0.42 class defaults,
# which were written from these checkpoints, spelt out; parameter counts checked in tests/eval/test_full_flops.py).
FLUX2_DEV = {  # black-forest-labs/FLUX.2-dev, transformer/config.json (32B): 8 double + 48 single, width 48 x 128
    "patch_size": 1, "in_channels": 128, "out_channels": None, "num_layers": 8, "num_single_layers": 48,
    "attention_head_dim": 128, "num_attention_heads": 48, "joint_attention_dim": 15360,  # 3 Mistral layers x 5120
    "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": (32, 32, 32, 32), "rope_theta": 2000,
    "eps": 1e-6, "guidance_embeds": True,
}
QWEN_IMAGE = {  # Qwen/Qwen-Image, transformer/config.json (20B): 60 double-stream blocks, width 24 x 128
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False, "axes_dims_rope": (16, 56, 56),
}
WAN21_T2V_1_3B = {  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json (1.3B): dim 1536 = 12 x 128, 30 blocks
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
# Text tokens: Flux2Pipeline pads the Mistral prompt to max_sequence_length 512; WanPipeline pads UMT5 to 512
# (its __call__ default); QwenImagePipeline keeps the prompt's own length (template dropped, padded to the
# batch's longest): 128 here, an assumed mid-length prompt.
# Pixels per token: FLUX.2 16 (VAE 8, latents patchified 2x2 to 128 channels), Qwen-Image 16 (VAE 8, packed 2x2),
# Wan 16 per frame (VAE 8, patch 2x2) and 4 frames per latent frame (81 frames -> 21 latent frames).
WAN_FRAMES_PER_LATENT = 4


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture: diffusers class, config, default resolution and conditioning sizes."""

    name: str
    kind: str  # "unet", "sdxl", "dit", "pixart", "sd3", "flux", "flux2", "qwen_image", "wan"
    config: dict[str, Any]
    resolution: int  # default image side (video: frame height) in pixels
    text_tokens: int = 77  # conditioning sequence length (U-Nets, PixArt)
    note: str = ""
    description: str = field(default="", compare=False)
    frames: int = 0  # video: pixel frames per call (Wan: 4k + 1); 0 for images
    aspect: float = 1.0  # width / height (Wan's 832 x 480); the width is rounded to a multiple of 16 px

    @property
    def family(self) -> str:
        if self.kind in ("sd3", "flux", "flux2", "qwen_image"):
            return "mmdit"
        if self.kind == "wan":
            return "video"
        return "unet" if self.kind in ("unet", "sdxl") else "transformer"

    @property
    def latent_channels(self) -> int:
        """VAE latent channels (Flux, FLUX.2 and Qwen-Image transformers take them packed 2x2: in_channels = 4x)."""
        channels = int(self.config["in_channels"])
        return channels // 4 if self.kind in PACKED_KINDS else channels

    def size(self, resolution: Optional[int] = None) -> tuple[int, int]:
        """(height, width) in pixels at `resolution` (the height; default: the spec's)."""
        height = int(resolution or self.resolution)
        return height, height if self.aspect == 1.0 else int(round(height * self.aspect / 16)) * 16


PACKED_KINDS = ("flux", "flux2", "qwen_image")  # transformers whose tokens are 2x2 latent patches packed by the caller


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
    "sd3-medium": ModelSpec("sd3-medium", "sd3", SD3_MEDIUM, 1024, text_tokens=SD3_TEXT_TOKENS,
                            description="SD3-medium MMDiT (2B)"),
    "sd3.5-medium": ModelSpec("sd3.5-medium", "sd3", SD35_MEDIUM, 1024, text_tokens=SD3_TEXT_TOKENS,
                              description="SD3.5-medium MMDiT-X (2.5B with its position table)"),
    "flux-schnell": ModelSpec("flux-schnell", "flux", {**FLUX_DEV, "guidance_embeds": False}, 1024, text_tokens=256,
                              description="FLUX.1-schnell (12B)"),
    "flux-dev": ModelSpec("flux-dev", "flux", FLUX_DEV, 1024, text_tokens=512, description="FLUX.1-dev (12B)"),
    "flux2-dev": ModelSpec("flux2-dev", "flux2", FLUX2_DEV, 1024, text_tokens=512, description="FLUX.2-dev (32B)"),
    "qwen-image": ModelSpec("qwen-image", "qwen_image", QWEN_IMAGE, 1024, text_tokens=128,
                            description="Qwen-Image (20B)"),
    "wan2.1-t2v-1.3b": ModelSpec("wan2.1-t2v-1.3b", "wan", WAN21_T2V_1_3B, 480, text_tokens=512, frames=81,
                                 aspect=832 / 480, description="Wan2.1-T2V-1.3B (480 x 832, 81 frames)"),
    # Tiny variants (tests): same classes and block layouts, a few channels (configs in the zoo, bigain.zoo.speed).
    "tiny-sd": ModelSpec("tiny-sd", "unet", TINY_SPEED_CONFIGS["tiny-sd"], 128, text_tokens=5,
                         description="tiny SD 2 style U-Net (attention at full resolution)"),
    "tiny-sdxl": ModelSpec("tiny-sdxl", "sdxl", TINY_SPEED_CONFIGS["tiny-sdxl"], 128, text_tokens=5,
                           description="tiny SDXL layout"),
    "tiny-dit": ModelSpec("tiny-dit", "dit", TINY_SPEED_CONFIGS["tiny-dit"], 128, description="tiny DiT"),
    "tiny-pixart": ModelSpec("tiny-pixart", "pixart", TINY_SPEED_CONFIGS["tiny-pixart"], 128, text_tokens=5,
                             description="tiny PixArt"),
    "tiny-sd3": ModelSpec("tiny-sd3", "sd3", TINY_SPEED_CONFIGS["tiny-sd3"], 128, text_tokens=5,
                          description="tiny SD3.5 layout (dual attention in block 0)"),
    "tiny-flux": ModelSpec("tiny-flux", "flux", TINY_SPEED_CONFIGS["tiny-flux"], 128, text_tokens=5,
                           description="tiny Flux (dev layout)"),
    "tiny-flux2": ModelSpec("tiny-flux2", "flux2", TINY_SPEED_CONFIGS["tiny-flux2"], 128, text_tokens=5,
                            description="tiny FLUX.2 (dev layout: guidance embedding, 4 rotary axes)"),
    "tiny-qwen-image": ModelSpec("tiny-qwen-image", "qwen_image", TINY_SPEED_CONFIGS["tiny-qwen-image"], 128,
                                 text_tokens=5, description="tiny Qwen-Image"),
    "tiny-wan": ModelSpec("tiny-wan", "wan", TINY_SPEED_CONFIGS["tiny-wan"], 128, text_tokens=5, frames=5,
                          description="tiny Wan 2.1 (5 frames: 2 latent frames)"),
}


def list_models() -> list[str]:
    return list(MODEL_SPECS)


def shrink(spec: ModelSpec, num_layers: Optional[int] = None, width: Optional[float] = None,
           frames: Optional[int] = None, text_tokens: Optional[int] = None) -> ModelSpec:
    """A reduced copy for CPU runs: fewer DiT/PixArt/SD3 blocks, or U-Net channels scaled by `width`; a video model
    at fewer `frames`; any model with `text_tokens` conditioning tokens.

    Flux with `num_layers=N` keeps N double-stream and 2N single-stream blocks (the published 19:38 ratio);
    FLUX.2 keeps N double- and N single-stream blocks (8:48 published: one of each kind at N=1).

    U-Net head counts are kept (head dim scales with width) and GroupNorm groups are kept at 32
    when the scaled widths allow it, else halved until they divide every width.
    """
    config = copy.deepcopy(spec.config)
    name = spec.name
    if num_layers is not None:
        if spec.family == "unet":
            raise ValueError("num_layers shrinks DiT/PixArt/SD3/Flux; use width for U-Nets")
        config["num_layers"] = int(num_layers)
        if spec.kind == "flux":
            config["num_single_layers"] = 2 * int(num_layers)
        if spec.kind == "flux2":
            config["num_single_layers"] = int(num_layers)
        if "dual_attention_layers" in config:
            config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < int(num_layers))
        name += f"-L{num_layers}"
    if width is not None and width != 1:
        if spec.family != "unet":
            raise ValueError("width scales U-Net channels; use num_layers for DiT/PixArt/SD3/Flux")
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
    extra: dict[str, Any] = {}
    if frames is not None:
        if spec.family != "video" or frames < 1 or (frames - 1) % WAN_FRAMES_PER_LATENT:
            raise ValueError(f"frames={frames}: only video models take frames, 4k + 1 of them (e.g. 5, 9, 81)")
        extra["frames"] = int(frames)
        name += f"-F{frames}"
    if text_tokens is not None:
        if text_tokens < 1:
            raise ValueError(f"text_tokens={text_tokens}: must be at least 1")
        extra["text_tokens"] = int(text_tokens)
        name += f"-T{text_tokens}"
    notes = [spec.note, f"{num_layers} layers" if num_layers else "",
             f"widths x{width:g}" if width not in (None, 1) else "", f"{frames} frames" if frames else "",
             f"{text_tokens} text tokens" if text_tokens else ""]
    return replace(spec, name=name, config=config, note=", ".join(filter(None, notes)), **extra)


def get_spec(name: str, num_layers: Optional[int] = None, width: Optional[float] = None,
             frames: Optional[int] = None, text_tokens: Optional[int] = None) -> ModelSpec:
    """Look up a named architecture (ValueError lists the known names), optionally shrunk."""
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; known: {list_models()}")
    spec = MODEL_SPECS[name]
    changed = num_layers is not None or width not in (None, 1) or frames is not None or text_tokens is not None
    return shrink(spec, num_layers, width, frames, text_tokens) if changed else spec


def model_class(spec: ModelSpec) -> type:
    from diffusers import (
        DiTTransformer2DModel,
        Flux2Transformer2DModel,
        FluxTransformer2DModel,
        PixArtTransformer2DModel,
        QwenImageTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
        WanTransformer3DModel,
    )

    return {"unet": UNet2DConditionModel, "sdxl": UNet2DConditionModel, "dit": DiTTransformer2DModel,
            "pixart": PixArtTransformer2DModel, "sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel,
            "flux2": Flux2Transformer2DModel, "qwen_image": QwenImageTransformer2DModel,
            "wan": WanTransformer3DModel}[spec.kind]


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
    if spec.family != "unet":
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
    if timesteps is None:
        timesteps = torch.linspace(999, 1, batch).round().long()
    if spec.kind in INPUTS_2026:
        return INPUTS_2026[spec.kind](spec, batch, spec.size(resolution), timesteps.to(device), seed, dtype, device)
    side = latent_side(resolution or spec.resolution)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    latent = torch.randn(batch, spec.latent_channels, side, side, generator=gen).to(device, dtype)
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
    if spec.family == "mmdit":
        return mmdit_inputs(spec, latent, timesteps, gen, dtype, device)
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


def mmdit_inputs(spec: ModelSpec, latent: torch.Tensor, timesteps: torch.Tensor, gen: torch.Generator,
                 dtype: torch.dtype, device: str | torch.device) -> tuple[tuple, dict]:
    """SD3 / Flux call: text tokens + pooled text; Flux packs the latent 2x2 with image ids, takes sigma = t/1000."""
    cfg, batch = spec.config, latent.shape[0]
    text = torch.randn(batch, spec.text_tokens, cfg["joint_attention_dim"], generator=gen).to(device, dtype)
    pooled = torch.randn(batch, cfg["pooled_projection_dim"], generator=gen).to(device, dtype)
    kwargs: dict[str, Any] = {"encoder_hidden_states": text, "pooled_projections": pooled, "return_dict": False}
    if spec.kind == "sd3":
        return (latent,), {**kwargs, "timestep": timesteps.to(dtype)}
    from diffusers import FluxPipeline

    _, channels, height, width = latent.shape
    packed = FluxPipeline._pack_latents(latent, batch, channels, height, width)
    kwargs.update(timestep=(timesteps.to(torch.float32) / 1000).to(dtype),
                  img_ids=FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype),
                  txt_ids=torch.zeros(spec.text_tokens, 3, device=device, dtype=dtype))
    if cfg.get("guidance_embeds"):
        kwargs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
    return (packed,), kwargs


def token_grid(size: tuple[int, int]) -> tuple[int, int]:
    """Token rows and columns of an image (or video frame) of `size` px: 16 px per token for the 2026 families."""
    if size[0] % 16 or size[1] % 16:
        raise ValueError(f"image size {size[0]}x{size[1]} px: FLUX.2, Qwen-Image and Wan need multiples of 16")
    return size[0] // 16, size[1] // 16


def text_inputs(spec: ModelSpec, batch: int, dim: int, gen: torch.Generator, dtype: torch.dtype,
                device: str | torch.device) -> torch.Tensor:
    return torch.randn(batch, spec.text_tokens, dim, generator=gen).to(device, dtype)


def flux2_inputs(spec: ModelSpec, batch: int, size: tuple[int, int], timesteps: torch.Tensor, seed: int,
                 dtype: torch.dtype, device: str | torch.device) -> tuple[tuple, dict]:
    """FLUX.2 call: patchified latent tokens with (t, row, column, layer) ids, Mistral text with its ids, sigma."""
    from diffusers import Flux2Pipeline

    gen, (rows, cols), cfg = torch.Generator().manual_seed(seed), token_grid(size), spec.config
    latent = torch.randn(batch, cfg["in_channels"], rows, cols, generator=gen)
    text = text_inputs(spec, batch, cfg["joint_attention_dim"], gen, dtype, device)
    kwargs: dict[str, Any] = {
        "encoder_hidden_states": text, "timestep": (timesteps.to(torch.float32) / 1000).to(dtype),
        "img_ids": Flux2Pipeline._prepare_latent_ids(latent).to(device), "txt_ids": Flux2Pipeline._prepare_text_ids(
            text).to(device), "return_dict": False}
    if cfg.get("guidance_embeds"):
        kwargs["guidance"] = torch.full((batch,), 4.0, device=device, dtype=dtype)  # FLUX.2-dev's default
    return (latent.flatten(2).transpose(1, 2).to(device, dtype),), kwargs


def qwen_image_inputs(spec: ModelSpec, batch: int, size: tuple[int, int], timesteps: torch.Tensor, seed: int,
                      dtype: torch.dtype, device: str | torch.device) -> tuple[tuple, dict]:
    """Qwen-Image call: packed latent tokens, their `img_shapes`, Qwen2.5-VL text (no padding mask), sigma."""
    gen, (rows, cols), cfg = torch.Generator().manual_seed(seed), token_grid(size), spec.config
    tokens = torch.randn(batch, rows * cols, cfg["in_channels"], generator=gen).to(device, dtype)
    text = text_inputs(spec, batch, cfg["joint_attention_dim"], gen, dtype, device)
    return (tokens,), {"encoder_hidden_states": text, "timestep": (timesteps.to(torch.float32) / 1000).to(dtype),
                       "img_shapes": [[(1, rows, cols)]] * batch, "return_dict": False}


def wan_inputs(spec: ModelSpec, batch: int, size: tuple[int, int], timesteps: torch.Tensor, seed: int,
               dtype: torch.dtype, device: str | torch.device) -> tuple[tuple, dict]:
    """Wan call: a (B, C, latent frames, H / 8, W / 8) video latent, UMT5 text, timesteps on 0-1000."""
    gen, (rows, cols), cfg = torch.Generator().manual_seed(seed), token_grid(size), spec.config
    frames = (spec.frames - 1) // WAN_FRAMES_PER_LATENT + 1
    latent = torch.randn(batch, cfg["in_channels"], frames, 2 * rows, 2 * cols, generator=gen).to(device, dtype)
    text = text_inputs(spec, batch, cfg["text_dim"], gen, dtype, device)
    return (latent,), {"encoder_hidden_states": text, "timestep": timesteps, "return_dict": False}


INPUTS_2026 = {"flux2": flux2_inputs, "qwen_image": qwen_image_inputs, "wan": wan_inputs}
