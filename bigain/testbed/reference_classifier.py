"""Reference CNN classifier for Fashion-MNIST (32x32, 1 channel, input in [-1, 1]).

Used to judge class consistency of generated samples and as the feature extractor
of a domain FID (``features(x)`` returns the 128-d penultimate activations)."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch import nn

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "assets", "testbed", "classifier")
DEFAULT_CONFIG = {"channels": [16, 32, 64], "feature_dim": 128, "num_classes": 10, "in_channels": 1,
                  "image_size": 32, "dropout": 0.3}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class ReferenceCNN(nn.Module):
    """Small VGG-style CNN: 3 conv blocks of two 3x3 convs (32->16->8->4 px), global average pool,
    a ``feature_dim`` fully connected layer (the features) and a linear head."""

    def __init__(self, channels=(16, 32, 64), feature_dim: int = 128, num_classes: int = 10,
                 in_channels: int = 1, image_size: int = 32, dropout: float = 0.3):
        super().__init__()
        self.config = dict(channels=list(channels), feature_dim=feature_dim, num_classes=num_classes,
                           in_channels=in_channels, image_size=image_size, dropout=dropout)
        layers, c = [], in_channels
        for co in channels:
            layers.append(_block(c, co))
            c = co
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c, feature_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32) in [-1, 1] -> (B, feature_dim) penultimate features."""
        return self.fc(self.pool(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


def load_reference_classifier(path: Optional[str] = None, device="cpu") -> ReferenceCNN:
    """Load the shipped classifier (``model.safetensors`` + ``config.json``) in eval mode."""
    from safetensors.torch import load_file

    path = path or DEFAULT_PATH
    cfg_path = os.path.join(path, "config.json")
    w_path = os.path.join(path, "model.safetensors")
    if not os.path.exists(w_path):
        raise FileNotFoundError(f"reference classifier weights not found at {w_path}; "
                                "train them with `python -m bigain.testbed.train_classifier [--dataset NAME]`")
    with open(cfg_path) as f:
        cfg = json.load(f)
    arch = {k: cfg[k] for k in DEFAULT_CONFIG if k in cfg}
    model = ReferenceCNN(**arch)
    model.load_state_dict(load_file(w_path))
    return model.to(device).eval()


@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels for images (N, 1, 32, 32) in [-1, 1]."""
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model(images[i:i + batch_size].to(dev)).argmax(1).cpu())
    return torch.cat(out)
