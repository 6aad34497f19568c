r"""Absolute Gaia DR3 magnitudes (G, BP, RP) and their extinctions from a star's effective
temperature, surface gravity, [Fe/H] and radius.

The synthetic photometry is dustapprox's Kurucz grid (ODFNEW/NOVER 2003 atmospheres through the
Gaia DR3 passbands; BSD-3-Clause, Fouesneau et al. 2022), repacked by
``tools/build_photometry_grid.py`` into ``galmock/data/kurucz_gaia_dr3.npz`` (450 kB) rather
than depending on dustapprox, whose requirements (snakemake, scikit-learn, ipywidgets, pyphot)
galmock does not otherwise need. Per node (Teff 3500-50000 K, log g 0-5, [Fe/H] -4 to +0.5) it
holds ``mag0 = -2.5 log10`` of the band-averaged surface flux density (erg s^-1 cm^-2 Å^-1)
and the band extinction ``A_X`` for A0 = 0, 1, ..., 10 mag (Fitzpatrick 1999, R_V = 3.1)
through that star's own spectrum. Of the grid's two model families the solar-scaled one is
kept (see the build script).

**Absolute magnitudes.** A star of radius R seen from 10 pc has flux density
``F_surf (R / 10 pc)^2``; in Gaia's Vega system

    M_X = mag0_X − 5 log10(R / 10 pc) − 2.5 log10(λ_p² / (c · 3631 Jy)) − (ZP_AB − ZP_Vega)_X

with the DR3 pivot wavelengths λ_p and the AB − Vega zero-point offsets of Riello et al.
(2021, Table 1). The Sun (5772 K, log g 4.438, R = 1 R_sun) comes out at M_G = 4.67 and
BP − RP = 0.80 (published: 4.67 and 0.82; Casagrande & VandenBerg 2018).

**Interpolation** is trilinear in (log Teff, log g, [Fe/H]), then linear in A0 for the
extinction. Outside the grid the bolometric correction is clipped, not the flux: a star cooler
than 3500 K takes the 3500 K node's band fluxes scaled by its own (T / 3500 K)^4, so its
luminosity is kept; log g and [Fe/H] are clipped to the grid; A0 > 10 mag extrapolates each
band's A_X / A0 at 10. Each is counted in :attr:`Photometry.clipped`. Grid cells without a
model (hot stars at low gravity, beyond the Eddington limit) carry the nearest gravity's
values, counted in :attr:`Photometry.filled`.

References:
    Riello, M. et al. (2021), A&A 649, A3 (Gaia EDR3 photometry, zero points, passbands).
    Castelli, F. & Kurucz, R. L. (2003), IAU Symp. 210, A20 (ODFNEW atmospheres).
    Fouesneau, M. et al. (2022), A&A 658, A37 (dustapprox; Fitzpatrick 1999 extinction).

Example:
    >>> grid = load_photometry_grid()
    >>> sun = absolute_magnitudes(grid, teff=[5772.0], logg=[4.438], feh=[0.0], log_r=[0.0])
    >>> round(float(sun.g[0]), 2), round(float(sun.bp[0] - sun.rp[0]), 2)
    (4.67, 0.8)
    >>> ext = extinction(grid, teff=[5772.0], logg=[4.438], feh=[0.0], a0=[0.0, 1.0])
    Traceback (most recent call last):
    ...
    galmock.errors.InputError: photometry: a0 has 2 values, teff has 1
    >>> ext = extinction(grid, teff=[5772.0] * 2, logg=[4.438] * 2, feh=[0.0] * 2, a0=[0.0, 1.0])
    >>> ext.g.round(3).tolist(), bool(ext.bp[1] > ext.g[1] > ext.rp[1])
    ([0.0, 0.876], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from scipy.interpolate import RegularGridInterpolator

from galmock.errors import InputError

__all__ = ["BANDS", "PHOTOMETRY_GRID", "PIVOT_ANGSTROM", "ZP_AB_MINUS_VEGA", "Extinction",
           "Photometry", "PhotometryGrid", "absolute_magnitudes", "extinction",
           "load_photometry_grid", "vega_zero_points"]

#: Gaia DR3 bands, in the order of every array here.
BANDS = ("G", "BP", "RP")
#: DR3 passband pivot wavelengths (Å), Riello et al. 2021.
PIVOT_ANGSTROM = {"G": 6217.59, "BP": 5109.71, "RP": 7769.02}
#: ZP_AB − ZP_Vega (mag), Riello et al. 2021 Table 1 (G 25.8010 − 25.6874, ...).
ZP_AB_MINUS_VEGA = {"G": 25.8010 - 25.6874, "BP": 25.3540 - 25.3385, "RP": 25.1040 - 24.7479}

#: The packaged grid's file name (in galmock/data).
PHOTOMETRY_GRID = "kurucz_gaia_dr3.npz"
_C_ANGSTROM_PER_S = 2.99792458e18
_AB_JY = 3631.0e-23  # erg s^-1 cm^-2 Hz^-1
_R_SUN_CM = 6.957e10  # IAU 2015 nominal
_TEN_PC_CM = 10 * 3.0856775814913673e18


def vega_zero_points() -> np.ndarray:
    """``Z_X`` such that ``M_X = mag0_X − 5 log10(R / 10 pc) − Z_X`` (Vega magnitudes), per band.

    Example:
        >>> vega_zero_points().round(3).tolist()
        [21.49, 20.965, 22.216]
    """
    return np.array([
        -2.5 * math.log10(_AB_JY * _C_ANGSTROM_PER_S / PIVOT_ANGSTROM[b] ** 2)
        + ZP_AB_MINUS_VEGA[b] for b in BANDS
    ])


@dataclass(frozen=True)
class PhotometryGrid:
    """The synthetic-photometry grid (:func:`load_photometry_grid`)."""

    teff: np.ndarray  # (nT,) K
    logg: np.ndarray  # (ng,)
    feh: np.ndarray  # (nz,)
    a0: np.ndarray  # (na,) mag, from 0
    mag0: RegularGridInterpolator  # (log Teff, log g, [Fe/H]) -> (3,)
    ax: RegularGridInterpolator  # (log Teff, log g, [Fe/H]) -> (3 * na,)
    filled: RegularGridInterpolator  # nearest node's "no model here" flag


@dataclass(frozen=True)
class Photometry:
    """Absolute magnitudes per star (Vega, float64) and how many stars were clipped or fell in
    filled cells."""

    g: np.ndarray
    bp: np.ndarray
    rp: np.ndarray
    clipped: int
    filled: int


@dataclass(frozen=True)
class Extinction:
    """A_G, A_BP, A_RP per star (mag) and how many stars were clipped to the grid."""

    g: np.ndarray
    bp: np.ndarray
    rp: np.ndarray
    clipped: int


def load_photometry_grid(path: str | Path | None = None) -> PhotometryGrid:
    """Read the packaged grid (or ``path``) and set up its interpolators."""
    packaged = resources.files("galmock") / "data" / PHOTOMETRY_GRID
    where = Path(path) if path is not None else packaged
    try:
        with np.load(where) as f:  # type: ignore[arg-type]
            data = {k: f[k] for k in ("teff", "logg", "feh", "a0", "mag0", "ax", "filled")}
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{where}: not a galmock photometry grid: {err}") from None
    axes = (np.log10(data["teff"]), data["logg"], data["feh"])
    mag0 = np.moveaxis(data["mag0"].astype(np.float64), 0, -1)  # (nT, ng, nz, 3)
    ax = data["ax"].astype(np.float64)  # (3, na, nT, ng, nz)
    ax = np.moveaxis(ax.reshape(-1, *ax.shape[2:]), 0, -1)  # (nT, ng, nz, 3 * na)
    return PhotometryGrid(
        teff=data["teff"], logg=data["logg"], feh=data["feh"], a0=data["a0"],
        mag0=RegularGridInterpolator(axes, mag0),
        ax=RegularGridInterpolator(axes, ax),
        filled=RegularGridInterpolator(axes, data["filled"].astype(np.float64),
                                       method="nearest"),
    )


def _columns(**named: ArrayLike) -> dict[str, np.ndarray]:
    """The named inputs as float64 1-D arrays of one length; NaN is refused by name."""
    out = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in named.items()}
    first = next(iter(out))
    for name, values in out.items():
        if values.ndim != 1 or len(values) != len(out[first]):
            raise InputError(f"photometry: {name} has {values.size} values, {first} has "
                             f"{out[first].size}")
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError(f"photometry: {name} is not finite for {int(bad.sum())} star(s) "
                             f"(first: row {int(np.flatnonzero(bad)[0])}, value "
                             f"{float(values[bad][0])!r}); flag remnants and stars below the "
                             "isochrone grid before asking for magnitudes")
    return out


def _clip(grid: PhotometryGrid, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid coordinates (log Teff, log g, [Fe/H]) clipped to the grid, and which stars moved."""
    if (teff <= 0).any():
        raise InputError(f"photometry: teff must be positive, got {float(teff[teff <= 0][0])!r}")
    t = np.clip(teff, grid.teff[0], grid.teff[-1])
    g = np.clip(logg, grid.logg[0], grid.logg[-1])
    z = np.clip(feh, grid.feh[0], grid.feh[-1])
    moved = (t != teff) | (g != logg) | (z != feh)
    return np.column_stack([np.log10(t), g, z]), t, moved


