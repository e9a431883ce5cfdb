"""The patch report counts tokens at the run's latent size, not only at the config's native one."""
from __future__ import annotations

import pytest

import tomesd
from bigain.zoo import tiny_sd_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_report_counts_tokens_at_the_runs_latent_size():
    unet = tiny_sd_unet()  # config sample_size 16: 256 tokens at the first level
    native = tomesd.apply_patch(unet, ratio=0.5, method="tome")
    level1 = native.levels[1]
    assert level1.tokens == 16 * 16 and native.latent_size == (16, 16)
    small = tomesd.apply_patch(unet, ratio=0.5, method="tome", latent_size=8)
    assert small.levels[1].tokens == 8 * 8 and small.levels[1].kept < small.levels[1].tokens
    assert small.latent_size == (8, 8) and "at latent 8x8" in str(small) and "/64 tokens kept" in str(small)
    assert small.to_dict()["latent_size"] == (8, 8)
    tomesd.remove_patch(unet)
