"""bigain.sensitivity: the error-perturbation summary on known inputs, FLOP shares on a tiny DiT."""
import numpy as np
import pytest
import torch

from bigain import sensitivity
from bigain.zoo import build_tiny_pixel_dit


def test_perturbation_separates_common_mode_from_class_dependent_change():
    base = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]])
    labels = np.array([0, 1])
    common = sensitivity.perturbation(base, base + 0.5, labels)  # same shift for every class: ranking intact
    assert common["shift_over_gap"] == pytest.approx(0.0) and common["argmin_changed"] == 0.0
    assert common["rel_error_change"] == pytest.approx(0.25) and common["acc"] == common["acc_base"] == 1.0
    swapped = sensitivity.perturbation(base, base[:, [1, 0, 2]], labels)  # classes 0 and 1 swap errors
    assert swapped["argmin_changed"] == 1.0 and swapped["acc"] == 0.0
    # delta = (+1, -1, 0) per image: its spread over classes equals the classes' own spread
    assert swapped["shift_over_gap"] == pytest.approx(1.0)


def test_flop_shares_on_a_tiny_dit(tmp_path):
    from bigain.models import load_model

    model = load_model(model_path=str(build_tiny_pixel_dit(tmp_path / "dit", image_size=32)), dtype="fp32",
                       device="cpu")
    x = torch.randn(4, model.in_channels, model.sample_size, model.sample_size)
    t = torch.full((4,), 500)
    cond = model.select(model.condition(class_ids=[0, 1, 2, 3]), torch.arange(4))
    none = sensitivity.flop_shares(model, "none", {}, x, t, cond)
    tome = sensitivity.flop_shares(model, "tome", {"ratio": 0.5}, x, t, cond)
    assert none["removed_share"] == 0.0
    assert 0 < tome["self_attn_share"] < tome["blocks_share"] <= 1 and 0 < tome["removed_share"] < tome["blocks_share"]
