r"""Gaia observables of stars: isochrone parameters, photometry, extinction and Gaia's errors.

The pure core behind ``observables:`` in a job. It composes :mod:`galmock.isochrones` (MIST:
initial mass, age, [Fe/H] → Teff, log g, radius, phase), :mod:`galmock.photometry` (absolute
G, BP, RP and A_G, A_BP, A_RP through each star's own spectrum), :mod:`galmock.dust` (A0 along
the sight line from the observer) and :mod:`galmock.gaia_errors` (pygaia's uncertainties) into
catalog columns (:data:`OBSERVABLE_COLUMNS`), in Gaia DR3's names and units:

* the Gaia names hold **observed** values, drawn around the true ones with the release's
  uncertainties: ``parallax``, ``pmra``, ``pmdec`` (mas, mas/yr), ``phot_g_mean_mag``,
  ``phot_bp_mean_mag``, ``phot_rp_mean_mag``, ``bp_rp``, and ``radial_velocity`` only where
  G_RVS ≤ 14 (DR3's limit; NaN elsewhere, as in gaia_source);
* their **true** values sit under ``*_true`` (``parallax_true``, ``phot_g_mean_mag_true``, …);
  apparent magnitudes include the extinction;
* ``ra``, ``dec``, ``l``, ``b`` and ``distance`` stay true (positional errors, ~ the parallax
  error, are not drawn).

Stars without photometry have NaN magnitudes, errors and observed values: remnants (MIST
post-AGB and white dwarfs, and stars heavier than any their isochrone still holds), Wolf–Rayet
stars (MIST phase 9, flagged with the remnants by :mod:`galmock.isochrones`: the Kurucz grid has
no atmospheres for them; a few per million young stars) and stars below the isochrone grid
(< 0.1 Msun). ``phase`` says which: the MIST phase (−1 pre-main
sequence, 0 main sequence, 2 red giant branch, 3 core He burning, 4 early AGB, 5 TP-AGB,
6 post-AGB / white dwarf, 9 Wolf–Rayet), :data:`PHASE_REMNANT`, :data:`PHASE_BELOW_GRID` or
:data:`PHASE_UNKNOWN` (no age or [Fe/H]: no photometry rather than a guessed isochrone).
Ages and [Fe/H] beyond the isochrone grid are clipped to it and Teff below the photometry
grid's 3500 K keeps its luminosity (see those modules); :class:`TruePhotometry` counts both.

Example:
    >>> from galmock.config import load_job
    >>> job = load_job("jobs/demo.yaml")
    >>> model = build_observatory(job.observables, job.observer)
    >>> sun = np.asarray(job.observer.sun_position_kpc)
    >>> pos = sun + np.array([[0.01, 0.0, 0.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0]])
    >>> true = true_photometry(model, pos, mass=[1.0, 1.0, 40.0], age=[4.57] * 3, feh=[0.0] * 3)
    >>> true.g.round(2).tolist()  # a Sun at 10 pc; at 1 kpc above the plane; a remnant
    [4.6, 14.67, nan]
    >>> true.phase.tolist()
    [0, 0, 10]
    >>> true_photometry(model, pos[:1], mass=[1.0], age=[np.nan], feh=[0.0]).phase.tolist()
    [12]
    >>> astrometry = {"parallax": 1.0 / np.linalg.norm(pos - sun, axis=1),
    ...               "pmra": np.zeros(3), "pmdec": np.zeros(3), "radial_velocity": np.zeros(3)}
    >>> cols, observed = gaia_columns(model, true, astrometry, np.random.default_rng(0))
    >>> list(cols) == list(OBSERVABLE_COLUMNS), sorted(observed)
    (True, ['parallax', 'pmdec', 'pmra', 'radial_velocity'])
    >>> cols["parallax_error"].astype(float).round(4).tolist()  # mas; no photometry, no error
    [0.0129, 0.0254, nan]
    >>> bool(np.isnan(observed["parallax"][2]))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from galmock.config import DustConfig, ObservablesConfig, ObserverConfig
from galmock.dust import DustModel, ExponentialDustDisk
from galmock.gaia_errors import gaia_uncertainties, observe
from galmock.isochrones import IsochroneGrid, load_mist, stellar_parameters
from galmock.photometry import PhotometryGrid, absolute_magnitudes, extinction, load_photometry_grid
from galmock.store import ColumnSpec, column_spec

__all__ = ["OBSERVABLE_COLUMNS", "PHASE_BELOW_GRID", "PHASE_REMNANT", "PHASE_UNKNOWN",
           "Observatory", "TruePhotometry", "build_observatory", "distance_modulus",
           "gaia_columns", "true_photometry"]

#: ``phase`` of a remnant beyond its isochrone (heavier than the heaviest star it still holds).
PHASE_REMNANT = 10
#: ``phase`` of a star below the isochrone grid's 0.1 Msun.
PHASE_BELOW_GRID = 11
#: ``phase`` of a star whose parent has no age or [Fe/H] (a snapshot without them): no isochrone.
PHASE_UNKNOWN = 12


#: The observables' catalog columns, in order (Gaia DR3 dtypes where gaia_source has the column).
OBSERVABLE_COLUMNS: dict[str, ColumnSpec] = {
    "parallax_error": column_spec("float32", "mas",
                                  "parallax standard error (pygaia, sky-averaged)"),
    "pmra_error": column_spec("float32", "mas / yr", "standard error of pmra (pygaia)"),
    "pmdec_error": column_spec("float32", "mas / yr", "standard error of pmdec (pygaia)"),
    "radial_velocity_error": column_spec("float32", "km / s",
                                  "radial velocity standard error; NaN where G_RVS > 14"),
    "phot_g_mean_mag": column_spec("float32", "mag", "observed G (Vega), extincted"),
    "phot_bp_mean_mag": column_spec("float32", "mag", "observed BP (Vega), extincted"),
    "phot_rp_mean_mag": column_spec("float32", "mag", "observed RP (Vega), extincted"),
    "bp_rp": column_spec("float32", "mag", "observed BP - RP"),
    "phot_g_mean_mag_error": column_spec("float32", "mag", "G standard error (pygaia)"),
    "phot_bp_mean_mag_error": column_spec("float32", "mag", "BP standard error (pygaia)"),
    "phot_rp_mean_mag_error": column_spec("float32", "mag", "RP standard error (pygaia)"),
    "grvs_mag": column_spec("float32", "mag", "true G_RVS (from G and RP, Sartoretti et al. 2022)"),
    "parallax_true": column_spec("float64", "mas", "true parallax"),
    "pmra_true": column_spec("float64", "mas / yr", "true pmra (times cos(dec))"),
    "pmdec_true": column_spec("float64", "mas / yr", "true pmdec"),
    "radial_velocity_true": column_spec("float32", "km / s", "true heliocentric radial velocity"),
    "phot_g_mean_mag_true": column_spec("float32", "mag", "true apparent G (Vega), extincted"),
    "phot_bp_mean_mag_true": column_spec("float32", "mag", "true apparent BP (Vega), extincted"),
    "phot_rp_mean_mag_true": column_spec("float32", "mag", "true apparent RP (Vega), extincted"),
    "abs_g": column_spec("float32", "mag", "absolute G (Vega), no extinction"),
    "a0": column_spec("float32", "mag", "extinction A0 at 550 nm along the sight line"),
    "a_g": column_spec("float32", "mag", "extinction in G"),
    "a_bp": column_spec("float32", "mag", "extinction in BP"),
    "a_rp": column_spec("float32", "mag", "extinction in RP"),
    "teff": column_spec("float32", "K", "effective temperature (MIST)"),
    "logg": column_spec("float32", "dex", "log10 surface gravity, cgs (MIST)"),
    "mass_initial": column_spec("float32", "solMass", "initial stellar mass (the star's IMF draw)"),
    "mass_current": column_spec("float32", "solMass", "current stellar mass (MIST)"),
    "phase": column_spec("int8", "", "MIST phase; 10: remnant beyond the isochrone, 11: below "
                         "0.1 Msun, 12: no age or [Fe/H]"),
}


@dataclass(frozen=True)
class Observatory:
    """What the observables are computed with: the grids, the dust model, the observer's
    galactocentric position (kpc) and the Gaia release whose errors are drawn."""

    isochrones: IsochroneGrid
    photometry: PhotometryGrid
    dust: DustModel
    observer: np.ndarray
    release: str


def dust_model(cfg: DustConfig) -> DustModel:
    """The configured dust model (``none``: an empty disk, A0 = 0 everywhere)."""
    a0 = cfg.a0_per_kpc if cfg.model == "exponential-disk" else 0.0
    return ExponentialDustDisk(a0, cfg.scale_length_kpc, cfg.scale_height_kpc)


def build_observatory(cfg: ObservablesConfig, observer: ObserverConfig) -> Observatory:
    """Load the grids (~1 s, ~100 MB) and set up the dust model for ``cfg``."""
    return Observatory(
        isochrones=load_mist(),
        photometry=load_photometry_grid(),
        dust=dust_model(cfg.dust),
        observer=np.asarray(observer.sun_position_kpc, dtype=np.float64),
        release=cfg.release,
    )


def distance_modulus(distance_kpc: ArrayLike) -> np.ndarray:
    """5 log10(d / 10 pc) for distances in kpc.

    Example:
        >>> distance_modulus([0.01, 1.0]).tolist()
        [0.0, 10.0]
    """
    return 5.0 * np.log10(np.asarray(distance_kpc, dtype=np.float64) * 100.0)


@dataclass(frozen=True)
class TruePhotometry:
    """Per star: stellar parameters, extinction and true apparent magnitudes (NaN where the
    star has no photometry, ``~has_photometry``), and how many stars were clipped to a grid."""

    teff: np.ndarray
    logg: np.ndarray
    mass_current: np.ndarray
    phase: np.ndarray  # int8, see the module docstring
    has_photometry: np.ndarray
    a0: np.ndarray
    a_g: np.ndarray
    a_bp: np.ndarray
    a_rp: np.ndarray
    abs_g: np.ndarray
    g: np.ndarray
    bp: np.ndarray
    rp: np.ndarray
    mass_initial: np.ndarray
    clipped_isochrone: int
    clipped_photometry: int


def true_photometry(model: Observatory, pos: ArrayLike, mass: ArrayLike, age: ArrayLike,
                    feh: ArrayLike) -> TruePhotometry:
    r"""True apparent G, BP, RP of stars at galactocentric ``pos`` (n, 3) kpc with initial
    ``mass`` (Msun), ``age`` (Gyr) and ``feh``, seen from ``model.observer``.

    Arguments:
        model: the grids, dust and observer (:func:`build_observatory`).
        pos: galactocentric positions, float64 (n, 3), kpc.
        mass: initial masses (Msun).
        age: ages (Gyr).
        feh: [Fe/H].
    """
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    mass = np.asarray(mass, dtype=np.float64).reshape(-1)
    age = np.asarray(age, dtype=np.float64).reshape(-1)
    feh = np.asarray(feh, dtype=np.float64).reshape(-1)
    n = len(pos)
    sp = stellar_parameters(model.isochrones, mass, age, feh)
    phase = np.where(np.isnan(sp.phase), 0, sp.phase).astype(np.int8)
    phase[sp.below_grid] = PHASE_BELOW_GRID
    phase[sp.remnant & np.isnan(sp.phase)] = PHASE_REMNANT
    known = np.isfinite(age) & np.isfinite(feh)  # NaN would take the grid's first isochrone
    phase[~known] = PHASE_UNKNOWN
    # Remnants carry no photometry: the Kurucz grid has no white-dwarf atmospheres.
    ok = ~(sp.remnant | sp.below_grid) & known
    a0 = model.dust.a0(model.observer, pos)
    nan = np.full(n, np.nan)
    out = {k: nan.copy() for k in ("a_g", "a_bp", "a_rp", "abs_g", "g", "bp", "rp")}
    clipped = 0
    if ok.any():
        teff, logg, z = sp.teff[ok], sp.logg[ok], feh[ok]
        absolute = absolute_magnitudes(model.photometry, teff, logg, z, sp.log_r[ok])
        ext = extinction(model.photometry, teff, logg, z, a0[ok])
        mu = distance_modulus(np.linalg.norm(pos[ok] - model.observer, axis=1))
        out["a_g"][ok], out["a_bp"][ok], out["a_rp"][ok] = ext.g, ext.bp, ext.rp
        out["abs_g"][ok] = absolute.g
        out["g"][ok] = absolute.g + mu + ext.g
        out["bp"][ok] = absolute.bp + mu + ext.bp
        out["rp"][ok] = absolute.rp + mu + ext.rp
        clipped = ext.clipped  # clipped to the grid (as in absolute_magnitudes) or A0 > 10
    teff_all = np.where(ok, sp.teff, np.nan)
    return TruePhotometry(
        teff=teff_all, logg=np.where(ok, sp.logg, np.nan),
        mass_current=np.where(ok, sp.mass_current, np.nan), phase=phase, has_photometry=ok,
        a0=a0, mass_initial=mass, clipped_isochrone=sp.clipped, clipped_photometry=clipped,
        **out,
    )  # fmt: skip


def gaia_columns(model: Observatory, true: TruePhotometry, astrometry: Mapping[str, ArrayLike],
                 generator: np.random.Generator
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    r"""The :data:`OBSERVABLE_COLUMNS` of stars with ``true`` photometry and error-free
    ``astrometry`` (``parallax``, ``pmra``, ``pmdec``, ``radial_velocity``), observed values drawn
    from ``generator``, and the observed ``parallax``, ``pmra``, ``pmdec`` and
    ``radial_velocity`` that replace the astrometry's true ones (float64).

    Arguments:
        model: its ``release`` sets the uncertainties.
        true: :func:`true_photometry` of the stars.
        astrometry: true parallax (mas), pmra, pmdec (mas/yr), radial_velocity (km/s).
        generator: the noise (seed it per chunk for a reproducible catalog).
    """
    ok = true.has_photometry
    n = len(ok)
    nan = np.full(n, np.nan)
    err = {k: nan.copy() for k in ("parallax_error", "pmra_error", "pmdec_error",
                                   "radial_velocity_error", "phot_g_mean_mag_error",
                                   "phot_bp_mean_mag_error", "phot_rp_mean_mag_error", "grvs_mag")}
    if ok.any():
        e = gaia_uncertainties(true.g[ok], true.bp[ok], true.rp[ok], true.teff[ok],
                               true.logg[ok], release=model.release)
        for name in err:
            err[name][ok] = getattr(e, name)
    plx, pmra, pmdec, rv = (np.asarray(astrometry[k], dtype=np.float64)
                            for k in ("parallax", "pmra", "pmdec", "radial_velocity"))
    # One stream, always drawn in this order for every star, so a star's noise depends only on
    # its place in the chunk, not on which other stars have photometry.
    observed = {
        "parallax": observe(plx, err["parallax_error"], generator),
        "pmra": observe(pmra, err["pmra_error"], generator),
        "pmdec": observe(pmdec, err["pmdec_error"], generator),
        "radial_velocity": observe(rv, err["radial_velocity_error"], generator),
        "g": observe(true.g, err["phot_g_mean_mag_error"], generator),
        "bp": observe(true.bp, err["phot_bp_mean_mag_error"], generator),
        "rp": observe(true.rp, err["phot_rp_mean_mag_error"], generator),
    }
    values = {
        **{k: err[k] for k in ("parallax_error", "pmra_error", "pmdec_error",
                               "radial_velocity_error")},
        "phot_g_mean_mag": observed["g"],
        "phot_bp_mean_mag": observed["bp"],
        "phot_rp_mean_mag": observed["rp"],
        "bp_rp": observed["bp"] - observed["rp"],
        **{k: err[k] for k in ("phot_g_mean_mag_error", "phot_bp_mean_mag_error",
                               "phot_rp_mean_mag_error", "grvs_mag")},
        "parallax_true": plx,
        "pmra_true": pmra,
        "pmdec_true": pmdec,
        "radial_velocity_true": rv,
        "phot_g_mean_mag_true": true.g,
        "phot_bp_mean_mag_true": true.bp,
        "phot_rp_mean_mag_true": true.rp,
        "abs_g": true.abs_g,
        "a0": true.a0,
        "a_g": true.a_g,
        "a_bp": true.a_bp,
        "a_rp": true.a_rp,
        "teff": true.teff,
        "logg": true.logg,
        "mass_initial": true.mass_initial,
        "mass_current": true.mass_current,
        "phase": true.phase,
    }
    out = {k: np.asarray(values[k]).astype(spec.dtype, copy=False)
           for k, spec in OBSERVABLE_COLUMNS.items()}
    return out, {k: observed[k] for k in ("parallax", "pmra", "pmdec", "radial_velocity")}
