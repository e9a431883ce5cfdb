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

__all__ = ["DEFAULT_CLIP_MODEL", "clip_unavailable_reason", "load_clip", "compute_clip_score"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
HOW_TO_PROVIDE = ("pass --clip_model PATH (a folder written by CLIPModel.save_pretrained and "
                  f"CLIPProcessor.save_pretrained), or fetch a hub copy with `hf download {DEFAULT_CLIP_MODEL}` "
                  "on a machine with internet and copy the HF cache")
LOCAL_FILES = {"config.json": ("config.json",), "weights": ("model.safetensors", "pytorch_model.bin",
                                                            "model.safetensors.index.json"),
               "image processor": ("preprocessor_config.json", "processor_config.json"),
               "tokenizer": ("tokenizer.json", "vocab.json")}


def clip_unavailable_reason(name_or_path: str | None = None, offline: bool = False) -> str | None:
    """Why the CLIP model cannot be loaded (cheap: file checks, the HF cache, one small download), or None."""
    name = str(name_or_path or DEFAULT_CLIP_MODEL)
    folder = Path(name).expanduser()
    if folder.is_dir():
        missing = [what for what, files in LOCAL_FILES.items() if not any((folder / f).is_file() for f in files)]
        return f"CLIP folder {folder} lacks {', '.join(missing)}; {HOW_TO_PROVIDE}" if missing else None
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return f"CLIP model {name!r} is neither a folder nor a hub id; {HOW_TO_PROVIDE}"
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    if offline:
        return f"CLIP model {name!r} is not in the HF cache and downloads are off (offline); {HOW_TO_PROVIDE}"
    try:
        hf_hub_download(name, "config.json")
    except Exception as err:  # noqa: BLE001 - no network, unknown repo, gated repo
        return (f"CLIP model {name!r} is not in the HF cache and cannot be downloaded "
                f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); {HOW_TO_PROVIDE}")
    return None


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
