"""Evaluation datasets of docs/protocol.md §4 (under ``$DATASET_ROOT``), the testbed's Fashion-MNIST, and user folders.

    ds = build_dataset("pets", root="/data", img_size=512)
    image, label = ds[0]          # image: float (C, H, W) in [-1, 1]; label: classidx (list for multi-label)
    ds.classes.prompts            # prompt CSV rows, sorted by classidx

Labels live in the ``classidx`` space of the dataset's prompt CSV (for ImageNet-100 these are
ImageNet-1k ids), so a prediction is simply the ``classidx`` of the best-scoring row.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bigain.data.layouts import (
    TORCHVISION_LAYOUTS,
    bad_image_files,
    class_folder_problem,
    coco_problem,
    imagenet_wnids,
    torchvision_layout_problem,
    without_download_hint,
)
from bigain.testbed import data as tb
from bigain.testbed import textures

__all__ = [
    "DATASETS",
    "ClassTable",
    "DatasetLayoutError",
    "EvalDataset",
    "build_dataset",
    "check_dataset_args",
    "load_prompts",
    "match_channels",
    "subset_indices",
]

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
INTERPOLATIONS = ("bicubic", "bilinear", "lanczos", "nearest")


class DatasetLayoutError(FileNotFoundError):
    """A dataset that is missing or not laid out as expected (the message names the expected layout)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset lives under DATASET_ROOT and which split is evaluated."""

    layout: str  # human-readable expected layout, used in error messages
    default_split: str
    splits: tuple[str, ...]
    needs_root: bool = True
    multilabel: bool = False


DATASETS: dict[str, DatasetInfo] = {
    "imagenet": DatasetInfo("$DATASET_ROOT/imagenet/val/<wnid>/*.JPEG (the 1000 ImageNet class folders named by "
                            "WordNet id, e.g. n01440764/)", "val", ("val",)),
    "imagenet100": DatasetInfo("$DATASET_ROOT/imagenet-100/val/<wnid>/*.JPEG (the 100 ImageNet-100 class folders "
                               "named by WordNet id, e.g. n01558993/)", "val", ("val",)),
    "pets": DatasetInfo("$DATASET_ROOT/oxford-iiit-pet/{images/,annotations/test.txt} (torchvision OxfordIIITPet)",
                        "test", ("test", "trainval")),
    "coco2017": DatasetInfo("$DATASET_ROOT/coco/annotations/instances_val2017.json and "
                            "$DATASET_ROOT/coco/images/val2017/*.jpg", "val", ("val",), multilabel=True),
    "flowers": DatasetInfo("$DATASET_ROOT/flowers-102/{jpg/,imagelabels.mat,setid.mat} (torchvision Flowers102)",
                           "test", ("test", "val", "train")),
    "food": DatasetInfo("$DATASET_ROOT/food-101/{images/,meta/} (torchvision Food101)", "test", ("test", "train")),
    "aircraft": DatasetInfo("$DATASET_ROOT/fgvc-aircraft-2013b/data/ (torchvision FGVCAircraft)", "test",
                            ("test", "val", "train", "trainval")),
    "cifar10": DatasetInfo("$DATASET_ROOT/cifar-10-batches-py/ (torchvision CIFAR10)", "test", ("test", "train")),
    "stl10": DatasetInfo("$DATASET_ROOT/stl10_binary/ (torchvision STL10)", "test", ("test", "train")),
    "mnist": DatasetInfo("$DATASET_ROOT/MNIST/raw/ (torchvision MNIST)", "test", ("test", "train")),
    "fmnist": DatasetInfo("the shipped subset bigain/assets/testbed/fmnist_test_subset.npz, or the full test set "
                          "from /usr/share/datasets/fashion-mnist/t10k-*.gz (Debian dataset-fashion-mnist)",
                          "subset", ("subset", "test"), needs_root=False),
    "textures": DatasetInfo("the shipped subset bigain/assets/testbed/textures_test_subset.npz, or 500 test crops per "
                            "class cut from the scikit-image photographs (docs/testbed/textures.md)",
                            "subset", ("subset", "test"), needs_root=False),
    "folder": DatasetInfo("--data_dir DIR with one sub-folder of images per class and DIR/prompts.csv "
                          "(prompt,classname,classidx; classname = sub-folder name); every file with an image "
                          "extension must be an image", "all", ("all",), needs_root=False),
}


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class ClassTable:
    """Rows of a prompt CSV sorted by classidx: what the classifier conditions on."""

    prompts: tuple[str, ...]
    classnames: tuple[str, ...]
    classidx: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"prompts": list(self.prompts), "classnames": list(self.classnames), "classidx": list(self.classidx)}


# The ImageNet-100 subset: ImageNet class ids, in order (the published list).
IMAGENET100_IDS: tuple[int, ...] = (
    15, 45, 54, 57, 64, 74, 90, 99, 119, 120, 122, 131, 137, 151, 155, 157, 158, 166, 167, 169, 176, 180, 209, 211,
    222, 228, 234, 236, 242, 246, 267, 268, 272, 275, 277, 281, 299, 305, 313, 317, 331, 342, 368, 374, 407, 421,
    431, 449, 452, 455, 479, 494, 498, 503, 508, 544, 560, 570, 592, 593, 599, 606, 608, 619, 620, 653, 659, 662,
    665, 667, 674, 682, 703, 708, 717, 724, 748, 758, 765, 766, 772, 775, 796, 798, 830, 854, 857, 858, 872, 876,
    882, 904, 908, 936, 938, 953, 959, 960, 993, 994,
)


def load_prompts(name_or_path: str | Path) -> ClassTable:
    """Read a prompt CSV (a built-in dataset name or a path); validates columns and unique classidx."""
    path = Path(name_or_path)
    if not path.suffix == ".csv":
        path = PROMPTS_DIR / f"{name_or_path}_prompts.csv"
    if not path.is_file():
        raise DatasetLayoutError(f"prompt CSV {path} not found (columns: prompt,classname,classidx); "
                                 f"generate one with `python -m bigain.make_prompts`")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"prompt", "classname", "classidx"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetLayoutError(f"{path}: missing column(s) {sorted(missing)}; "
                                     f"expected header prompt,classname,classidx")
        rows = []
        for r in reader:
            try:
                rows.append((r["prompt"], r["classname"], int(r["classidx"])))
            except (TypeError, ValueError):
                raise DatasetLayoutError(f"{path}, line {reader.line_num}: classidx {r['classidx']!r} is not an "
                                         f"integer (columns: prompt,classname,classidx)") from None
        rows.sort(key=lambda r: r[2])
    if not rows:
        raise DatasetLayoutError(f"{path}: no rows")
    ids = [r[2] for r in rows]
    if len(set(ids)) != len(ids):
        raise DatasetLayoutError(f"{path}: duplicate classidx values")
    return ClassTable(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(ids))


# ----------------------------------------------------------------------------- transforms


def _interpolation(name: str):
    """torchvision InterpolationMode for a name."""
    from torchvision.transforms import InterpolationMode

    if name not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; allowed: {', '.join(INTERPOLATIONS)}")
    return InterpolationMode(name)


def make_transform(img_size: int | None, interpolation: str = "bicubic") -> Callable[[Any], torch.Tensor]:
    """PIL image or [-1,1] tensor -> [-1,1] float tensor: resize short side, center-crop (protocol §1)."""
    import torchvision.transforms.functional as TF

    mode = _interpolation(interpolation)
    name_ok_for_tensor = interpolation != "lanczos"  # tensors have no lanczos kernel: bicubic instead

    def transform(img: Any) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):  # PIL: resize/crop in PIL (lanczos available), then to [-1, 1]
            img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
            if img_size is not None:
                img = TF.center_crop(TF.resize(img, img_size, interpolation=mode), img_size)
            return TF.to_tensor(img) * 2 - 1
        x = img.float()
        if img_size is not None and tuple(x.shape[-2:]) != (img_size, img_size):
            tmode = mode if name_ok_for_tensor else _interpolation("bicubic")
            x = TF.center_crop(TF.resize(x, img_size, interpolation=tmode, antialias=True), img_size).clamp(-1, 1)
        return x

    return transform


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Make (..., C, H, W) images have `channels` channels: gray -> RGB repeat, RGB -> gray luma."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1:
        return x.expand(*x.shape[:-3], channels, *x.shape[-2:])
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(-3, keepdim=True)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


# ----------------------------------------------------------------------------- datasets


@dataclass
class EvalDataset(torch.utils.data.Dataset):
    """Images (C, H, W) in [-1, 1] with labels in the prompt CSV's classidx space."""

    name: str
    split: str
    classes: ClassTable
    get_image: Callable[[int], Any]  # index -> PIL image or tensor
    labels: Sequence[Any]  # int, or list of ints for multi-label
    transform: Callable[[Any], torch.Tensor]
    multilabel: bool = False
    metadata_classnames: list[str] = field(default_factory=list)
    prefix_subsets: bool = False  # every prefix is class-balanced (the interleaved fmnist subset): take the first N

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        return self.transform(self.get_image(i)), self.labels[i]


