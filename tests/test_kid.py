"""KID against an independent unbiased MMD^2 in numpy with the cubic polynomial kernel
k(a, b) = (a . b / d + 1)^3 (Binkowski et al. 2018; d = the feature size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchjem.evaluate.generation import kernel_distance


def poly(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """sum_{i != j} k(x_i, x_j) / (m (m-1)) + the same for y - 2 sum_{i, j} k(x_i, y_j) / (m n)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = poly(x, x), poly(y, y), poly(x, y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))  # pairs i != j
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.sum() / (m * n))


def features(seed: int, n: int, d: int = 5, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return shift + scale * np.random.default_rng(seed).standard_normal((n, d))


def test_kid_of_two_examples_per_set_is_the_exact_unbiased_mmd():
    """Two examples per set: every subset is the whole set, so each subset's MMD^2 is the full one
    and their std is 0; no randomness left to hide an error."""
    real, fake = features(0, 2), features(1, 2, shift=0.7, scale=1.5)
    mean, std = kernel_distance(torch.from_numpy(real), torch.from_numpy(fake), subsets=5)
    want = mmd2_unbiased(real, fake)
    assert abs(want) > 0.1
    assert mean == pytest.approx(want, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_mean_over_subsets_estimates_the_full_set_unbiased_mmd():
    """Random half-size subsets: each subset's unbiased MMD^2 has the full-set value as its
    expectation (each pair of distinct examples is equally likely in a subset). The mean over
    2,000 subsets must lie within 4 standard errors of it (the spread measured in numpy on its own
    4,000 subsets); the reported std must match that spread within 10%. Seeded."""
    torch.manual_seed(0)
    real, fake = features(2, 40), features(3, 40, shift=0.4, scale=1.3)
    want = mmd2_unbiased(real, fake)
    rng = np.random.default_rng(4)
    spread = np.std([mmd2_unbiased(real[rng.permutation(40)[:20]], fake[rng.permutation(40)[:20]])
                     for _ in range(4000)], ddof=1)
    mean, std = kernel_distance(torch.from_numpy(real), torch.from_numpy(fake), subsets=2000)
    assert want > 5 * spread / np.sqrt(2000)  # a shift the estimate resolves
    assert abs(mean - want) < 4 * spread / np.sqrt(2000)
    assert std == pytest.approx(spread, rel=0.1)
    # the same distribution: about zero (unbiased), within 4 standard errors
    same_mean, same_std = kernel_distance(torch.from_numpy(real), torch.from_numpy(features(5, 40)), subsets=2000)
    assert abs(same_mean - mmd2_unbiased(real, features(5, 40))) < 4 * same_std / np.sqrt(2000)
