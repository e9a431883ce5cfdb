"""CLIP score (text-image agreement, 100 * max(cos, 0), averaged) through torchmetrics.

The CLIP model is a local folder (``CLIPModel.save_pretrained`` + ``CLIPProcessor.save_pretrained``)
or a hub id that is already in the local hub cache or can be downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

__all__ = ["DEFAULT_CLIP_MODEL", "load_clip", "compute_clip_score"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


def load_clip(name_or_path: str | None = None):
    """(CLIPModel, CLIPProcessor) from a local folder or the hub; a clear error when neither works."""
    from transformers import CLIPModel, CLIPProcessor

    name = str(name_or_path or DEFAULT_CLIP_MODEL)
    local = Path(name).is_dir()
    try:
        model = CLIPModel.from_pretrained(name, local_files_only=local)
        processor = CLIPProcessor.from_pretrained(name, local_files_only=local)
    except Exception as e:  # noqa: BLE001 - OSError, HTTP errors, missing files
        raise RuntimeError(
            f"CLIP model {name!r} is not available ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "CLIP score needs a CLIP model: pass --clip_model PATH, a folder written by "
            "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained (e.g. a copy of "
            f"{DEFAULT_CLIP_MODEL}), or a hub id on a machine with internet."
        ) from e
    return model.eval(), processor


def _as_embedding(out) -> torch.Tensor:
    """transformers >= 5 returns an output object from ``get_*_features``; torchmetrics expects the tensor."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


class _TensorFeatures(torch.nn.Module):
    """CLIPModel view whose ``get_image_features`` / ``get_text_features`` return projected tensors."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return _as_embedding(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return _as_embedding(self.model.get_text_features(*args, **kwargs))


def compute_clip_score(
    images: Sequence[str | Path],
    prompts: Sequence[str],
    clip_model: str | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> tuple[float, str]:
    """Mean CLIP score of images against their prompts, and a description of the model used."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    model, processor = load_clip(clip_model)
    metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model), processor)).to(device)
    for i in range(0, len(images), batch_size):
        batch = []
        for p in images[i : i + batch_size]:
            with Image.open(p) as im:
                batch.append(pil_to_tensor(im.convert("RGB")).to(device))
        with torch.no_grad():
            metric.update(batch, list(prompts[i : i + batch_size]))
    desc = f"torchmetrics CLIPScore with {clip_model or DEFAULT_CLIP_MODEL} (100*max(cos,0), mean over images)"
    return float(metric.compute()), desc
