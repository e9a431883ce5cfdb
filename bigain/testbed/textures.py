"""Natural-texture testbed data: 32x32 grey crops of ten photographs bundled with scikit-image.

The classes were fixed by a rule written down before any model saw them (docs/testbed/textures.md): the
photographs in the scikit-image wheel (no download) whose docstring states CC0, public domain or "no known
copyright restrictions", excluding synthetic images and scans of print, the ten largest by pixel count.
Each photograph is converted to grey (ITU-R 601 luma, scikit-image's `rgb2gray`), shrunk so its shorter side
is at most 512 px (anti-aliased), and cut into 64x64 tiles: a quarter of them, spread over the photograph
and never adjacent, hold the test crops (each inside one tile); training crops touch no test-tile pixel, so
no test pixel is ever seen in training. Crops whose grey-level
standard deviation is below `MIN_CROP_STD` (flat background such as the retina's black border or the
Hubble field's empty sky) are never drawn. A fixed, class-interleaved 1,000-crop test subset ships as
``bigain/assets/testbed/textures_test_subset.npz`` (built by ``python -m bigain.testbed.textures --subset``).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from bigain.storage import atomic_write_bytes
from bigain.testbed.data import ASSETS_DIR, to_model_range


@dataclass(frozen=True)
class TextureSource:
    """One class: the scikit-image loader, its display name and the licence its docstring states."""

    loader: str
    name: str
    licence: str


# Ordered by class index. Pixel counts in scikit-image 0.26: retina 1411x1411, hubble_deep_field 872x1000,
# cell 660x550, rocket 427x640, then six 512x512 images; coffee (400x600) is the eleventh and left out.
SOURCES: tuple[TextureSource, ...] = (
    TextureSource("retina", "retina", "CC0 1.0"),
    TextureSource("hubble_deep_field", "hubble deep field", "NASA, public domain"),
    TextureSource("cell", "cell", "CC0"),
    TextureSource("rocket", "rocket", "SpaceX, public domain"),
    TextureSource("astronaut", "astronaut", "NASA, public domain"),
    TextureSource("brick", "brick", "CC0 (CC0Textures)"),
    TextureSource("camera", "camera", "CC0 (Lav Varshney)"),
    TextureSource("grass", "grass", "CC0"),
    TextureSource("gravel", "gravel", "CC0 (CC0Textures)"),
    TextureSource("immunohistochemistry", "immunohistochemistry", "no known copyright restrictions"),
)
CLASS_NAMES = [s.name for s in SOURCES]
NUM_CLASSES = len(SOURCES)
CROP = 32
MAX_SHORT_SIDE = 512
TILE = 64
MIN_CROP_STD = 8.0  # grey levels (0-255)
TRAIN_PER_CLASS = 6000
TEST_PER_CLASS = 500
SUBSET_PER_CLASS = 100
SEEDS = {"train": 20261206, "test": 20261207, "subset": 20261208}
SUBSET_PATH = os.path.join(ASSETS_DIR, "textures_test_subset.npz")


def grey_photograph(loader: str) -> np.ndarray:
    """The photograph as uint8 grey (H, W), shorter side at most `MAX_SHORT_SIDE`."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    image = getattr(skimage.data, loader)()
    grey = rgb2gray(image[..., :3]) if image.ndim == 3 else image.astype(np.float64) / 255.0
    scale = MAX_SHORT_SIDE / min(grey.shape)
    if scale < 1.0:
        shape = (round(grey.shape[0] * scale), round(grey.shape[1] * scale))
        grey = resize(grey, shape, order=1, anti_aliasing=True)
    return np.clip(np.round(grey * 255.0), 0, 255).astype(np.uint8)


def test_pixel_mask(shape: tuple[int, int]) -> np.ndarray:
    """Pixels reserved for testing: the TILE x TILE tiles (i, j) with (i + 2j) % 4 == 0 (a quarter, none adjacent)."""
    rows = np.arange(shape[0])[:, None] // TILE
    cols = np.arange(shape[1])[None, :] // TILE
    return (rows + 2 * cols) % 4 == 0


