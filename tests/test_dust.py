"""The exponential dust disk (galmock.dust): its sight-line integral against adaptive quadrature,
zero at the observer, monotone along every sight line, and its parameters checked by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from galmock.dust import _BLOCK_LINES, ExponentialDustDisk
from galmock.errors import InputError

OBSERVER = np.array([-8.122, 0.0, 0.0208])


def brute_force(disk: ExponentialDustDisk, star: np.ndarray) -> float:
    d = float(np.linalg.norm(star - OBSERVER))
    u = (star - OBSERVER) / d
    r_obs = math.hypot(*OBSERVER[:2])

    def density(s: float) -> float:
        x = OBSERVER + s * u
        return math.exp(-(math.hypot(x[0], x[1]) - r_obs) / disk.scale_length_kpc
                        - abs(x[2]) / disk.scale_height_kpc)

    cross = -OBSERVER[2] / u[2] if u[2] else -1.0
    points = [cross] if 0 < cross < d else None
    value = quad(density, 0, d, points=points, limit=1000, epsabs=1e-14, epsrel=1e-12)[0]
    return disk.a0_per_kpc * value


@pytest.mark.parametrize("disk", [ExponentialDustDisk(),
                                  ExponentialDustDisk(0.3, 2.0, 0.05),
                                  ExponentialDustDisk(2.0, 5.0, 0.4)])
def test_sight_line_integral_matches_adaptive_quadrature(disk) -> None:
    rng = np.random.default_rng(0)
    # Disk, halo and through-the-centre sight lines, and one star in the plane itself.
    stars = np.vstack([OBSERVER + rng.normal(0, 4, (150, 3)) * [1, 1, 0.3],
                       rng.normal(0, 20, (50, 3)),
                       OBSERVER + np.array([[16.0, 0.01, -0.0208]])])
    got = disk.a0(OBSERVER, stars)
    want = np.array([brute_force(disk, s) for s in stars])
    # Measured at most 5e-6 (the adaptive reference itself is good to ~1e-9); 1e-5 mag on 1 mag
    # is far below any photometric use.
    assert np.max(np.abs(got - want) / want) < 2e-5


def test_zero_at_the_observer_and_monotone_along_sight_lines() -> None:
    disk = ExponentialDustDisk()
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(40, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    steps = np.linspace(0.0, 30.0, 301)
    for u in directions:
        a0 = disk.a0(OBSERVER, OBSERVER + steps[:, None] * u)
        assert a0[0] == 0.0
        # Growing wherever there is dust on the way; far out of the layer the increments are
        # below float64's resolution of the sum, so allow rounding (1e-15 mag).
        assert (np.diff(a0) > -1e-15).all() and a0[-1] > a0[1] > 0
    assert (disk.a0(OBSERVER, OBSERVER[None, :]) == 0).all()


def test_in_plane_near_the_observer_it_is_the_local_rate() -> None:
    # 10 pc along the plane at the observer's radius: A0 = a0_per_kpc * 0.01 * exp(-|z|/h).
    disk = ExponentialDustDisk(a0_per_kpc=0.8)
    star = OBSERVER + np.array([0.0, 0.01, 0.0])
    expected = 0.8 * 0.01 * math.exp(-abs(OBSERVER[2]) / 0.1)
    assert abs(disk.a0(OBSERVER, star[None, :])[0] - expected) < 1e-6 * expected


@pytest.mark.parametrize("kwargs, message", [
    ({"a0_per_kpc": -0.1}, r"a0_per_kpc must be >= 0, got -0\.1"),
    ({"scale_length_kpc": 0.0}, r"scale_length_kpc must be > 0, got 0\.0"),
    ({"scale_height_kpc": math.nan}, r"scale_height_kpc must be > 0, got nan"),
])
def test_bad_parameters_are_refused_by_name(kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        ExponentialDustDisk(**kwargs)


def test_blocks_of_sight_lines_give_each_line_its_own_value() -> None:
    """A0 is integrated in blocks of sight lines (bounded memory): every line gets the value
    it gets on its own, whatever block it falls in."""
    dust = ExponentialDustDisk()
    stars = np.random.default_rng(11).normal(0.0, 6.0, (_BLOCK_LINES + 3001, 3))
    whole = dust.a0(OBSERVER, stars)
    alone = np.concatenate([dust.a0(OBSERVER, stars[i:i + 997])
                            for i in range(0, len(stars), 997)])
    np.testing.assert_array_equal(whole, alone)
    assert len(whole) == len(stars) and (whole > 0).all()
