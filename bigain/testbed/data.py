"""Fashion-MNIST for the embedded testbed.

The full data set is read from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), or from torchvision's download when a
user has internet.  Images are zero-padded 28 -> 32 (2 px each side) and scaled
to [-1, 1], shape (N, 1, 32, 32).  A fixed, stratified 1,000-image test subset
ships with the repository (``bigain/assets/testbed/fmnist_test_subset.npz``).
"""
from __future__ import annotations

import gzip
import json
import os
from typing import Optional, Tuple

import numpy as np

from bigain.storage import file_digest

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
NUM_CLASSES = 10
IMAGE_SIZE = 32
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "testbed")
SUBSET_PATH = os.path.join(ASSETS_DIR, "fmnist_test_subset.npz")
CHECKSUMS_PATH = os.path.join(ASSETS_DIR, "checksums.json")
SUBSET_SEED = 20240607
SUBSET_PER_CLASS = 100


def _read_idx(path: str) -> np.ndarray:
    """Parse an idx file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported idx dtype 0x{dtype_code:02x}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch")
    return arr.reshape(dims).copy()


def _load_raw_debian(split: str, root: str) -> Tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    imgs = _read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    return imgs, labels.astype(np.int64)


def _load_raw_torchvision(split: str, root: str) -> Tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import FashionMNIST  # optional dependency

    ds = FashionMNIST(root=root, train=(split == "train"), download=True)
    return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.int64)


def load_fashion_mnist_uint8(split: str = "train", root: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) for ``split`` in {train, test}."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    errors = []
    debian_root = root or os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR)
    try:
        return _load_raw_debian(split, debian_root)
    except (OSError, ValueError) as e:
        errors.append(f"Debian files under {debian_root}: {e}")
    tv_root = os.environ.get("DATASET_ROOT", os.path.join(os.path.expanduser("~"), ".cache", "bigain", "datasets"))
    try:
        return _load_raw_torchvision(split, tv_root)
    except Exception as e:  # ImportError, network errors, ...
        errors.append(f"torchvision download into {tv_root}: {e!r}")
    raise RuntimeError(
        "Fashion-MNIST not found. Install the Debian package `dataset-fashion-mnist` "
        f"(files in {DEBIAN_DIR}), set FASHION_MNIST_DIR to a folder with the idx .gz files, "
        "or install torchvision with internet access.\n  " + "\n  ".join(errors))


def to_model_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (N, 28|32, 28|32) -> float32 (N, 1, 32, 32) in [-1, 1], zero (-1) padded."""
    x = images_uint8.astype(np.float32) / 127.5 - 1.0
    if x.shape[-1] == 28:
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)), mode="constant", constant_values=-1.0)
    return x[:, None, :, :]


def load_fashion_mnist(split: str = "train", root: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Return (images float32 (N, 1, 32, 32) in [-1, 1], labels int64)."""
    imgs, labels = load_fashion_mnist_uint8(split, root)
    return to_model_range(imgs), labels


def make_test_subset(per_class: int = SUBSET_PER_CLASS, seed: int = SUBSET_SEED, root: Optional[str] = None):
    """Stratified subset of the test split: ``per_class`` images per class, fixed seed.

    Returns (images uint8 (N, 28, 28), labels int64 (N,), indices into the test split)."""
    imgs, labels = load_fashion_mnist_uint8("test", root)
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(NUM_CLASSES):
        cls_idx = np.flatnonzero(labels == c)
        idx.append(np.sort(rng.choice(cls_idx, size=per_class, replace=False)))
    idx = np.concatenate(idx)
    # interleave classes deterministically so that any prefix is roughly balanced
    order = np.argsort(np.tile(np.arange(per_class), NUM_CLASSES) * NUM_CLASSES
                       + np.repeat(np.arange(NUM_CLASSES), per_class), kind="stable")
    idx = idx[order]
    return imgs[idx], labels[idx], idx


def load_test_subset(path: Optional[str] = None, as_uint8: bool = False):
    """The shipped 1,000-image test subset.

    Returns (images float32 (N, 1, 32, 32) in [-1, 1], labels int64 (N,)), or the raw
    uint8 (N, 28, 28) images when ``as_uint8``.  Interleaved by class (any prefix of
    10k images holds k per class)."""
    with np.load(path or SUBSET_PATH) as f:
        imgs, labels = f["images"], f["labels"].astype(np.int64)
    if as_uint8:
        return imgs, labels
    return to_model_range(imgs), labels


def sha256_file(path: str) -> str:
    """sha256 of a shipped file (for checksums.json)."""

    return file_digest(path, "sha256")


def write_checksums(assets_dir: str = ASSETS_DIR, out: Optional[str] = None) -> dict:
    """Record sha256 of every shipped file under ``assets_dir`` (except the checksum file)."""
    out = out or os.path.join(assets_dir, "checksums.json")
    sums = {}
    for dirpath, dirnames, filenames in os.walk(assets_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "checkpoints" and not d.startswith("."))
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            rel = os.path.relpath(p, assets_dir).replace(os.sep, "/")
            if os.path.abspath(p) == os.path.abspath(out) or fn.startswith("."):
                continue
            sums[rel] = sha256_file(p)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"algorithm": "sha256", "files": sums}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, out)
    return sums


def verify_checksums(assets_dir: str = ASSETS_DIR) -> dict:
    """Return {relative path: problem} for files that do not match checksums.json (empty = OK)."""
    with open(os.path.join(assets_dir, "checksums.json")) as f:
        sums = json.load(f)["files"]
    bad = {}
    for rel, digest in sums.items():
        p = os.path.join(assets_dir, rel)
        if not os.path.exists(p):
            bad[rel] = "missing"
        elif sha256_file(p) != digest:
            bad[rel] = "sha256 mismatch"
    return bad


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build the shipped test subset and/or checksums.")
    ap.add_argument("--subset", action="store_true", help="(re)build fmnist_test_subset.npz")
    ap.add_argument("--checksums", action="store_true", help="(re)write checksums.json")
    a = ap.parse_args()
    if a.subset:
        imgs, labels, idx = make_test_subset()
        os.makedirs(ASSETS_DIR, exist_ok=True)
        tmp = SUBSET_PATH + ".tmp.npz"
        np.savez_compressed(tmp, images=imgs, labels=labels.astype(np.uint8), test_indices=idx.astype(np.int32))
        os.replace(tmp, SUBSET_PATH)
        print(f"wrote {SUBSET_PATH}: {imgs.shape} counts={np.bincount(labels).tolist()}")
    if a.checksums:
        print(json.dumps(write_checksums(), indent=1))