def box_sums(values: np.ndarray) -> np.ndarray:
    """Sum over every CROP x CROP window, indexed by its top-left corner (summed-area table)."""
    c = np.pad(values, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return c[CROP:, CROP:] - c[:-CROP, CROP:] - c[CROP:, :-CROP] + c[:-CROP, :-CROP]


def crop_stds(image: np.ndarray) -> np.ndarray:
    """Grey-level std of every CROP x CROP window, indexed by its top-left corner."""
    x = image.astype(np.float64)
    n = CROP * CROP
    mean = box_sums(x) / n
    return np.sqrt(np.maximum(box_sums(x * x) / n - mean * mean, 0.0))


def textured_positions(image: np.ndarray, region: str) -> np.ndarray:
    """Top-left (y, x) of every textured crop (std >= `MIN_CROP_STD`) of `region`.

    A "test" crop lies inside one test tile; a "train" crop touches no test pixel."""
    test_pixels = box_sums(test_pixel_mask(image.shape).astype(np.float64))
    inside = test_pixels == CROP * CROP if region == "test" else test_pixels == 0
    return np.argwhere(inside & (crop_stds(image) >= MIN_CROP_STD))


def draw_crops(image: np.ndarray, positions: np.ndarray, count: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """`count` crops at positions drawn without replacement (with replacement if there are too few)."""
    pick = rng.choice(len(positions), size=count, replace=count > len(positions))
    chosen = positions[np.sort(pick)]
    crops = np.stack([image[y:y + CROP, x:x + CROP] for y, x in chosen])
    return crops, chosen


def interleave_by_class(per_class: int) -> np.ndarray:
    """Order of a class-sorted array such that every prefix of k * NUM_CLASSES items holds k per class."""
    keys = np.tile(np.arange(per_class), NUM_CLASSES) * NUM_CLASSES + np.repeat(np.arange(NUM_CLASSES), per_class)
    return np.argsort(keys, kind="stable")


def make_crops(split: str, per_class: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops uint8 (N, 32, 32), labels int64, positions (N, 3) = class, y, x), class-interleaved.

    `split` "train" draws from the training region; "test" and "subset" from the test region."""
    if split not in SEEDS:
        raise ValueError(f"split must be one of {sorted(SEEDS)}, not {split!r}")
    default = {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS, "subset": SUBSET_PER_CLASS}[split]
    per_class = per_class or default
    rng = np.random.default_rng(SEEDS[split])
    region = "train" if split == "train" else "test"
    crops, where = [], []
    for label, source in enumerate(SOURCES):
        image = grey_photograph(source.loader)
        positions = textured_positions(image, region)
        c, p = draw_crops(image, positions, per_class, rng)
        crops.append(c)
        where.append(np.concatenate([np.full((per_class, 1), label), p], axis=1))
    order = interleave_by_class(per_class)
    crops_all, where_all = np.concatenate(crops)[order], np.concatenate(where)[order]
    return crops_all, where_all[:, 0].astype(np.int64), where_all


def load_textures(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 1, 32, 32) in [-1, 1], labels int64) for split train, test or subset."""
    if split == "subset":
        return load_test_subset()
    crops, labels, _ = make_crops(split)
    return to_model_range(crops), labels


def load_test_subset(path: Optional[str] = None, as_uint8: bool = False):
    """The shipped 1,000-crop test subset (class-interleaved), in model range or as uint8 (N, 32, 32)."""
    with np.load(path or SUBSET_PATH) as f:
        crops, labels = f["images"], f["labels"].astype(np.int64)
    return (crops, labels) if as_uint8 else (to_model_range(crops), labels)


def write_test_subset(path: str = SUBSET_PATH) -> np.ndarray:
    """Build and atomically write the shipped subset (crops, labels, positions); returns the labels."""
    import io

    crops, labels, positions = make_crops("subset")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=crops, labels=labels.astype(np.uint8), positions=positions.astype(np.int32))
    atomic_write_bytes(path, buffer.getvalue())
    return labels


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Build the natural-texture testbed's shipped test subset.")
    parser.add_argument("--subset", action="store_true", help=f"(re)write {SUBSET_PATH}")
    args = parser.parse_args(argv)
    if args.subset:
        labels = write_test_subset()
        print(f"wrote {SUBSET_PATH}: {len(labels)} crops, per class {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main()
