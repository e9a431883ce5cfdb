"""Rectified-flow text-to-image models (SD3 / SD3.5, Flux.1) behind the `LoadedModel` interface.

A folder (or hub snapshot) whose `model_index.json` names `StableDiffusion3Pipeline` or
`FluxPipeline` is loaded with that diffusers pipeline; prompts go through the pipeline's own
`encode_prompt` (SD3: CLIP-L + CLIP-G (+ T5 when present); Flux: CLIP-L pooled + T5), latents
through its VAE (shift and scaling factors) and, for Flux, its 2x2 latent packing and image ids.

Forward process (rectified flow, Esser et al. 2024): x_t = (1 - sigma_t) x0 + sigma_t eps, and the
network predicts the velocity eps - x0. A training timestep t in [0, T) has the noise level of the
pipeline's `FlowMatchEulerDiscreteScheduler`: s = (t + 1) / T, shifted by the scheduler
(static: sigma = shift s / (1 + (shift - 1) s), SD3 shift 3; dynamic (Flux.1-dev): the
resolution-dependent exponential shift with mu from the image's token count, as the pipeline does).
SD3 is called with timestep sigma * 1000, Flux with sigma (it multiplies by 1000 itself).

Classification (`bigain.diffusion.classifier.forward_process`) scores each class by this training loss,
||v_theta(x_t, sigma_t, c) - (eps - x0)||, with the adaptive protocol used for DDPM models. No
published diffusion classifier runs on SD3 or Flux: this extension and its results are ours.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from bigain.models.loaded_model import LoadedModel

__all__ = ["FLOW_VERSIONS", "FLOW_PIPELINES", "FLOW_PATTERNS", "FlowLoadedModel", "flow_sigmas", "is_flow_folder",
           "load_flow_folder"]

FLOW_VERSIONS: dict[str, str] = {
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
}
FLOW_PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
# Hub files the runners need: configs, tokenizers, and the safetensors of every component (incl. T5 shards).
FLOW_PATTERNS = ["model_index.json", "scheduler/*", "tokenizer*/*", "*/config.json", "*/*.safetensors",
                 "*/*.safetensors.index.json"]
FLUX_GUIDANCE = 3.5  # Flux.1-dev's distilled guidance (the pipeline's default guidance_scale)


def is_flow_folder(folder: Path) -> bool:
    """Whether a diffusers folder holds an SD3 / Flux pipeline (by model_index.json's class name)."""
    index = folder / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") in FLOW_PIPELINES


def flow_sigmas(scheduler: Any, image_seq_len: int) -> torch.Tensor:
    """Noise level sigma_t (float64, length T, increasing in t) of each training timestep t of `scheduler`."""
    config = scheduler.config
    T = int(config.num_train_timesteps)
    s = torch.arange(1, T + 1, dtype=torch.float64) / T
    if getattr(config, "use_dynamic_shifting", False):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return scheduler.time_shift(mu, 1.0, s).to(torch.float64)
    shift = float(config.shift)
    return shift * s / (1 + (shift - 1) * s)


@dataclass
class FlowLoadedModel(LoadedModel):
    """An SD3 / Flux pipeline as a LoadedModel: `predict_target` is the velocity, `predict_eps` derived from it."""

    pipe: Any = None
    max_sequence_length: int = 256
    flow_matching: ClassVar[bool] = True

    # -- geometry: unpacked latents (B, C, H, W) everywhere; Flux packs 2x2 inside the call
    @property
    def in_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def sample_size(self) -> int:
        size = getattr(self.denoiser.config, "sample_size", None) or self.pipe.default_sample_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        raise ValueError(f"{self.name} is a rectified-flow model: it has no alphas_cumprod; use flow_sigmas")

    def image_tokens(self, latent_shape: Sequence[int]) -> int:
        """Image tokens of a (C, H, W) latent: patches of the transformer (Flux: 2x2 packing)."""
        patch = 2 if self.kind == "flux" else int(self.denoiser.config.patch_size)
        return (int(latent_shape[-2]) // patch) * (int(latent_shape[-1]) // patch)

    def flow_sigmas(self, latent_shape: Sequence[int]) -> torch.Tensor:
        """sigma_t for every training timestep at this latent size (only Flux-dev's shift depends on it)."""
        return flow_sigmas(self.scheduler, self.image_tokens(latent_shape))

    # -- conditions ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
        """{encoder_hidden_states (N, L, D), pooled_projections (N, P)} from the pipeline's encode_prompt."""
        hidden, pooled = [], []
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i:i + batch_size])
            if self.kind == "sd3":
                embeds, _, pool, _ = self.pipe.encode_prompt(chunk, None, None, device=self.device,
                                                             do_classifier_free_guidance=False,
                                                             max_sequence_length=self.max_sequence_length)
            else:
                embeds, pool, _ = self.pipe.encode_prompt(chunk, None, device=self.device,
                                                          max_sequence_length=self.max_sequence_length)
            hidden.append(embeds.to(self.dtype))
            pooled.append(pool.to(self.dtype))
        return {"encoder_hidden_states": torch.cat(hidden), "pooled_projections": torch.cat(pooled)}

    def condition(self, prompts: Sequence[str] | None = None,
                  class_ids: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        if prompts is None:
            raise ValueError(f"{self.name} is text-conditioned: pass prompts")
        return self.encode_text(prompts)

    def null_condition(self, n: int = 1) -> dict[str, torch.Tensor]:
        return {k: v.expand(n, *v.shape[1:]) for k, v in self.encode_text([""]).items()}

    # -- the model -------------------------------------------------------------------------
    def sigmas_at(self, x_t: torch.Tensor, t: torch.Tensor | int | float) -> torch.Tensor:
        """(B,) sigma of `t` (scalar or per sample), on one of two scales told apart by dtype:

        integer: a training timestep in [0, T) (the classifier's grid), sigma from the scheduler's
        table (`flow_sigmas`); floating: a model timestep sigma * 1000, as in a sampler's schedule
        (`FlowMatchEulerDiscreteScheduler.timesteps`), so sigma = t / 1000.
        """
        t = torch.as_tensor(t).reshape(-1)
        t = t.expand(x_t.shape[0]) if t.numel() == 1 else t
        if t.is_floating_point():
            return (t.to(torch.float64) / 1000).to(self.device, torch.float32)
        return self.flow_sigmas(x_t.shape[-3:])[t.long().cpu()].to(self.device, torch.float32)

    def predict_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """v_theta(x_t, sigma, c) for unpacked latents (B, C, H, W) and per-sample sigma (B,)."""
        x_t = x_t.to(self.device, self.dtype)
        sigma = sigma.to(self.device, self.dtype)
        if self.kind == "sd3":
            return self.denoiser(hidden_states=x_t, timestep=sigma * 1000, **cond, return_dict=False)[0]
        batch, channels, height, width = x_t.shape
        packed = self.pipe._pack_latents(x_t, batch, channels, height, width)
        img_ids = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, self.dtype)
        txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((batch,), FLUX_GUIDANCE, device=self.device, dtype=self.dtype)
        out = self.denoiser(hidden_states=packed, timestep=sigma, guidance=guidance, img_ids=img_ids, txt_ids=txt_ids,
                            **cond, return_dict=False)[0]
        scale = self.vae_scale_factor
        return self.pipe._unpack_latents(out, height * scale, width * scale, scale)

    def predict_target(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training target's prediction, the velocity eps - x0, at timesteps `t` (see `sigmas_at`)."""
        return self.predict_velocity(x_t, self.sigmas_at(x_t, t), cond)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Noise implied by the velocity: x_t = (1 - s) x0 + s eps and v = eps - x0 give eps = x_t + (1 - s) v."""
        sigma = self.sigmas_at(x_t, t)
        v = self.predict_velocity(x_t, sigma, cond)
        return x_t.to(v) + (1 - sigma.to(v)).view(-1, *[1] * (v.dim() - 1)) * v

    __call__ = predict_target

    def describe(self) -> dict:
        return {**super().describe(), "forward_process": "rectified flow (velocity target)",
                "scheduler": type(self.scheduler).__name__}


def load_flow_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> FlowLoadedModel:
    """Load an SD3 / Flux pipeline folder through its diffusers pipeline class."""
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    cls_name = index["_class_name"]
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v and v[0] is None}  # e.g. SD3 without T5
    pipe = getattr(diffusers, cls_name).from_pretrained(folder, torch_dtype=dtype, **absent)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    kind = FLOW_PIPELINES[cls_name]
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "text_encoder_3", None)):
        if module is not None:
            module.eval().requires_grad_(False)
    tokenizer = pipe.tokenizer_3 if kind == "sd3" else pipe.tokenizer_2
    max_len = 256 if tokenizer is None else min(512 if kind == "flux" else 256, int(tokenizer.model_max_length))
    return FlowLoadedModel(kind=kind, name=name, source=str(folder), denoiser=pipe.transformer,
                           scheduler=pipe.scheduler,
                           device=device, dtype=dtype, vae=pipe.vae, text_encoder=pipe.text_encoder,
                           tokenizer=pipe.tokenizer, meta={k: v for k, v in index.items() if not k.startswith("_")},
                           pipe=pipe, max_sequence_length=max_len)
