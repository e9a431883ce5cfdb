"""Domain feature extractors: a classifier whose penultimate features serve torch-fidelity as FID
features ("domain FID") and whose logits give class consistency.

A domain extractor is registered once by name with a factory returning a module that has
``features(x) -> (B, D)`` and ``forward(x) -> (B, num_classes)`` logits on input
``(B, in_channels, image_size, image_size)`` in [-1, 1]. Each registration also registers a
torch-fidelity feature extractor ``domain-<name>`` (features "features" and "logits"), so
``torch_fidelity`` metric code can run on it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bigain.testbed import classifier_dir
from bigain.testbed.reference_classifier import load_reference_classifier

__all__ = [
    "DomainExtractorSpec",
    "DOMAIN_EXTRACTORS",
    "register_domain_extractor",
    "get_domain_extractor",
    "list_domain_extractors",
    "fidelity_name",
    "build_domain_extractor",
    "uint8_to_model_input",
]


@dataclass(frozen=True)
class DomainExtractorSpec:
    """How to build a domain classifier and what input it expects."""

    name: str
    factory: Callable[[], nn.Module]
    in_channels: int
    image_size: int
    description: str


DOMAIN_EXTRACTORS: dict[str, DomainExtractorSpec] = {}


def fidelity_name(name: str) -> str:
    """torch-fidelity registry name of a domain extractor."""
    return f"domain-{name}"


def uint8_to_model_input(x: torch.Tensor, in_channels: int, image_size: int) -> torch.Tensor:
    """uint8 (B, 3|1, H, W) -> float (B, in_channels, S, S) in [-1, 1] (channel mean for grey, antialiased resize)."""
    x = x.float() / 127.5 - 1.0
    if in_channels == 1 and x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    elif in_channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _make_fidelity_class(spec: DomainExtractorSpec) -> type:
    """A ``FeatureExtractorBase`` subclass wrapping ``spec``'s classifier."""

    class DomainFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity view of a domain classifier: uint8 images -> penultimate features and logits."""

        SPEC = spec

        def __init__(self, name: str, features_list: list[str], **kwargs):
            super().__init__(name, features_list)
            self.net = spec.factory().eval().requires_grad_(False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """Return the requested features, in ``features_list`` order."""
            device = next(self.net.parameters()).device
            x = uint8_to_model_input(x.to(device), spec.in_channels, spec.image_size)
            out = {}
            feats = self.net.features(x)
            out["features"] = feats.float().flatten(1)
            if "logits" in self.features_list:
                out["logits"] = self.net(x).float()
            return tuple(out[k] for k in self.features_list)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"fid": "features", "kid": "features", "prc": "features", "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, spec.image_size, spec.image_size, dtype=torch.uint8)

    DomainFeatureExtractor.__name__ = f"DomainFeatureExtractor_{spec.name}"
    return DomainFeatureExtractor


def register_domain_extractor(
    name: str, factory: Callable[[], nn.Module], *, in_channels: int, image_size: int, description: str = ""
) -> DomainExtractorSpec:
    """Register a domain classifier (and its torch-fidelity extractor); duplicate names raise."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"bad domain extractor name {name!r}: use letters, digits, '-' and '_'")
    if name in DOMAIN_EXTRACTORS or fidelity_name(name) in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"domain extractor {name!r} is already registered")
    spec = DomainExtractorSpec(name, factory, in_channels, image_size, description or name)
    register_feature_extractor(fidelity_name(name), _make_fidelity_class(spec))
    DOMAIN_EXTRACTORS[name] = spec
    return spec


def get_domain_extractor(name: str) -> DomainExtractorSpec:
    """Spec of a registered domain extractor; unknown names list the known ones."""
    if name not in DOMAIN_EXTRACTORS:
        raise ValueError(f"unknown domain extractor {name!r}; known: {sorted(DOMAIN_EXTRACTORS)}")
    return DOMAIN_EXTRACTORS[name]


def list_domain_extractors() -> list[str]:
    """Names of the registered domain extractors."""
    return sorted(DOMAIN_EXTRACTORS)


def build_domain_extractor(name: str, features: list[str]) -> FeatureExtractorBase:
    """Instantiate the torch-fidelity extractor of a registered domain classifier."""
    spec = get_domain_extractor(name)
    cls = FEATURE_EXTRACTORS_REGISTRY[fidelity_name(spec.name)]
    return cls(fidelity_name(spec.name), list(features))


def _fmnist_reference_classifier() -> nn.Module:
    """The testbed's Fashion-MNIST reference CNN (``bigain.testbed.reference_classifier``)."""
    return load_reference_classifier()


def _textures_reference_classifier() -> nn.Module:
    """The texture testbed's reference CNN (same architecture, trained with ``train_classifier --dataset textures``)."""
    return load_reference_classifier(classifier_dir("textures"))


register_domain_extractor(
    "fmnist-reference",
    _fmnist_reference_classifier,
    in_channels=1,
    image_size=32,
    description="testbed Fashion-MNIST reference CNN, penultimate features (bigain.testbed.reference_classifier)",
)
register_domain_extractor(
    "textures-reference",
    _textures_reference_classifier,
    in_channels=1,
    image_size=32,
    description="texture testbed reference CNN, penultimate features (bigain.testbed.reference_classifier)",
)
