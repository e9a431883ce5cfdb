"""The backbones of the compatibility matrix: tiny random-weight models (eval.speed.model_zoo) and tiny pipelines.

Every build with the same seed gives the same weights, so a feature run on the patched and on the unpatched model
compares like with like. Pipelines hold the denoiser, a scheduler and a tiny VAE; text encoders are left out
(prompt embeddings are passed directly), which every pipeline here accepts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from eval.speed.model_zoo import ModelSpec, build_model, get_spec, make_inputs

RESOLUTION = 64  # pixels: an 8x8 latent (Flux, FLUX.2, Qwen-Image: 4x4 tokens; Wan: 2 frames of 4x4), enough for
#                  every method to reduce
BATCH = 2


@dataclass(frozen=True)
class Backbone:
    """A matrix column: a tiny model_zoo architecture and the patch placement its methods need."""

    name: str
    spec_name: str
    placement: dict[str, Any] = field(default_factory=dict)  # e.g. SDXL has no attention at max_downsample 1
    pipeline: str = ""  # diffusers pipeline class that holds this denoiser

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.spec_name)

    @property
    def denoiser_name(self) -> str:
        return "unet" if self.spec.family == "unet" else "transformer"

    def build(self, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
        """The denoiser with seeded random weights (identical for equal seeds), eval mode, on CPU."""
        return build_model(self.spec, dtype=dtype, seed=seed)

    def inputs(self, dtype: torch.dtype = torch.float32, seed: int = 0,
               timesteps: torch.Tensor | None = None) -> tuple[tuple, dict]:
        """(args, kwargs) of one denoiser call at RESOLUTION px, batch BATCH."""
        return make_inputs(self.spec, BATCH, RESOLUTION, dtype=dtype, seed=seed, timesteps=timesteps)


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("sd", "tiny-sd", pipeline="StableDiffusionPipeline"),
    Backbone("sdxl", "tiny-sdxl", {"max_downsample": 2}, pipeline="StableDiffusionXLPipeline"),
    Backbone("dit", "tiny-dit", pipeline="DiTPipeline"),
    Backbone("pixart", "tiny-pixart", pipeline="PixArtAlphaPipeline"),
    Backbone("sd3", "tiny-sd3", pipeline="StableDiffusion3Pipeline"),
    Backbone("flux", "tiny-flux", pipeline="FluxPipeline"),
    Backbone("flux2", "tiny-flux2", pipeline="Flux2Pipeline"),
    Backbone("qwen_image", "tiny-qwen-image", pipeline="QwenImagePipeline"),
    Backbone("wan", "tiny-wan", pipeline="WanPipeline"),
)}


def tiny_vae(latent_channels: int, kind: str = "") -> torch.nn.Module:
    """A two-level VAE of the pipeline's class (AutoencoderKL, FLUX.2's, Qwen-Image's or Wan's causal 3D one) with a
    few channels (only its config and, if decoding, its weights are used)."""
    import diffusers

    if kind in ("qwen_image", "wan"):
        cls = diffusers.AutoencoderKLQwenImage if kind == "qwen_image" else diffusers.AutoencoderKLWan
        return cls(base_dim=8, z_dim=latent_channels, dim_mult=[1, 2, 4], num_res_blocks=1,
                   temperal_downsample=[False, True], latents_mean=[0.0] * latent_channels,
                   latents_std=[1.0] * latent_channels).eval()
    cls = diffusers.AutoencoderKLFlux2 if kind == "flux2" else diffusers.AutoencoderKL
    return cls(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
               latent_channels=latent_channels, norm_num_groups=4, sample_size=RESOLUTION).eval()


def build_pipeline(backbone: Backbone, seed: int = 0) -> Any:
    """The backbone's diffusers pipeline around a fresh denoiser (same weights as `backbone.build(seed=seed)`),
    a default scheduler of the pipeline's kind and a tiny VAE; every other component is None."""
    import diffusers

    cls = getattr(diffusers, backbone.pipeline)
    expected, optional = cls._get_signature_keys(cls)
    denoiser = backbone.build(seed=seed)
    torch.manual_seed(seed)
    components: dict[str, Any] = {name: None for name in expected}
    components[backbone.denoiser_name] = denoiser
    components["scheduler"] = default_scheduler(backbone)
    components["vae"] = tiny_vae(backbone.spec.latent_channels, backbone.spec.kind)
    if "requires_safety_checker" in optional:
        components["requires_safety_checker"] = False
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)  # the matrix has its own bar
    return pipe


def default_scheduler(backbone: Backbone) -> Any:
    """Flow matching for SD3/Flux/FLUX.2/Qwen-Image/Wan, DDIM for the others (what their checkpoints ship, near
    enough)."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if backbone.spec.family in ("mmdit", "video"):
        return FlowMatchEulerDiscreteScheduler(shift=1.0)
    return DDIMScheduler(steps_offset=1, clip_sample=False)  # SD's shipped settings (no deprecation warning)
