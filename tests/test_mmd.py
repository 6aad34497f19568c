"""Linear-time MMD: null calibration, power against a small shift, the bandwidth heuristic."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, chi2

from galmock.validate.mmd import linear_mmd, median_bandwidth

# Median distance between two N(0, I_3) points: sqrt(2) * sqrt(median of chi2 with 3 dof).
WIDTH_3D = float(np.sqrt(2.0 * chi2.median(3)))


def test_same_distribution_gives_zero_within_its_standard_error() -> None:
    """h_i are i.i.d. with mean 0 under the null, so mmd2 / stderr is ~N(0, 1) (t with ~2000
    dof): over 40 independent seeds none may pass 4 SE, and the count beyond 2 SE must be
    plausible for Binomial(40, 0.0455) (P(count >= 7) ~ 0.3%)."""
    z = []
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        res = linear_mmd(rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3)), WIDTH_3D, seed)
        assert res.pairs == 2000 and res.stderr > 0
        z.append(res.significance)
    z = np.abs(np.array(z))
    assert z.max() < 4.0
    beyond = int((z > 2.0).sum())
    assert beyond <= 6 and binom.sf(beyond - 1, 40, 0.0455) > 1e-3


def test_a_small_shift_is_detected() -> None:
    """A 0.3 sigma shift along one axis of N(0, I_3), kernel width w: MMD^2 =
    2 (w^2 / (w^2 + 2))^(3/2) (1 - exp(-0.09 / (2 (w^2 + 2)))) ~ 0.0079; with 1.5e5 pairs the SE
    is ~0.00087 (measured), so the expected significance is ~9 and > 5 fails with P ~ 1e-4."""
    rng = np.random.default_rng(0)
    n = 300_000
    x = rng.normal(size=(n, 3))
    y = rng.normal(size=(n, 3)) + np.array([0.3, 0.0, 0.0])
    res = linear_mmd(x, y, seed=1)
    w2 = res.bandwidth**2
    expected = 2 * (w2 / (w2 + 2)) ** 1.5 * (1 - np.exp(-0.09 / (2 * (w2 + 2))))
    assert res.significance > 5.0
    assert abs(res.mmd2 - expected) < 4 * res.stderr
    assert res.to_dict()["pairs"] == n // 2


def test_median_bandwidth_matches_the_gaussian_value_and_scales() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5000, 3)), rng.normal(size=(5000, 3))
    width = median_bandwidth(x, y)
    # Pairs among 2000 points are not independent; measured 0-2% off over 4 seeds.
    assert width == pytest.approx(WIDTH_3D, rel=0.05)
    assert median_bandwidth(10 * x, 10 * y) == pytest.approx(10 * width, rel=1e-12)
    assert median_bandwidth(x, y, seed=0) == width  # deterministic for a seed


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        (np.zeros((10, 2)), np.zeros((10, 3)), {"bandwidth": 1.0}, "columns"),
        (np.zeros((3, 2)), np.zeros((10, 2)), {"bandwidth": 1.0}, "at least 4 rows"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), {}, "non-finite"),
        (np.zeros((10, 2, 2)), np.zeros((10, 2, 2)), {}, "2-D"),
        (np.ones((10, 2)), np.ones((10, 2)), {"bandwidth": -1.0}, "positive"),
        (np.ones((10, 2)), np.ones((10, 2)), {}, "identical"),
    ],
)
def test_bad_input_is_refused(x, y, kwargs, message) -> None:
    # mmd.py raises ValueError (not a galmock.errors class); the stage wraps it.
    with pytest.raises(ValueError, match=message):
        linear_mmd(x, y, **kwargs)
