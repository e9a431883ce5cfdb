"""Uncertainty of the benchmark's numbers: intervals for rates, paired tests between methods, FID bootstraps.

All functions are pure (arrays in, numbers out) and use scipy's implementations:

* a rate over images (accuracy, class consistency): Wilson score interval (`scipy.stats.binomtest`);
* a median over repeated measurements (the per-round speed-up ratios of `eval.speed`): the distribution-free
  order-statistic interval (the binomial ranks `scipy.stats.quantile_test` uses), exact for any continuous noise;
* the difference between two methods on the *same* images: paired bootstrap over images
  (`scipy.stats.bootstrap`, percentile) and an exact McNemar test (a two-sided binomial test on the
  discordant pairs: images one method gets right and the other wrong);
* FID against a fixed reference: bootstrap over generated images (resample their features, recompute
  the Frechet distance against the fixed reference mean/covariance), paired when two methods generated
  the same (seed, class) items in the same order.

Intervals are 95% by default; every bootstrap is seeded so a report is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "Interval", "wilson_interval", "median_interval", "median_interval_ranks", "bootstrap_interval",
    "paired_difference", "mcnemar_exact",
    "ReferenceStats", "reference_stats", "fid_to_reference", "fid_interval", "fid_difference_interval",
]

CONFIDENCE = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval [low, high] (and a p-value for paired tests)."""

    value: float
    low: float
    high: float
    p_value: Optional[float] = None

    def excludes_zero(self) -> bool:
        """The interval lies strictly on one side of 0 (a difference this data can resolve)."""
        return self.low > 0 or self.high < 0

    def to_dict(self, prefix: str) -> dict[str, Optional[float]]:
        """Flat columns `<prefix>`, `<prefix>_lo`, `<prefix>_hi` (+ `<prefix>_p`)."""
        out = {prefix: self.value, f"{prefix}_lo": self.low, f"{prefix}_hi": self.high}
        if self.p_value is not None:
            out[f"{prefix}_p"] = self.p_value
        return out


def _as_bool(x: Sequence) -> np.ndarray:
    """A 1-D boolean array (per-item correctness)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"expected one value per item, got shape {arr.shape}")
    return arr.astype(bool)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Rate successes/n with its Wilson score interval (good coverage even at small n and rates near 0 or 1)."""
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high))


def median_interval_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int, float]:
    """0-based ranks (lo, hi) of the sorted sample bounding the median with coverage >= `confidence`, and that coverage.

    The narrowest symmetric pair x[lo], x[n-1-lo] whose coverage 1 - 2 P(Binom(n, 1/2) <= lo) reaches `confidence`
    (the ranks of `scipy.stats.quantile_test`); below 6 items (at 95%) none does, and the range [min, max] is used
    with its lower coverage 1 - 2^(1-n) (75% at 3 items, 94% at 5).
    """
    if n < 1:
        raise ValueError(f"a median interval needs at least one value, got {n}")
    j = int(stats.binom.ppf((1 - confidence) / 2, n, 0.5))  # smallest j with cdf(j) >= alpha/2
    if stats.binom.cdf(j, n, 0.5) > (1 - confidence) / 2:
        j -= 1  # X_(j+1) (1-based) is the lower bound: P(Binom < j+1) = cdf(j) <= alpha/2
    j = max(j, 0)
    return j, n - 1 - j, 1.0 - 2.0 * float(stats.binom.cdf(j, n, 0.5))  # P(median outside) = 2 P(Binom <= j)


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[Interval, float]:
    """Median of `values` with its distribution-free order-statistic interval, and the interval's actual coverage.

    Assumes only independent draws from one continuous distribution (no normality, robust to a stray slow round);
    NaN bounds for a single value.
    """
    x = np.sort(np.asarray(values, dtype=float))
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"expected a non-empty list of values, got shape {x.shape}")
    value = float(np.median(x))
    if len(x) < 2:
        return Interval(value, float("nan"), float("nan")), float("nan")
    lo, hi, coverage = median_interval_ranks(len(x), confidence)
    return Interval(value, float(x[lo]), float(x[hi])), coverage


