"""Wan 2.x text-to-video (`WanPipeline`, rectified flow) behind the `LoadedModel` interface, for generation.

What the pipeline does and this model repeats: latents (B, C, T, H, W) with T = (frames - 1) / 4 + 1 latent
frames (the VAE's `scale_factor_temporal`) of H x W = pixels / 8 (`scale_factor_spatial`); the prompt through
UMT5 (`encode_prompt`: padded to 512 tokens with zeros after each prompt's end); the transformer called with
timestep sigma * 1000; classifier-free guidance 5.0 against a negative prompt (the pipeline's default: the
empty prompt); decoding after `latents * std + mean` with the VAE's latents_std / latents_mean.

Sampling: the hub's scheduler is UniPC with flow sigmas at `flow_shift` (3.0 for 480p); the runs sample with
the flow-matching Euler step at the same shift (`FlowMatchEulerDiscreteScheduler(shift=flow_shift)`), the
sampler every other flow family uses here. Default size: the pipeline's call defaults (480 x 832, 81 frames).
Wan 2.2 two-expert (A14B: `transformer_2`) and per-token-timestep (TI2V) pipelines are refused.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from bigain.models.flow import FlowLoadedModel
from bigain.models.loaded_model import OutputSize

__all__ = ["WanLoadedModel", "check_wan_pipeline", "euler_flow_scheduler", "frame_multiple"]

DEFAULT_FRAME_MULTIPLE = 4  # Wan 2.1 / 2.2 VAEs: 4 frames per latent frame after the first


def frame_multiple(folder: Path | None) -> int:
    """Frames per latent frame of a Wan folder's VAE, read from vae/config.json before loading (the hub's: 4)."""
    config = None if folder is None else folder / "vae" / "config.json"
    if config is None or not config.is_file():
        return DEFAULT_FRAME_MULTIPLE
    return int(json.loads(config.read_text()).get("scale_factor_temporal") or DEFAULT_FRAME_MULTIPLE)


def euler_flow_scheduler(scheduler: Any) -> Any:
    """A `FlowMatchEulerDiscreteScheduler` at the pipeline scheduler's shift (UniPC's `flow_shift` on the hub)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler
    config = scheduler.config
    shift = config.get("flow_shift") or config.get("shift") or 1.0
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(config.num_train_timesteps), shift=float(shift))


@dataclass
class WanLoadedModel(FlowLoadedModel):
    """Wan text-to-video: latents (B, C, T, H, W), one token per 1 x 2 x 2 patch; generation only."""

    token_patch: int = 2
    video: ClassVar[bool] = True

    @property
    def in_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def frame_factor(self) -> int:
        """Frames per latent frame after the first (the VAE's temporal compression)."""
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def native_output(self) -> OutputSize:
        """The pipeline's call defaults (480 x 832, 81 frames for Wan 2.1)."""
        params = inspect.signature(type(self.pipe).__call__).parameters
        return OutputSize(int(params["height"].default), int(params["width"].default),
                          int(params["num_frames"].default))

    @property
    def sample_size(self) -> int:
        return self.native_output.height // self.vae_scale_factor

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels)

    def latent_shape(self, size: OutputSize) -> tuple[int, ...]:
        """(C, T, H, W) of a video of `size` (frames 4k + 1 -> T = k + 1)."""
        if size.frames is None or (size.frames - 1) % self.frame_factor:
            raise ValueError(f"{self.name} makes {self.frame_factor}k + 1 frames; got {size.frames}")
        f = self.vae_scale_factor
        return (self.in_channels, (size.frames - 1) // self.frame_factor + 1, size.height // f, size.width // f)

    def image_tokens(self, latent_shape: Sequence[int]) -> int:
        """Tokens of a (C, T, H, W) or (T, H, W) latent: one per frame and 2 x 2 patch."""
        frames, height, width = (int(v) for v in latent_shape[-3:])
        return frames * (height // self.token_patch) * (width // self.token_patch)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = int(self.vae.config.z_dim)
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1).to(like)
        std = torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1).to(like)
        return mean, std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{self.name} is a text-to-video model: bigain's runs generate videos with it but do not "
                         "encode images (no zero-shot classification)")

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) latents -> videos (B, 3, frames, height, width) in [-1, 1] (not clamped)."""
        latents = latents.to(self.device, self.dtype)
        mean, std = self._stats(latents)
        return self.vae.decode(latents * std + mean).sample

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
        """{encoder_hidden_states (N, L, D)}: UMT5 through the pipeline's encode_prompt (fixed length L)."""
        hidden = []
        for i in range(0, len(prompts), batch_size):
            embeds, _ = self.pipe.encode_prompt(list(prompts[i:i + batch_size]), do_classifier_free_guidance=False,
                                                max_sequence_length=self.max_sequence_length, device=self.device)
            hidden.append(embeds.to(self.dtype))
        return {"encoder_hidden_states": torch.cat(hidden)}

    def predict_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """v_theta for latents (B, C, T, H, W) at per-sample sigma (B,): the transformer takes sigma * 1000."""
        x_t = x_t.to(self.device, self.dtype)
        timestep = (sigma.to(self.device, torch.float64) * 1000).to(self.dtype)
        return self.denoiser(hidden_states=x_t, timestep=timestep,
                             encoder_hidden_states=cond["encoder_hidden_states"].to(self.device, self.dtype),
                             return_dict=False)[0]


def check_wan_pipeline(pipe: Any, name: str) -> None:
    """ValueError for the Wan pipelines the runs do not sample: two experts (Wan 2.2 A14B), per-token timesteps."""
    if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None:
        raise ValueError(f"{name}: two-expert Wan 2.2 pipelines (transformer_2) are not run by bigain.generate yet; "
                         "Wan 2.1 and single-transformer Wan 2.2 text-to-video are")
    if pipe.config.get("expand_timesteps"):
        raise ValueError(f"{name}: per-token timesteps (Wan 2.2 TI2V) are not run by bigain.generate yet")
