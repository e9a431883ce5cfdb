"""Embedded testbed: Fashion-MNIST data (``data``), small class-conditional diffusion
models (``architectures``, ``train``: a DiT and an SD-style U-Net) and a reference
CNN classifier (``reference_classifier``, ``train_classifier``).

Shipped assets live in ``bigain/assets/testbed/``."""
import os

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "testbed")
DIT_PATH = os.path.join(ASSETS_DIR, "dit-fmnist")
UNET_PATH = os.path.join(ASSETS_DIR, "unet-fmnist")
CLASSIFIER_PATH = os.path.join(ASSETS_DIR, "classifier")
