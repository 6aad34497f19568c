r"""Gaia's uncertainties for each star, from its magnitudes, as the Gaia science-performance
models in ``pygaia`` give them (DR3 by default; DR4 and DR5 predictions as options).

Per star, in Gaia DR3's column names and units:

============================  ======  ================================================
column                        unit    from
============================  ======  ================================================
``parallax_error``            mas     G (sky-averaged; pygaia returns µas)
``pmra_error``, ``pmdec_error`` mas/yr  G (sky-averaged; pygaia returns µas/yr)
``phot_g_mean_mag_error``     mag     G (pygaia returns mmag), likewise BP and RP
``grvs_mag``                  mag     G_RP and G − G_RP (Sartoretti et al. 2022)
``radial_velocity_error``     km/s    G_RVS, Teff, log g; NaN where G_RVS > 14 (DR3's
                                      limit) or outside pygaia's grids (Katz et al. 2023)
============================  ======  ================================================

pygaia's photometric model covers 4 ≤ mag ≤ 21: brighter and fainter stars take the end values
(counted in :attr:`GaiaUncertainties.clipped`). :func:`observe` draws the observed values around
the true ones with these errors.

Example:
    >>> e = gaia_uncertainties(g=[15.0], bp=[15.4], rp=[14.45], teff=[5000.0], logg=[4.5])
    >>> round(float(e.parallax_error[0]), 4), round(float(e.phot_g_mean_mag_error[0]), 5)
    (0.0295, 0.00027)
    >>> bool(np.isnan(e.radial_velocity_error[0]))  # G_RVS 14.2: beyond DR3's RVS limit
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from pygaia.errors.astrometric import parallax_uncertainty, proper_motion_uncertainty
from pygaia.errors.photometric import magnitude_uncertainty
from pygaia.errors.spectroscopic import radial_velocity_uncertainty
from pygaia.photometry.transformations import grvs_from_gmingrp

from galmock.errors import InputError

__all__ = ["RELEASES", "RVS_LIMIT", "GaiaUncertainties", "gaia_uncertainties", "observe"]

#: Data releases pygaia models.
RELEASES = ("dr3", "dr4", "dr5")
#: DR3 published radial velocities for G_RVS <= 14 (Katz et al. 2023).
RVS_LIMIT = 14.0
_PHOT_RANGE = (4.0, 21.0)


@dataclass(frozen=True)
class GaiaUncertainties:
    """Per-star uncertainties (see the module table); ``clipped``: stars whose magnitude in some
    band lay outside pygaia's 4-21 mag photometric model."""

    parallax_error: np.ndarray
    pmra_error: np.ndarray
    pmdec_error: np.ndarray
    phot_g_mean_mag_error: np.ndarray
    phot_bp_mean_mag_error: np.ndarray
    phot_rp_mean_mag_error: np.ndarray
    grvs_mag: np.ndarray
    radial_velocity_error: np.ndarray
    clipped: int


def gaia_uncertainties(g: ArrayLike, bp: ArrayLike, rp: ArrayLike, teff: ArrayLike,
                       logg: ArrayLike, release: str = "dr3") -> GaiaUncertainties:
    r"""Uncertainties of stars with apparent ``g``, ``bp``, ``rp`` (mag, extincted), ``teff``
    (K) and ``logg``, for ``release`` (``dr3``, ``dr4`` or ``dr5``).

    Raises:
        InputError: an unknown release, arrays of different lengths, or a magnitude that is
            not finite (named with its first row).
    """
    if release not in RELEASES:
        raise InputError(f"gaia errors: release must be one of {', '.join(RELEASES)}, "
                         f"got {release!r}")
    cols = {k: np.atleast_1d(np.asarray(v, dtype=np.float64))
            for k, v in {"g": g, "bp": bp, "rp": rp, "teff": teff, "logg": logg}.items()}
    n = len(cols["g"])
    for name, values in cols.items():
        if values.shape != (n,):
            raise InputError(f"gaia errors: {name} has {values.size} values, g has {n}")
        bad = ~np.isfinite(values)
        if bad.any() and name in ("g", "bp", "rp"):
            raise InputError(f"gaia errors: {name} is not finite for {int(bad.sum())} star(s) "
                             f"(first: row {int(np.flatnonzero(bad)[0])})")
    clipped = np.zeros(n, dtype=bool)
    phot = {}
    for band in ("g", "bp", "rp"):
        mag = cols[band]
        inside = np.clip(mag, *_PHOT_RANGE)
        clipped |= inside != mag
        # The mean magnitude's error for the release's typical number of transits (pygaia).
        phot[band] = magnitude_uncertainty(band, inside, release=release) / 1000.0
    pmra, pmdec = proper_motion_uncertainty(cols["g"], release=release)
    # pygaia's grvs_from_gmingrp returns G_RVS − G_RP (Sartoretti et al. 2022, eq. 2-3).
    grvs = cols["rp"] + grvs_from_gmingrp(cols["g"] - cols["rp"])
    rv = np.full(n, np.nan)
    bright = np.isfinite(grvs) & (grvs <= RVS_LIMIT)
    if bright.any():
        rv[bright] = radial_velocity_uncertainty(grvs[bright], cols["teff"][bright],
                                                 cols["logg"][bright], release=release)
    return GaiaUncertainties(
        parallax_error=parallax_uncertainty(cols["g"], release=release) / 1000.0,
        pmra_error=np.asarray(pmra) / 1000.0,
        pmdec_error=np.asarray(pmdec) / 1000.0,
        phot_g_mean_mag_error=phot["g"],
        phot_bp_mean_mag_error=phot["bp"],
        phot_rp_mean_mag_error=phot["rp"],
        grvs_mag=grvs,
        radial_velocity_error=rv,
        clipped=int(clipped.sum()),
    )


def observe(true: ArrayLike, error: ArrayLike, generator: np.random.Generator) -> np.ndarray:
    """Observed values: ``true`` plus Gaussian noise of standard deviation ``error`` drawn from
    ``generator`` (NaN where the error is NaN: not measured).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> obs = observe(np.zeros(100_000), np.full(100_000, 0.5), rng)
        >>> round(float(obs.std()), 2)
        0.5
    """
    t = np.asarray(true, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    noise = generator.standard_normal(t.shape)
    return np.where(np.isfinite(e), t + noise * np.where(np.isfinite(e), e, 0.0), np.nan)
