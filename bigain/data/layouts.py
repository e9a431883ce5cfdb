"""Checks that a dataset on disk has its published layout, each returning what is wrong (or None).

``bigain.data.datasets`` turns a problem into a :class:`DatasetLayoutError` that also states the expected
layout, so a run fails at once with the fix instead of mislabelling images or crashing mid-run.

The ImageNet class list ``prompts/imagenet_wnids.txt`` (the 1,000 WordNet ids in class-index order,
i.e. sorted) is copied from timm's ``timm/data/_info/imagenet_synsets.txt`` (timm 1.0, Apache-2.0).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["FLAT_IMAGENET_VAL_HINT", "TORCHVISION_LAYOUTS", "bad_image_files", "class_folder_problem", "coco_problem",
           "imagenet_wnids", "torchvision_layout_problem", "without_download_hint"]

WNIDS_FILE = Path(__file__).resolve().parent / "prompts" / "imagenet_wnids.txt"
FLAT_VAL_NAME = re.compile(r"ILSVRC2012_val_\d{8}\.JPEG$", re.IGNORECASE)
FLAT_IMAGENET_VAL_HINT = (
    "it holds the validation images flat, as distributed (ILSVRC2012_val_*.JPEG); sort them into one folder per "
    "class (<wnid>/) first: put ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz in $DATASET_ROOT/imagenet "
    "and run `python -c \"import torchvision; torchvision.datasets.ImageNet('$DATASET_ROOT/imagenet', split='val')\"` "
    "(it writes val/<wnid>/*.JPEG), or use the widely used valprep.sh script"
)

# dataset -> (its folder under DATASET_ROOT, items torchvision reads there; '/' = a folder, {split} filled in)
TORCHVISION_LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pets": ("oxford-iiit-pet", ("images/", "annotations/", "annotations/{split}.txt")),
    "flowers": ("flowers-102", ("jpg/", "imagelabels.mat", "setid.mat")),
    "food": ("food-101", ("images/", "meta/", "meta/{split}.json")),
    "aircraft": ("fgvc-aircraft-2013b", ("data/", "data/images/", "data/variants.txt",
                                         "data/images_variant_{split}.txt")),
    "cifar10": ("cifar-10-batches-py", ("batches.meta", "test_batch", "data_batch_1", "data_batch_5")),
    "stl10": ("stl10_binary", ("class_names.txt", "test_X.bin", "test_y.bin", "train_X.bin", "train_y.bin",
                               "unlabeled_X.bin")),
    "mnist": ("MNIST/raw", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte",
                            "train-labels-idx1-ubyte")),
}


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids; position = class index."""
    wnids = tuple(WNIDS_FILE.read_text().split())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise RuntimeError(f"{WNIDS_FILE} must list the 1000 ImageNet wnids, sorted")
    return wnids


def _listing(names: Iterable[str], limit: int = 8) -> str:
    """A few names and how many more."""
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def class_folder_problem(folder: Path, expected: Sequence[str]) -> str | None:
    """What is wrong with a class-per-sub-folder tree that must hold exactly the `expected` folder names."""
    if not folder.is_dir():
        return f"{folder} does not exist"
    found = {d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if not found and any(FLAT_VAL_NAME.match(p.name) for p in folder.iterdir()):
        return f"{folder}: {FLAT_IMAGENET_VAL_HINT}"
    missing, unexpected = set(expected) - found, found - set(expected)
    if not missing and not unexpected:
        return None
    parts = [f"{folder} has {len(found)} class folders, expected the {len(expected)} wnid folders"]
    if missing:
        parts.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    return "; ".join(parts)


def _present(path: Path, item: str) -> bool:
    """An expected item exists: a folder for 'name/', a file otherwise."""
    return (path / item).is_dir() if item.endswith("/") else (path / item).is_file()


def torchvision_layout_problem(name: str, root: Path, split: str) -> str | None:
    """What is missing for torchvision's loader of `name` under DATASET_ROOT, with the likely cause."""
    sub, items = TORCHVISION_LAYOUTS[name]
    items = tuple(i.format(split=split) for i in items)
    base = root / sub
    missing = [i for i in items if not _present(base, i)]
    if not missing:
        return None
    if all(_present(root, i) for i in items):
        tops = sorted({i.split("/")[0] for i in items})
        return (f"found {', '.join(tops)} directly in {root}: the files must sit in their own folder; "
                f"move them into {base}/")
    if root.name == Path(sub).parts[0]:
        return f"DATASET_ROOT {root} looks like the {sub} folder itself; set DATASET_ROOT to its parent"
    return f"missing under {base}: {', '.join(missing)}"


def coco_problem(root: Path) -> str | None:
    """What is wrong with $DATASET_ROOT/coco/{annotations/instances_val2017.json, images/val2017/} (the zips unpack
    as annotations/ and val2017/, so the usual mistakes are a missing coco/ folder or val2017/ outside images/)."""
    ann, images = Path("annotations") / "instances_val2017.json", Path("images") / "val2017"
    base = root / "coco"
    problems = []
    if not (base / ann).is_file():
        where = next((p for p in (root / ann, root / "coco" / "instances_val2017.json") if p.is_file()), None)
        problems.append(f"{base / ann} not found" + (f" (found {where}: move it there)" if where else ""))
    if not (base / images).is_dir():
        where = next((p for p in (base / "val2017", root / "val2017", root / images) if p.is_dir()), None)
        problems.append(f"{base / images}/ not found" + (f" (found {where}/: move it there)" if where else ""))
    return "; ".join(problems) or None


def without_download_hint(message: str) -> str:
    """torchvision's error text without its 'download=True' advice (the runners never download datasets)."""
    return re.sub(r"\s*You can use download=True to download it\.?", "", message).strip()


def bad_image_files(paths: Iterable[str | Path]) -> list[tuple[str, str]]:
    """(path, reason) for every file PIL cannot open as an image (header check plus PIL's verify)."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            bad.append((str(path), f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
    return bad