def absolute_magnitudes(grid: PhotometryGrid, teff: ArrayLike, logg: ArrayLike, feh: ArrayLike,
                        log_r: ArrayLike) -> Photometry:
    r"""Absolute G, BP, RP (Vega) of stars with ``teff`` (K), ``logg`` (cgs), ``feh`` and
    ``log_r`` = log10(R / R_sun), e.g. :func:`galmock.isochrones.stellar_parameters`'s.

    Raises:
        InputError: arrays of different lengths, a NaN or infinite value (remnants and stars
            below the isochrone grid must be dropped first), or a non-positive Teff.
    """
    c = _columns(teff=teff, logg=logg, feh=feh, log_r=log_r)
    points, t_used, moved = _clip(grid, c["teff"], c["logg"], c["feh"])
    mag0 = grid.mag0(points)
    # Keep the luminosity where Teff was clipped: the clipped node's fluxes, scaled by T^4.
    mags = (mag0 - 5 * np.log10(_R_SUN_CM * 10.0 ** c["log_r"] / _TEN_PC_CM)[:, None]
            - vega_zero_points() + 10 * np.log10(t_used / c["teff"])[:, None])
    filled = int(grid.filled(points).sum())
    return Photometry(mags[:, 0], mags[:, 1], mags[:, 2], int(moved.sum()), filled)


