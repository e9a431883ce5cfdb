"""Real images to score generated ones against: image folders, the shipped Fashion-MNIST subset and
every ``bigain.data.datasets`` name, each with a stable identity for feature caching (``eval.metrics``).

    resolve_reference("fmnist-test"), resolve_reference("pets:trainval"), resolve_reference("real_dir/")
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from bigain.data import DATASETS, build_dataset
from bigain.testbed import textures
from bigain.testbed.data import SUBSET_PATH

__all__ = ["IMAGE_EXTS", "REFERENCES", "Reference", "ImageSource", "check_images", "list_images", "resize_center_crop",
           "register_reference", "dataset_reference", "resolve_reference"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def check_images(files: Sequence[Path], limit: int = 10) -> None:
    """ValueError naming every file that does not verify as a complete image (truncated, garbage), checked before
    feature extraction so a damaged file is named instead of failing minutes in; PIL's verify() reads no pixels."""
    bad = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as err:  # noqa: BLE001 - OSError, SyntaxError, DecompressionBombError...: all "damaged"
            bad.append(f"{path} ({type(err).__name__}: {err})")
    if bad:
        shown = "\n  ".join(bad[:limit]) + (f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else "")
        raise ValueError(f"{len(bad)} damaged image file(s); regenerate or remove them:\n  {shown}")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Short side to ``size`` (bicubic, antialiased), then center crop to ``size`` x ``size``."""
    if img.size != (size, size):
        img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        img = TF.center_crop(img, [size, size])
    return img


class ImageSource(Dataset):
    """uint8 (3, S, S) tensors from image files or from a callable returning PIL images."""

    def __init__(self, items: Sequence[Any], size: int, load: Callable[[Any], Image.Image] | None = None):
        self.items, self.size, self.load = list(items), size, load or Image.open

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        with self.load(self.items[i]) as img:
            img = resize_center_crop(img.convert("RGB"), self.size)
            return TF.pil_to_tensor(img)


@dataclass(frozen=True)
class Reference:
    """Real images to compare against: a dataset, a stable identity for caching, and a description."""

    source_items: list[Any]
    load: Callable[[Any], Image.Image] | None
    identity: str
    description: str


REFERENCES: dict[str, Callable[[str | None], Reference]] = {}


def register_reference(name: str) -> Callable[[Callable[[str | None], Reference]], Callable[[str | None], Reference]]:
    """Decorator registering a named reference set ``fn(dataset_root) -> Reference``; duplicates raise."""

    def deco(fn: Callable[[str | None], Reference]) -> Callable[[str | None], Reference]:
        if name in REFERENCES:
            raise ValueError(f"reference {name!r} is already registered")
        REFERENCES[name] = fn
        return fn

    return deco


class _ArrayImage:
    """Picklable loader: index into a uint8 (N, H, W[, C]) array -> PIL image."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.array[i])


@register_reference("fmnist-test")
def _fmnist_test(dataset_root: str | None) -> Reference:
    """The testbed's 1,000-image Fashion-MNIST test subset, zero-padded 28 -> 32 like the models' data."""
    with np.load(SUBSET_PATH) as d:
        imgs = np.pad(d["images"], ((0, 0), (2, 2), (2, 2)))
    h = hashlib.sha1(imgs.tobytes()).hexdigest()[:16]
    return Reference(list(range(len(imgs))), _ArrayImage(imgs), f"fmnist-test:{h}",
                     "Fashion-MNIST test subset (1,000 images, bigain/assets/testbed), padded to 32x32")


@register_reference("textures-test")
def _textures_test(dataset_root: str | None) -> Reference:
    """The texture testbed's 1,000-crop test subset (32x32 grey, from regions no training crop touches)."""
    imgs, _ = textures.load_test_subset(as_uint8=True)
    h = hashlib.sha1(imgs.tobytes()).hexdigest()[:16]
    return Reference(list(range(len(imgs))), _ArrayImage(imgs), f"textures-test:{h}",
                     "natural-texture test subset (1,000 crops, bigain/assets/testbed, docs/testbed/textures.md)")


class _DatasetImage:
    """Loader: index into a ``bigain.data.datasets`` EvalDataset -> PIL image (tensors in [-1, 1] converted)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, i: int) -> Image.Image:
        img = self.dataset.get_image(i)
        if isinstance(img, torch.Tensor):
            arr = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            arr = arr.permute(1, 2, 0).numpy()
            img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        return img


def dataset_reference(name: str, dataset_root: str | None, split: str | None = None) -> Reference:
    """Real images of a protocol dataset (``bigain.data.datasets``: its evaluation split under DATASET_ROOT)."""
    ds = build_dataset(name, root=dataset_root, split=split, names_from_metadata=True)
    first = getattr(ds, "metadata_classnames", [])[:3]
    ident = f"dataset:{name}:{ds.split}:{dataset_root or os.environ.get('DATASET_ROOT', '')}:{len(ds)}:{first}"
    return Reference(list(range(len(ds))), _DatasetImage(ds), ident,
                     f"dataset {name} ({ds.split} split, {len(ds)} images, bigain.data.datasets)")


def _register_datasets() -> None:
    """Every ``bigain.data.datasets`` name (except user folders) as a reference set."""
    for name in DATASETS:
        if name != "folder" and name not in REFERENCES:
            register_reference(name)(lambda root, _n=name: dataset_reference(_n, root))


_register_datasets()


def _folder_reference(folder: Path, description: str | None = None) -> Reference:
    """A folder of real images; identity covers names, sizes and mtimes."""
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) under {folder}")
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return Reference(files, None, f"dir:{folder.resolve()}:{h.hexdigest()[:16]}",
                     description or f"folder {folder.resolve()}")


def resolve_reference(reference: str | Path, dataset_root: str | None = None) -> Reference:
    """A folder path or a registered reference name -> Reference; anything else is a clear error."""
    if str(reference) in REFERENCES:
        return REFERENCES[str(reference)](dataset_root)
    if ":" in str(reference) and str(reference).split(":", 1)[0] in REFERENCES:
        name, split = str(reference).split(":", 1)  # "pets:trainval"
        return dataset_reference(name, dataset_root, split)
    path = Path(reference)
    if path.is_dir():
        return _folder_reference(path)
    raise ValueError(
        f"reference {str(reference)!r} is neither a folder nor a known reference set {sorted(REFERENCES)}"
    )
