"""eval.stats on synthetic data with known answers: coverage, hand-computed McNemar, degenerate bootstraps, FID."""
import math

import numpy as np
import pytest
import torch

from eval import stats


def test_wilson_interval_covers_the_true_rate_about_95_percent():
    rng = np.random.default_rng(0)
    true_rate, n, trials = 0.8, 50, 2000
    hits = rng.binomial(n, true_rate, size=trials)
    covered = [stats.wilson_interval(int(k), n).low <= true_rate <= stats.wilson_interval(int(k), n).high for k in hits]
    assert 0.93 <= np.mean(covered) <= 0.975


def test_wilson_interval_matches_the_closed_form():
    k, n, z = 40, 50, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    ci = stats.wilson_interval(k, n)
    assert ci.value == 0.8
    assert ci.low == pytest.approx(centre - half, abs=1e-9) and ci.high == pytest.approx(centre + half, abs=1e-9)


def test_bootstrap_interval_of_a_mean_covers_the_true_rate_about_95_percent():
    rng = np.random.default_rng(1)
    true_rate, n, trials = 0.7, 100, 200
    covered = 0
    for t in range(trials):
        x = (rng.random(n) < true_rate).astype(float)
        ci = stats.bootstrap_interval([x], np.mean, n_boot=400, seed=t)
        covered += ci.low <= true_rate <= ci.high
    assert 0.88 <= covered / trials <= 0.99


def test_paired_bootstrap_on_identical_inputs_is_zero_width_at_zero():
    x = np.random.default_rng(2).random(60) < 0.6
    diff = stats.paired_difference(x, x)
    assert (diff.value, diff.low, diff.high, diff.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not diff.excludes_zero()


def test_paired_bootstrap_is_narrower_than_unpaired_when_methods_agree_on_most_images():
    rng = np.random.default_rng(3)
    a = rng.random(200) < 0.75
    b = a.copy()
    flip = rng.choice(200, 12, replace=False)
    b[flip[:10]] = False  # B loses 10 images A gets right, gains 2
    b[flip[10:]] = True
    paired = stats.paired_difference(a, b)
    wa, wb = stats.wilson_interval(a.sum(), 200), stats.wilson_interval(b.sum(), 200)
    assert paired.high - paired.low < 0.5 * ((wa.high - wa.low) + (wb.high - wb.low)) / 2 * 2
    assert paired.value == pytest.approx((a.sum() - b.sum()) / 200)


def test_mcnemar_exact_matches_a_hand_computation():
    # 8 discordant pairs: A right / B wrong on 7, the reverse on 1. Two-sided exact p = 2 * P(X <= 1), X ~ Bin(8, 1/2)
    a = np.array([1] * 7 + [0] * 1 + [1] * 30 + [0] * 12, bool)
    b = np.array([0] * 7 + [1] * 1 + [1] * 30 + [0] * 12, bool)
    expected = 2 * (math.comb(8, 0) + math.comb(8, 1)) / 2 ** 8  # = 0.0703125
    assert stats.mcnemar_exact(a, b) == pytest.approx(expected, abs=1e-12)
    assert stats.mcnemar_exact(b, a) == pytest.approx(expected, abs=1e-12)
    assert stats.paired_difference(a, b).p_value == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="same items"):
        stats.mcnemar_exact(a, b[:-1])


def test_fid_to_reference_matches_eval_metrics_frechet_distance():
    from eval.metrics import frechet_distance

    rng = np.random.default_rng(4)
    ref = rng.normal(size=(400, 16))
    for n_gen in (10, 60):  # fewer and more images than dimensions (singular generated covariance)
        gen = rng.normal(0.3, 1.2, size=(n_gen, 16))
        expected = frechet_distance(torch.tensor(gen), torch.tensor(ref))
        assert stats.fid_to_reference(gen, stats.reference_stats(ref)) == pytest.approx(expected, rel=1e-6)


def test_fid_interval_contains_the_point_value_and_shrinks_with_more_images():
    rng = np.random.default_rng(5)
    ref = stats.reference_stats(rng.normal(size=(2000, 8)))
    small = stats.fid_interval(rng.normal(0.2, 1.0, size=(40, 8)), ref, n_boot=300)
    large = stats.fid_interval(rng.normal(0.2, 1.0, size=(400, 8)), ref, n_boot=300)
    assert small.low <= small.value <= small.high
    assert large.high - large.low < small.high - small.low


def test_fid_difference_of_identical_sets_is_zero_width_at_zero_and_paired_shift_is_resolved():
    rng = np.random.default_rng(6)
    ref = stats.reference_stats(rng.normal(size=(2000, 8)))
    gen = rng.normal(size=(80, 8))
    same = stats.fid_difference_interval(gen, gen.copy(), ref, n_boot=200)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    shifted = stats.fid_difference_interval(gen + 1.0, gen, ref, n_boot=200)
    assert shifted.low > 0 and shifted.excludes_zero()