def extinction(grid: PhotometryGrid, teff: ArrayLike, logg: ArrayLike, feh: ArrayLike,
               a0: ArrayLike) -> Extinction:
    r"""A_G, A_BP, A_RP for extinction ``a0`` (A0, mag at 550 nm) of stars with ``teff``,
    ``logg`` and ``feh``: zero at A0 = 0 and increasing with A0.

    Raises:
        InputError: as :func:`absolute_magnitudes`, or a negative A0.
    """
    c = _columns(teff=teff, logg=logg, feh=feh, a0=a0)
    if (c["a0"] < 0).any():
        raise InputError(f"photometry: a0 must be >= 0 mag, got {float(c['a0'][c['a0'] < 0][0])!r}")
    points, _, moved = _clip(grid, c["teff"], c["logg"], c["feh"])
    na = len(grid.a0)
    table = grid.ax(points).reshape(-1, len(BANDS), na)  # (n, band, A0 node)
    a0 = c["a0"]
    i = np.clip(np.searchsorted(grid.a0, a0, side="right") - 1, 0, na - 2)
    lo, hi = grid.a0[i], grid.a0[i + 1]
    w = ((a0 - lo) / (hi - lo))[:, None]
    rows = np.arange(len(a0))
    ax = table[rows, :, i] * (1 - w) + table[rows, :, i + 1] * w
    beyond = a0 > grid.a0[-1]
    # Beyond the last node: each band's A_X / A0 at the last node (linear extrapolation of
    # the last interval could turn over).
    ax[beyond] = table[rows[beyond], :, -1] * (a0[beyond] / grid.a0[-1])[:, None]
    return Extinction(ax[:, 0], ax[:, 1], ax[:, 2], int((moved | beyond).sum()))
