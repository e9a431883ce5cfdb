"""Embedded testbed: Fashion-MNIST data (``data``), natural textures (``textures``), small class-conditional diffusion
models (``architectures``, ``train``: a DiT and an SD-style U-Net) and a reference
CNN classifier (``reference_classifier``, ``train_classifier``).

Shipped assets live in ``bigain/assets/testbed/``."""
import os

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "testbed")
DIT_PATH = os.path.join(ASSETS_DIR, "dit-fmnist")
UNET_PATH = os.path.join(ASSETS_DIR, "unet-fmnist")
CLASSIFIER_PATH = os.path.join(ASSETS_DIR, "classifier")


def shipped_model_dirs(dataset: str) -> dict[str, str]:
    """The shipped DiT and U-Net folders of a testbed data set (`dit-<dataset>`, `unet-<dataset>`)."""
    return {kind: os.path.join(ASSETS_DIR, f"{kind}-{dataset}") for kind in ("dit", "unet")}


def classifier_dir(dataset: str) -> str:
    """The folder of a testbed data set's reference CNN (`classifier/` for Fashion-MNIST, `classifier-<dataset>/`)."""
    return CLASSIFIER_PATH if dataset == "fmnist" else os.path.join(ASSETS_DIR, f"classifier-{dataset}")
