"""FLUX.2 and Qwen-Image (rectified-flow text-to-image, 2025) behind the `LoadedModel` interface, and the loader of
the 2026 pipeline folders (FLUX.2, Qwen-Image, Wan: `bigain.models.wan`).

Both reuse `FlowLoadedModel` (velocity target, sigma_t from the scheduler's training table, the
classifier's velocity error); what differs is the latent space and the transformer call:

* FLUX.2 (`Flux2Pipeline`): latents are the VAE's, 2x2-patchified and batch-normalised with the VAE's
  running statistics, as the pipeline does (so one latent cell is one token); the prompt goes through
  the Mistral-3 encoder (hidden states of layers 10, 20, 30 stacked); ids (t, row, column, layer);
  FLUX.2-dev's distilled guidance (4.0, the pipeline's default) is an input of the transformer.
* Qwen-Image (`QwenImagePipeline`): latents are the (video) VAE's single frame, normalised with the
  VAE's latents_mean / latents_std; tokens are 2x2 packs; the prompt goes through Qwen2.5-VL with the
  pipeline's template and a text mask; the grid is passed as `img_shapes`.

Noise levels: the scheduler's dynamic (exponential) shift at the image's token count, as for FLUX.1-dev
(`flow_sigmas`). The FLUX.2 pipeline itself picks mu from an empirical fit of tokens and step count;
classification uses the scheduler's shift, and generation the flow-linear schedule (see docs/families.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from bigain.models.flow import FlowLoadedModel
from bigain.models.wan import WanLoadedModel, check_wan_pipeline, euler_flow_scheduler

__all__ = ["FLOW_2026_VERSIONS", "FLOW_2026_PIPELINES", "Flux2LoadedModel", "QwenImageLoadedModel",
           "is_flow_2026_folder", "load_flow_2026_folder"]

# Hub ids as diffusers' pipeline docstrings name them (Flux2Pipeline, QwenImagePipeline, WanPipeline).
FLOW_2026_VERSIONS: dict[str, str] = {
    "flux2-dev": "black-forest-labs/FLUX.2-dev",
    "qwen-image": "Qwen/Qwen-Image",
    "wan2.1-t2v-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
}
FLOW_2026_PIPELINES = {"Flux2Pipeline": "flux2", "QwenImagePipeline": "qwen_image", "WanPipeline": "wan"}
FLUX2_GUIDANCE = 4.0  # Flux2Pipeline's default guidance_scale (distilled guidance embedding)


def is_flow_2026_folder(folder: Path) -> bool:
    """Whether a diffusers folder holds a FLUX.2 / Qwen-Image / Wan pipeline (by model_index.json's class name)."""
    index = folder / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") in FLOW_2026_PIPELINES


def _pad_text(chunks: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    """Concatenate (n, L_i, ...) chunks along n, right-padding each to the longest L."""
    length = max(c.shape[1] for c in chunks)
    padded = []
    for c in chunks:
        pad = [0, 0] * (c.dim() - 2) + [0, length - c.shape[1]]
        padded.append(F.pad(c, pad, value=value))
    return torch.cat(padded)


@dataclass
class Flux2LoadedModel(FlowLoadedModel):
    """FLUX.2: patchified, batch-normalised latents (B, 4C, H/2, W/2); one latent cell is one token."""

    token_patch: int = 1

    @property
    def in_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    @property
    def sample_size(self) -> int:
        """Native latent side: the VAE's sample_size (1024 px on the hub) over the pixels per latent cell."""
        pixels = getattr(self.vae.config, "sample_size", None) or int(self.pipe.default_sample_size) * 8
        return int(pixels) // self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels)

    def image_tokens(self, latent_shape: Sequence[int]) -> int:
        return int(latent_shape[-2]) * int(latent_shape[-1])

    def _bn(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.vae.bn.running_mean.view(1, -1, 1, 1).to(like)
        std = torch.sqrt(self.vae.bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like)
        return mean, std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the pipeline's latents: VAE mode, 2x2 patchify, batch-norm statistics."""
        latents = self.pipe._patchify_latents(self.vae.encode(images.to(self.device, self.dtype)).latent_dist.mode())
        mean, std = self._bn(latents)
        return (latents - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._bn(latents)
        return self.vae.decode(self.pipe._unpatchify_latents(latents.to(self.dtype) * std + mean)).sample

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
        """{encoder_hidden_states (N, L, D)}: the Mistral-3 hidden states the pipeline stacks."""
        hidden = []
        for i in range(0, len(prompts), batch_size):
            embeds, _ = self.pipe.encode_prompt(list(prompts[i:i + batch_size]), device=self.device,
                                                max_sequence_length=self.max_sequence_length)
            hidden.append(embeds.to(self.dtype))
        return {"encoder_hidden_states": torch.cat(hidden)}

    def predict_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        x_t = x_t.to(self.device, self.dtype)
        batch, channels, height, width = x_t.shape
        text = cond["encoder_hidden_states"].to(self.device, self.dtype)
        packed = x_t.reshape(batch, channels, height * width).permute(0, 2, 1)
        img_ids = self.pipe._prepare_latent_ids(x_t).to(self.device)
        txt_ids = self.pipe._prepare_text_ids(text).to(self.device)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((batch,), FLUX2_GUIDANCE, device=self.device, dtype=self.dtype)
        timestep = sigma.to(self.device, self.dtype)
        out = self.denoiser(hidden_states=packed, encoder_hidden_states=text, timestep=timestep, guidance=guidance,
                            img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
        return out[:, :height * width].permute(0, 2, 1).reshape(batch, channels, height, width)


@dataclass
class QwenImageLoadedModel(FlowLoadedModel):
    """Qwen-Image: one normalised VAE frame (B, z, H, W), packed 2x2 into tokens inside the call."""

    token_patch: int = 2

    @property
    def in_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def sample_size(self) -> int:
        return int(self.pipe.default_sample_size)

    @property
    def image_channels(self) -> int:
        return 3

    def image_tokens(self, latent_shape: Sequence[int]) -> int:
        return (int(latent_shape[-2]) // 2) * (int(latent_shape[-1]) // 2)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.in_channels
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1).to(like)
        std = torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1).to(like)
        return mean, std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the VAE's single-frame latent mode, normalised as the pipeline does."""
        latents = self.vae.encode(images.to(self.device, self.dtype).unsqueeze(2)).latent_dist.mode()[:, :, 0]
        mean, std = self._stats(latents)
        return (latents - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents)
        return self.vae.decode((latents.to(self.dtype) * std + mean).unsqueeze(2)).sample[:, :, 0]

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
        """{encoder_hidden_states (N, L, D), encoder_hidden_states_mask (N, L)}: Qwen2.5-VL through the
        pipeline's template, every chunk padded (mask 0) to the longest prompt (the pipeline drops an all-ones mask)."""
        hidden, masks = [], []
        for i in range(0, len(prompts), batch_size):
            embeds, mask = self.pipe.encode_prompt(list(prompts[i:i + batch_size]), device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
            hidden.append(embeds.to(self.dtype))
            masks.append(torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device) if mask is None else mask)
        return {"encoder_hidden_states": _pad_text(hidden), "encoder_hidden_states_mask": _pad_text(masks)}

    @staticmethod
    def guide(uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        """The pipeline's true CFG: u + g (c - u), rescaled per token (2x2 patch, all channels) to the norm of c."""
        combined = uncond + guidance * (cond - uncond)
        batch, channels, height, width = cond.shape

        def token_norm(v: torch.Tensor) -> torch.Tensor:
            patches = v.reshape(batch, channels, height // 2, 2, width // 2, 2)
            norm = torch.linalg.vector_norm(patches, dim=(1, 3, 5), keepdim=True).expand_as(patches)
            return norm.reshape(v.shape)

        return combined * (token_norm(cond) / token_norm(combined))

    @staticmethod
    def concat(*conds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stack conditions along the batch, text padded (mask 0) to the longest: a prompt and the negative prompt
        of classifier-free guidance have different lengths (the pipeline calls them apart)."""
        return {k: _pad_text([c[k] for c in conds]) for k in conds[0]}

    def predict_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        x_t = x_t.to(self.device, self.dtype)
        batch, channels, height, width = x_t.shape
        packed = self.pipe._pack_latents(x_t, batch, channels, height, width)
        out = self.denoiser(hidden_states=packed, timestep=sigma.to(self.device, self.dtype), guidance=None,
                            encoder_hidden_states=cond["encoder_hidden_states"].to(self.device, self.dtype),
                            encoder_hidden_states_mask=cond["encoder_hidden_states_mask"].to(self.device),
                            img_shapes=[[(1, height // 2, width // 2)]] * batch, return_dict=False)[0]
        scale = self.vae_scale_factor
        return self.pipe._unpack_latents(out, height * scale, width * scale, scale)[:, :, 0]


MODEL_CLASSES = {"flux2": Flux2LoadedModel, "qwen_image": QwenImageLoadedModel, "wan": WanLoadedModel}
MAX_SEQUENCE_LENGTH = {"flux2": 512, "qwen_image": 1024, "wan": 512}  # the pipelines' call defaults


def load_flow_2026_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> FlowLoadedModel:
    """Load a FLUX.2 / Qwen-Image / Wan pipeline folder through its diffusers pipeline class (Wan: sampled with
    the flow-matching Euler step at its scheduler's shift, bigain.models.wan)."""
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    cls_name = index["_class_name"]
    kind = FLOW_2026_PIPELINES[cls_name]
    pipe = getattr(diffusers, cls_name).from_pretrained(folder, torch_dtype=dtype)
    if kind == "wan":
        check_wan_pipeline(pipe, name)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    scheduler = euler_flow_scheduler(pipe.scheduler) if kind == "wan" else pipe.scheduler
    return MODEL_CLASSES[kind](kind=kind, name=name, source=str(folder), denoiser=pipe.transformer,
                               scheduler=scheduler, device=device, dtype=dtype, vae=pipe.vae,
                               text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                               meta={k: v for k, v in index.items() if not k.startswith("_")}, pipe=pipe,
                               max_sequence_length=MAX_SEQUENCE_LENGTH[kind])
