"""The uniform interface runners use for every model kind (SD, DiT, the embedded testbed).

`bigain.models.loading.load_model` builds it; see that module for what each kind carries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

__all__ = ["LoadedModel", "OutputSize"]


@dataclass(frozen=True)
class OutputSize:
    """What one generated item is: height x width pixels, and its frame count when it is a video (None: an image)."""

    height: int
    width: int
    frames: int | None = None

    @property
    def label(self) -> str:
        """Folder-name part: `512px` for a square image, `480x832px`, plus `_81f` for a video."""
        side = f"{self.height}px" if self.height == self.width else f"{self.height}x{self.width}px"
        return side if self.frames is None else f"{side}_{self.frames}f"


@dataclass
class LoadedModel:
    """A diffusion denoiser plus everything needed to encode images and conditions, uniformly for SD and DiT.

    Conditions are dicts ``{denoiser kwarg: tensor}`` whose tensors have one row per class
    (``encoder_hidden_states`` (C, L, D) for U-Nets, ``class_labels`` (C,) for DiTs), so a
    runner gathers rows with :meth:`select` and never needs to know which kind it holds.
    """

    kind: str  # "sd" (U-Net, cross-attention conditioning) or "dit" (class-label conditioning)
    name: str  # version name or folder/hub id, for output names
    source: str  # where the weights were loaded from
    denoiser: nn.Module  # the module to patch (UNet2DConditionModel / DiTTransformer2DModel)
    scheduler: Any  # diffusers scheduler; its alphas_cumprod define the forward process
    device: torch.device
    dtype: torch.dtype
    vae: nn.Module | None = None  # None: pixel-space model
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    class_embeddings: torch.Tensor | None = None  # (num_classes + 1, L, D), last row = null (testbed U-Net)
    num_classes: int | None = None  # class-conditional models only
    null_class: int | None = None  # label of the unconditional class (DiT: num_classes)
    class_names: list[str] | None = None
    meta: dict = field(default_factory=dict)  # testbed.json / model_index.json contents
    hub_id: str | None = None  # hub repo the weights came from (None: a local folder)
    revision: str | None = None  # its snapshot (commit hash) in the HF cache
    video: ClassVar[bool] = False  # True: the denoiser input has a frame axis (B, C, T, H, W)

    # -- geometry -------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        """Channels of the denoiser input (latent or pixel channels)."""
        return int(self.denoiser.config.in_channels)

    @property
    def sample_size(self) -> int:
        """Spatial size of the denoiser input (latent side, or pixel side in pixel space)."""
        size = self.denoiser.config.sample_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along one side (1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Native image side in pixels."""
        return self.sample_size * self.vae_scale_factor

    @property
    def native_output(self) -> OutputSize:
        """The size the model generates by default: its native square image."""
        return OutputSize(self.image_size, self.image_size)

    def latent_shape(self, size: OutputSize) -> tuple[int, ...]:
        """Denoiser input shape of one item of `size`: (C, height / f, width / f), f the VAE factor."""
        return (self.in_channels, size.height // self.vae_scale_factor, size.width // self.vae_scale_factor)

    @property
    def image_channels(self) -> int:
        """Channels of the images the model encodes (3 for VAE models)."""
        return int(self.vae.config.in_channels) if self.vae is not None else self.in_channels

    @property
    def conditioning(self) -> str:
        """'text' (prompts through a text encoder) or 'class' (integer class ids)."""
        return "text" if self.text_encoder is not None else "class"

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative alphas of the training schedule (float64 on CPU), length T."""
        return self.scheduler.alphas_cumprod.to(torch.float64).cpu()

    @property
    def num_train_timesteps(self) -> int:
        """T of the training schedule."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def prediction_type(self) -> str:
        """'epsilon' or 'v_prediction' (converted to eps by predict_eps)."""
        return str(getattr(self.scheduler.config, "prediction_type", "epsilon"))

    # -- images ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, C, H, W) -> model inputs: VAE posterior mean * scaling factor, or identity."""
        images = images.to(self.device, self.dtype)
        if self.vae is None:
            return images
        latents = self.vae.encode(images).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Model inputs -> images in [-1, 1] (not clamped), the inverse of encode_images."""
        latents = latents.to(self.device, self.dtype)
        if self.vae is None:
            return latents
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return self.vae.decode(latents / self.vae.config.scaling_factor + shift).sample

    # -- conditions -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Prompts -> last hidden state of the text encoder (N, 77, D), padded to max length."""
        if self.text_encoder is None:
            raise ValueError(f"{self.name} has no text encoder; condition it with class ids")
        out = []
        for i in range(0, len(prompts), batch_size):
            tok = self.tokenizer(list(prompts[i : i + batch_size]), padding="max_length",
                                 max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt")
            hidden = self.text_encoder(tok.input_ids.to(self.device))[0]
            out.append(hidden.to(self.dtype))
        return torch.cat(out)

    def condition(self, prompts: Sequence[str] | None = None,
                  class_ids: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Denoiser kwargs with one row per class; text models use `prompts`, class-conditional ones `class_ids`.

        Callers may pass both (e.g. every row of a prompt CSV); the model uses what it needs.
        """
        if self.text_encoder is not None:
            if prompts is None:
                raise ValueError(f"{self.name} is text-conditioned: pass prompts")
            return {"encoder_hidden_states": self.encode_prompts(prompts)}
        if class_ids is None:
            raise ValueError(f"{self.name} is class-conditioned: pass class_ids")
        ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        if self.num_classes is not None and (ids.min() < 0 or ids.max() >= self.num_classes):
            raise ValueError(f"class ids must lie in [0, {self.num_classes}) for {self.name}; "
                             f"got {ids.min().item()}..{ids.max().item()}")
        return self._class_condition(ids)

    def _class_condition(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows for integer class ids (the null class included)."""
        if self.class_embeddings is not None:
            return {"encoder_hidden_states": self.class_embeddings[ids.to(self.class_embeddings.device)]}
        return {"class_labels": ids.to(self.device)}

    def null_condition(self, n: int = 1) -> dict[str, torch.Tensor]:
        """`n` unconditional rows: the empty prompt, or the null class."""
        if self.text_encoder is not None:
            return {"encoder_hidden_states": self.encode_prompts([""]).expand(n, -1, -1)}
        if self.null_class is None:
            raise ValueError(f"{self.name} has no null class (no classifier-free guidance)")
        return self._class_condition(torch.full((n,), self.null_class, dtype=torch.long))

    @staticmethod
    def select(cond: dict[str, torch.Tensor], rows: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """Gather condition rows (e.g. the class of every sample in a batch)."""
        out = {}
        for k, v in cond.items():
            idx = torch.as_tensor(rows, dtype=torch.long, device=v.device)
            out[k] = v.index_select(0, idx)
        return out

    @staticmethod
    def concat(*conds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stack condition dicts along the batch (e.g. [uncond, cond] for guidance)."""
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}

    # -- the model ------------------------------------------------------------------------
    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Noise prediction eps_theta(x_t, t, c) in the model dtype.

        `t` is a scalar or one timestep per sample; DiT outputs with learned sigma are cut
        to the first `in_channels` channels; v-prediction is converted to eps.
        """
        x_t = x_t.to(self.device, self.dtype)
        t = torch.as_tensor(t, device=self.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        out = self.denoiser(x_t, timestep=t, **cond, return_dict=False)[0]
        out = out[:, : self.in_channels]
        if self.prediction_type == "v_prediction":
            a = self.scheduler.alphas_cumprod.to(self.device)[t.long()].to(out.dtype).view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out

    __call__ = predict_eps

    def describe(self) -> dict:
        """Small JSON-able description for configs and logs."""
        return {"kind": self.kind, "name": self.name, "source": self.source, "hub_id": self.hub_id,
                "revision": self.revision, "dtype": str(self.dtype).split(".")[-1],
                "device": str(self.device), "in_channels": self.in_channels, "sample_size": self.sample_size,
                "image_size": self.image_size, "conditioning": self.conditioning, "num_classes": self.num_classes,
                "denoiser": type(self.denoiser).__name__, "prediction_type": self.prediction_type}
