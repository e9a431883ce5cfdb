"""The testbed's data sets by name (Fashion-MNIST, natural textures): what the trainers and benchmarks read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from bigain.testbed import data, textures

Split = str  # "train", "test" or "subset" (the shipped 1,000-image test subset)


@dataclass(frozen=True)
class TestbedData:
    """One testbed data set: its description (written into exported models), class names and loader."""

    name: str
    title: str  # how tables name it
    description: str
    class_names: tuple[str, ...]
    load: Callable[[Split], tuple[np.ndarray, np.ndarray]]  # split -> (float32 (N, 1, 32, 32) in [-1, 1], labels)
    reference: str  # eval.metrics reference set of its test subset
    domain_extractor: str  # eval.metrics domain extractor: its reference CNN


def _fashion_mnist(split: Split) -> tuple[np.ndarray, np.ndarray]:
    return data.load_test_subset() if split == "subset" else data.load_fashion_mnist(split)


TESTBED_DATA: dict[str, TestbedData] = {
    "fmnist": TestbedData("fmnist", "Fashion-MNIST", "Fashion-MNIST (MIT licence), padded 28->32, pixel range [-1, 1]",
                          tuple(data.CLASS_NAMES), _fashion_mnist, "fmnist-test", "fmnist-reference"),
    "textures": TestbedData("textures", "natural textures", "natural textures: 32x32 grey crops of ten scikit-image "
                            "photographs (CC0 / public domain; docs/testbed/textures.md), pixel range [-1, 1]",
                            tuple(textures.CLASS_NAMES), textures.load_textures, "textures-test",
                            "textures-reference"),
}


def testbed_data(name: str) -> TestbedData:
    """The named testbed data set; an unknown name is a ValueError naming the allowed ones."""
    if name not in TESTBED_DATA:
        raise ValueError(f"unknown testbed dataset {name!r}; allowed: {', '.join(TESTBED_DATA)}")
    return TESTBED_DATA[name]
