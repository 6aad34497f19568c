"""Gaia uncertainties (galmock.gaia_errors): equal to pygaia's for the same magnitudes, in Gaia
DR3's units; radial-velocity errors only within DR3's G_RVS limit; seeded observed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pygaia.errors.astrometric import parallax_uncertainty, proper_motion_uncertainty
from pygaia.errors.photometric import magnitude_uncertainty
from pygaia.errors.spectroscopic import radial_velocity_uncertainty

from galmock.errors import InputError
from galmock.gaia_errors import RVS_LIMIT, gaia_uncertainties, observe


@pytest.mark.parametrize("release", ["dr3", "dr4", "dr5"])
def test_errors_are_pygaias_in_gaia_units(release) -> None:
    g = np.linspace(5.0, 20.5, 40)  # BP = G + 0.4 stays within pygaia's 4-21 mag
    bp, rp = g + 0.4, g - 0.5
    teff, logg = np.full(40, 5000.0), np.full(40, 4.5)
    e = gaia_uncertainties(g, bp, rp, teff, logg, release=release)
    pmra, pmdec = proper_motion_uncertainty(g, release=release)
    assert np.allclose(e.parallax_error, parallax_uncertainty(g, release=release) / 1e3,
                       rtol=1e-12)  # µas -> mas
    assert np.allclose(e.pmra_error, pmra / 1e3, rtol=1e-12)
    assert np.allclose(e.pmdec_error, pmdec / 1e3, rtol=1e-12)
    for ours, band, mag in ((e.phot_g_mean_mag_error, "g", g),
                            (e.phot_bp_mean_mag_error, "bp", bp),
                            (e.phot_rp_mean_mag_error, "rp", rp)):
        assert np.allclose(ours, magnitude_uncertainty(band, mag, release=release) / 1e3,
                           rtol=1e-12)  # mmag -> mag
    bright = e.grvs_mag <= RVS_LIMIT
    want = radial_velocity_uncertainty(e.grvs_mag[bright], teff[bright], logg[bright],
                                       release=release)
    assert np.allclose(e.radial_velocity_error[bright], want, rtol=1e-12, equal_nan=True)
    assert e.clipped == 0


def test_radial_velocities_only_for_bright_rvs_magnitudes() -> None:
    # G - G_RP = 0.5: G_RVS - G_RP = -0.0397 - 0.2852 x - 0.0330 x^2 - 0.0867 x^3 (Sartoretti
    # et al. 2022), so G_RVS = G - 0.700.
    g = np.array([10.0, 14.5, 14.8, 16.0])
    e = gaia_uncertainties(g, g + 0.3, g - 0.5, np.full(4, 5500.0), np.full(4, 4.4))
    x = 0.5
    assert np.allclose(e.grvs_mag, g - x + (-0.0397 - 0.2852 * x - 0.0330 * x**2
                                            - 0.0867 * x**3))
    has_rv = np.isfinite(e.radial_velocity_error)
    assert has_rv.tolist() == [True, True, False, False]  # G_RVS 9.3, 13.8 | 14.1, 15.3
    assert (e.radial_velocity_error[has_rv] > 0).all()


def test_magnitudes_beyond_pygaias_model_take_its_end_values() -> None:
    e = gaia_uncertainties([3.0, 4.0, 21.0, 22.0], [3.0, 4.0, 21.0, 22.0],
                           [3.0, 4.0, 21.0, 22.0], [5000.0] * 4, [4.5] * 4)
    assert e.clipped == 2
    assert e.phot_g_mean_mag_error[0] == e.phot_g_mean_mag_error[1]
    assert e.phot_g_mean_mag_error[3] == e.phot_g_mean_mag_error[2]


@pytest.mark.parametrize("kwargs, message", [
    ({"release": "dr2"}, "release must be one of dr3, dr4, dr5, got 'dr2'"),
    ({"g": [15.0, math.nan]}, r"g is not finite for 1 star\(s\) \(first: row 1\)"),
    ({"bp": [15.0]}, "bp has 1 values, g has 2"),
])
def test_bad_input_is_refused_by_name(kwargs, message) -> None:
    args = {"g": [15.0, 16.0], "bp": [15.4, 16.4], "rp": [14.5, 15.5], "teff": [5000.0] * 2,
            "logg": [4.5] * 2, **kwargs}
    with pytest.raises(InputError, match=message):
        gaia_uncertainties(**args)


def test_observed_values_scatter_by_their_errors_reproducibly() -> None:
    n = 200_000
    true = np.linspace(-5, 5, n)
    error = np.linspace(0.1, 2.0, n)
    a = observe(true, error, np.random.default_rng(3))
    assert np.array_equal(a, observe(true, error, np.random.default_rng(3)))
    pull = (a - true) / error
    # Standard normal pulls: mean within 4 SE (1/sqrt(n)), sd within 4 SE (1/sqrt(2n)).
    assert abs(pull.mean()) < 4 / math.sqrt(n)
    assert abs(pull.std() - 1) < 4 / math.sqrt(2 * n)
    assert np.isnan(observe([1.0], [np.nan], np.random.default_rng(0))).all()
