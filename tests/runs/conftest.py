"""Fixtures shared by the run tests: a tiny pixel-space DiT saved like a real checkpoint (one per module)."""
from pathlib import Path

import pytest

from bigain.zoo import build_tiny_pixel_dit


@pytest.fixture(scope="module")
def dit_path(tmp_path_factory) -> Path:
    """A tiny pixel DiT folder; test modules that need another model define their own `dit_path`."""
    return build_tiny_pixel_dit(tmp_path_factory.mktemp("pixel_dit"))