def bootstrap_interval(samples: Sequence[np.ndarray], statistic: Callable[..., float], n_boot: int = N_BOOT,
                       confidence: float = CONFIDENCE, seed: int = 0, bias_correct: bool = False) -> Interval:
    """Percentile bootstrap of `statistic(*samples)`, resampling items (rows) jointly across all `samples`.

    The samples must have the same number of rows (paired: row i of each belongs to the same item); a
    statistic that does not vary under resampling gives a zero-width interval. `bias_correct` shifts the
    percentile interval by the bootstrap's bias estimate (mean of the resampled statistics minus the point
    value), for statistics such as FID that resampling with replacement inflates.
    """
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"paired samples need equal lengths, got {[len(a) for a in arrays]}")
    value = float(statistic(*arrays))
    if n < 2:
        return Interval(value, float("nan"), float("nan"))
    index = np.arange(n)
    res = stats.bootstrap((index,), lambda i: statistic(*(a[i.astype(int)] for a in arrays)), vectorized=False,
                          paired=False, n_resamples=n_boot, confidence_level=confidence, method="percentile",
                          random_state=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if bias_correct:
        bias = float(np.mean(res.bootstrap_distribution)) - value
        low, high = low - bias, high - bias
    return Interval(value, low, high)


def mcnemar_exact(correct_a: Sequence, correct_b: Sequence) -> float:
    """Exact two-sided McNemar p-value: binomial test of the discordant pairs against 1/2 (1.0 when there are none)."""
    a, b = _as_bool(correct_a), _as_bool(correct_b)
    if len(a) != len(b):
        raise ValueError(f"McNemar needs the same items for both methods, got {len(a)} and {len(b)}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_difference(correct_a: Sequence, correct_b: Sequence, n_boot: int = N_BOOT,
                      confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Rate of A minus rate of B on the same items: paired bootstrap interval and exact McNemar p-value."""
    a, b = _as_bool(correct_a).astype(float), _as_bool(correct_b).astype(float)
    diff = bootstrap_interval([a, b], lambda x, y: x.mean() - y.mean(), n_boot, confidence, seed)
    return Interval(diff.value, diff.low, diff.high, mcnemar_exact(a, b))


# ----------------------------------------------------------------------------------------------
# FID against fixed reference statistics
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReferenceStats:
    """Mean, covariance and the symmetric square root of the covariance of the reference features."""

    mu: np.ndarray
    sigma: np.ndarray
    sqrt_sigma: np.ndarray
    n: int


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def reference_stats(features: np.ndarray) -> ReferenceStats:
    """Fix the reference side of FID once (float64; covariance with n-1, as torch-fidelity)."""
    f = np.asarray(features, np.float64)
    sigma = np.cov(f, rowvar=False)
    return ReferenceStats(f.mean(0), sigma, _sym_sqrt(sigma), len(f))


def fid_to_reference(features: np.ndarray, ref: ReferenceStats) -> float:
    """Frechet distance of Gaussians fitted to `features` and to the reference.

    tr sqrt(S_g S_r) is computed as the trace of sqrt(S_r^1/2 S_g S_r^1/2) (a symmetric PSD matrix, so an
    eigen-decomposition suffices and singular S_g from fewer images than dimensions is fine).
    """
    f = np.asarray(features, np.float64)
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    inner = ref.sqrt_sigma @ sigma @ ref.sqrt_sigma
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(((mu - ref.mu) ** 2).sum() + np.trace(sigma) + np.trace(ref.sigma) - 2 * tr_covmean)


def fid_interval(features: np.ndarray, ref: ReferenceStats, n_boot: int = 1000, confidence: float = CONFIDENCE,
                 seed: int = 0) -> Interval:
    """FID with a bootstrap interval over generated images (the reference statistics stay fixed).

    Resampling with replacement duplicates images, which shrinks the generated covariance and inflates the
    resampled FIDs, so the percentile interval is shifted back by the bootstrap's bias estimate.
    """
    return bootstrap_interval([np.asarray(features)], lambda f: fid_to_reference(f, ref), n_boot, confidence, seed,
                              bias_correct=True)


def fid_difference_interval(features_a: np.ndarray, features_b: np.ndarray, ref: ReferenceStats, n_boot: int = 1000,
                            confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """FID(A) - FID(B) with a paired bootstrap: row i of both sets is the same (seed, class) item."""
    return bootstrap_interval([np.asarray(features_a), np.asarray(features_b)],
                              lambda a, b: fid_to_reference(a, ref) - fid_to_reference(b, ref), n_boot, confidence,
                              seed, bias_correct=True)
