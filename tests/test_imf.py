"""IMF math: normalisation, mean mass, continuity and exact sampling."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from galmock.imf import kroupa2001

RANGES = [(0.08, 100.0), (0.01, 120.0), (0.1, 0.4), (0.6, 100.0)]


@pytest.mark.parametrize(("m_min", "m_max"), RANGES)
def test_normalised_and_mean_mass(m_min: float, m_max: float) -> None:
    imf = kroupa2001(m_min, m_max)
    kinks = [b for b in (0.08, 0.5) if m_min < b < m_max]
    total = integrate.quad(imf.pdf, m_min, m_max, points=kinks, limit=200)[0]
    mean = integrate.quad(lambda m: m * imf.pdf(m), m_min, m_max, points=kinks, limit=200)[0]
    assert total == pytest.approx(1.0, rel=1e-9)
    assert imf.mean_mass() == pytest.approx(mean, rel=1e-9)
    assert imf.cdf(m_max) == pytest.approx(1.0, rel=1e-12)
    assert imf.cdf(m_min) == 0.0


def test_kroupa_slopes_and_continuity() -> None:
    imf = kroupa2001(0.01, 100.0)
    for lo, hi, alpha in [(0.02, 0.05, 0.3), (0.1, 0.3, 1.3), (1.0, 10.0, 2.3)]:
        slope = math.log(imf.pdf(hi) / imf.pdf(lo)) / math.log(hi / lo)
        assert slope == pytest.approx(-alpha, rel=1e-12)
    for b in (0.08, 0.5):
        assert imf.pdf(b * (1 - 1e-9)) == pytest.approx(imf.pdf(b), rel=1e-6)
    # the often-quoted mean mass of Kroupa (2001) over 0.01-100 Msun is ~0.38 Msun
    assert imf.mean_mass() == pytest.approx(0.376, abs=0.002)


def test_sampling_matches_the_cdf() -> None:
    imf = kroupa2001(0.08, 100.0)
    masses = imf.sample(200_000, np.random.default_rng(5))
    assert masses.min() >= 0.08 and masses.max() <= 100.0
    result = stats.kstest(masses, imf.cdf)
    # fixed seed; a correct sampler gives a uniform p-value, 1e-3 fails 1 seed in 1000
    assert result.pvalue > 1e-3
    # sample mean within 5 standard errors of <m>
    se = masses.std() / math.sqrt(len(masses))
    assert abs(masses.mean() - imf.mean_mass()) < 5 * se


def test_sampling_is_deterministic() -> None:
    imf = kroupa2001()
    a = imf.sample(1000, np.random.default_rng(1))
    np.testing.assert_array_equal(a, imf.sample(1000, np.random.default_rng(1)))


def test_bad_ranges() -> None:
    with pytest.raises(ValueError, match="0 < m_min < m_max"):
        kroupa2001(1.0, 0.5)
    with pytest.raises(ValueError, match="outside the IMF"):
        kroupa2001(0.001, 10.0)