def _root_dir(root: str | os.PathLike | None, name: str) -> Path:
    """DATASET_ROOT as a folder, or a DatasetLayoutError naming the expected layout."""
    root = root or os.environ.get("DATASET_ROOT")
    if not root:
        raise DatasetLayoutError(f"dataset {name!r} needs DATASET_ROOT (set the environment variable or pass "
                                 f"--dataset_root); expected layout: {DATASETS[name].layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetLayoutError(f"DATASET_ROOT {path} is not a folder; expected layout: {DATASETS[name].layout}")
    return path


def _layout_error(name: str, detail: str) -> DatasetLayoutError:
    """Error for a dataset that is missing or malformed."""
    return DatasetLayoutError(f"dataset {name!r}: {detail}; expected layout: {DATASETS[name].layout}")


def _image_folder(folder: Path, name: str, expected: Sequence[str] | None = None,
                  check_images: bool = False, skip_bad_images: bool = False) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class folder names, [(file, folder index)]) of a class-per-sub-folder tree.

    `expected`: the exact class folder names the published layout has. `check_images`: open every
    file now, so a non-image is named here (and left out with `skip_bad_images`) instead of crashing the run.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    problem = class_folder_problem(folder, expected) if expected is not None else None
    if problem is None and not folder.is_dir():
        problem = f"{folder} does not exist"
    if problem:
        raise _layout_error(name, problem)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise _layout_error(name, f"{folder} has no class sub-folders")
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                           allow_empty=True)
    if check_images:
        bad = bad_image_files(p for p, _ in samples)
        if bad and not skip_bad_images:
            listing = "\n".join(f"  {p}: {why}" for p, why in bad[:20]) + (f"\n  ... {len(bad) - 20} more"
                                                                            if len(bad) > 20 else "")
            raise _layout_error(name, f"{len(bad)} file(s) under {folder} are not readable images:\n{listing}\n"
                                      f"remove them, or leave them out with --skip_bad_images")
        if bad:
            skipped = {p for p, _ in bad}
            samples = [s for s in samples if s[0] not in skipped]
            print(f"dataset {name!r}: left out {len(bad)} unreadable file(s) (--skip_bad_images): "
                  f"{', '.join(p for p, _ in bad[:5])}{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
    if not samples:
        raise _layout_error(name, f"{folder} holds no images")
    return classes, samples


def _pil_loader(path: str):
    """Open an image file as PIL."""
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def _torchvision(name: str, root: Path, split: str):
    """The torchvision dataset object for pets/flowers/food/aircraft/cifar10/stl10/mnist (download=False)."""
    import torchvision.datasets as tvd

    builders = {
        "pets": lambda: tvd.OxfordIIITPet(str(root), split=split, target_types="category", download=False),
        "flowers": lambda: tvd.Flowers102(str(root), split=split, download=False),
        "food": lambda: tvd.Food101(str(root), split=split, download=False),
        "aircraft": lambda: tvd.FGVCAircraft(str(root), split=split, annotation_level="variant", download=False),
        "cifar10": lambda: tvd.CIFAR10(str(root), train=split == "train", download=False),
        "stl10": lambda: tvd.STL10(str(root), split=split, download=False),
        "mnist": lambda: tvd.MNIST(str(root), train=split == "train", download=False),
    }
    problem = torchvision_layout_problem(name, root, split)
    if problem:
        raise _layout_error(name, problem)
    try:
        return builders[name]()
    except (RuntimeError, FileNotFoundError, OSError) as err:  # present but rejected (e.g. checksum mismatch)
        folder = root / TORCHVISION_LAYOUTS[name][0]
        raise _layout_error(name, f"torchvision could not read {folder} ({without_download_hint(str(err))}); "
                                  f"the files may be corrupted or from another release") from err


def _tv_labels(ds: Any) -> list[int]:
    """Integer labels of a torchvision dataset without decoding images."""
    for attr in ("_labels", "targets", "labels"):
        if hasattr(ds, attr):
            return [int(v) for v in getattr(ds, attr)]
    raise AttributeError(f"cannot read labels of {type(ds).__name__}")


def _coco(root: Path) -> tuple[list[Path], list[list[int]], list[str]]:
    """COCO-2017 val: image paths, sorted multi-labels (0..79 in category-id order), category names."""
    ann = root / "coco" / "annotations" / "instances_val2017.json"
    img_dir = root / "coco" / "images" / "val2017"
    problem = coco_problem(root)
    if problem:
        raise _layout_error("coco2017", problem)
    data = json.loads(ann.read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_to_idx = {c["id"]: i for i, c in enumerate(cats)}
    labels: dict[int, set[int]] = {}
    for a in data["annotations"]:
        labels.setdefault(a["image_id"], set()).add(cat_to_idx[a["category_id"]])
    images = sorted(data["images"], key=lambda im: im["id"])
    # images without any object annotation cannot be classified correctly: they are left out
    images = [im for im in images if im["id"] in labels]
    return ([img_dir / im["file_name"] for im in images], [sorted(labels[im["id"]]) for im in images],
            [c["name"] for c in cats])


def _fmnist(split: str) -> tuple[torch.Tensor, list[int]]:
    """Fashion-MNIST through the testbed loader: (N, 1, 32, 32) in [-1, 1] and labels."""
    try:
        images, labels = tb.load_test_subset() if split == "subset" else tb.load_fashion_mnist("test")
    except (FileNotFoundError, OSError, ValueError) as err:
        raise _layout_error("fmnist", str(err)) from err
    return torch.from_numpy(images), [int(v) for v in labels]


def _textures(split: str) -> tuple[torch.Tensor, list[int]]:
    """The natural-texture testbed: (N, 1, 32, 32) in [-1, 1] and labels."""
    try:
        images, labels = textures.load_textures(split)
    except (FileNotFoundError, OSError, ValueError, ImportError) as err:
        raise _layout_error("textures", str(err)) from err
    return torch.from_numpy(images), [int(v) for v in labels]


def _imagenet(name: str, root_dir: Path, split: str, table: ClassTable, transform: Callable,
              names_from_metadata: bool) -> EvalDataset:
    """ImageNet / ImageNet-100 val: wnid folders checked against the published class list; labels = ImageNet ids."""
    wnids = imagenet_wnids()
    expected = list(wnids) if name == "imagenet" else [wnids[i] for i in IMAGENET100_IDS]
    sub = "imagenet" if name == "imagenet" else "imagenet-100"
    classes, samples = _image_folder(root_dir / sub / "val", name, expected)
    ids = [wnids.index(c) for c in classes]
    if not names_from_metadata and sorted(table.classidx) != sorted(ids):
        raise DatasetLayoutError(f"dataset {name!r}: the prompt CSV's classidx values are not the ImageNet ids of "
                                 f"the {len(ids)} class folders (e.g. {classes[0]} = {ids[0]})")
    labels = [ids[t] for _, t in samples]
    return EvalDataset(name, split, table, lambda i: _pil_loader(samples[i][0]), labels, transform,
                       metadata_classnames=classes)


def _check_csv_matches(name: str, table: ClassTable, n_classes: int) -> None:
    """The prompt CSV must describe exactly the dataset's classes."""
    if len(table) != n_classes:
        raise DatasetLayoutError(f"dataset {name!r}: prompt CSV has {len(table)} rows but the data has "
                                 f"{n_classes} classes")


def check_dataset_args(name: str, root: str | None = None, data_dir: str | None = None,
                       split: str | None = None) -> str:
    """Validate dataset name / root / split cheaply (no image decoding); returns the effective split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    info = DATASETS[name]
    split = split or info.default_split
    if split not in info.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; allowed: {', '.join(info.splits)}")
    if info.needs_root:
        _root_dir(root, name)
    if name == "folder" and not data_dir:
        raise DatasetLayoutError(f"dataset 'folder' needs --data_dir; expected layout: {info.layout}")
    return split


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str | None = None,
                  img_size: int | None = None, interpolation: str = "bicubic", data_dir: str | None = None,
                  prompts_csv: str | None = None, names_from_metadata: bool = False,
                  skip_bad_images: bool = False) -> EvalDataset:
    """Build an evaluation dataset; `prompts_csv` overrides the shipped CSV (labels must use its classidx).

    A `folder` dataset's files are all opened first: unreadable ones are an error naming them, or are
    left out with `skip_bad_images` (the CLI's --skip_bad_images).
    """
    split = check_dataset_args(name, str(root) if root else None, data_dir, split)
    transform = make_transform(img_size, interpolation)
    if name == "folder":
        folder = Path(data_dir)
        csv_path = Path(prompts_csv) if prompts_csv else folder / "prompts.csv"
        classes, samples = _image_folder(folder, name, check_images=True, skip_bad_images=skip_bad_images)
        if not csv_path.is_file():
            raise _layout_error(name, f"{csv_path} not found (write one with "
                                      f"`python -m bigain.make_prompts --folder {folder}`)")
        table = load_prompts(csv_path)
        by_name = {n: i for n, i in zip(table.classnames, table.classidx)}
        by_name.update({n.replace(" ", "_"): i for n, i in zip(table.classnames, table.classidx)})
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise _layout_error(name, f"class folders {missing[:5]} have no row in {csv_path} (classname column)")
        labels = [by_name[classes[t]] for _, t in samples]
        return EvalDataset(name, split, table, lambda i: _pil_loader(samples[i][0]), labels, transform,
                           metadata_classnames=classes)

    table = load_prompts(prompts_csv or name) if not names_from_metadata else ClassTable((), (), ())
    if name in ("fmnist", "textures"):
        images, labels = _fmnist(split) if name == "fmnist" else _textures(split)
        return EvalDataset(name, split, table, lambda i: images[i], labels, transform,
                           prefix_subsets=split == "subset")
    root_dir = _root_dir(root, name)
    if name in ("imagenet", "imagenet100"):
        return _imagenet(name, root_dir, split, table, transform, names_from_metadata)
    if name == "coco2017":
        paths, labels, cat_names = _coco(root_dir)
        if not names_from_metadata:
            _check_csv_matches(name, table, len(cat_names))
        return EvalDataset(name, split, table, lambda i: _pil_loader(str(paths[i])), labels, transform,
                           multilabel=True, metadata_classnames=cat_names)
    ds = _torchvision(name, root_dir, split)
    labels = _tv_labels(ds)
    names = list(getattr(ds, "classes", []) or [])
    if not names_from_metadata:
        _check_csv_matches(name, table, len(names) if names else max(labels) + 1)
    return EvalDataset(name, split, table, lambda i: ds[i][0], labels, transform, metadata_classnames=names)


def subset_indices(n: int, max_images: int | None, prefix: bool = False) -> list[int]:
    """Indices of up to `max_images` images: spread evenly (class-sorted data stays balanced), or the first ones.

    Use ``prefix=dataset.prefix_subsets``: an interleaved dataset (every prefix balanced) would
    give one class per stride under even spacing.
    """
    if max_images is None or max_images >= n:
        return list(range(n))
    if max_images <= 0:
        raise ValueError("max_images must be positive")
    if prefix:
        return list(range(max_images))
    step = n / max_images
    return sorted({int(i * step) for i in range(max_images)})
