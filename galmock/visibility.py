r"""Magnitude-limited sampling: which initial masses of a stellar population can be seen.

A star of a population (age, [Fe/H]) at distance modulus μ behind extinction A_G is in a
catalog limited to G ≤ G_lim when its absolute magnitude M_G ≤ G_lim − μ − A_G. Drawing every
star of a galaxy (~10^11) and cutting keeps ~1%; instead an upsampler can accept each flow draw
with the IMF fraction that could be visible there and draw its mass from that part of the IMF
only, which is exact in distribution as long as that part contains every visible mass.

**The visible-mass table** (:func:`visibility_table`). For each population (a parent
particle's age and [Fe/H]) its isochrone is taken at every EEP (:func:`galmock.isochrones.
isochrone_tracks`, the very rows :func:`~galmock.isochrones.stellar_parameters` interpolates
between) and M_G is computed at each (:func:`galmock.photometry.absolute_magnitudes`). A star
of mass m falls in the EEP interval k with m_k ≤ m < m_{k+1} (the bisection there guarantees
it) and its M_G is within :data:`MAGNITUDE_MARGIN` of the brighter end's (parameters are linear
in EEP in between; intervals where the phase changes to a remnant's count as always bright).
So for every threshold level L the masses of the intervals with min(M_G) − margin ≤ L hold
every star with M_G ≤ L, and their hull [m_lo(L), m_hi(L)] is kept, as IMF quantiles rounded
outwards, on levels from :data:`LEVEL_MIN` to :data:`LEVEL_MAX` in :data:`LEVEL_STEP` (a
threshold takes the next level up, again a superset; above the last level every mass with
photometry). Cost: ~0.8 ms per population on one core, 3.7 kB each.

**Two-stage thinning** (:func:`thin_to_visible`): a draw at distance modulus μ is kept with
the table's *envelope* (the largest visible fraction of any population) at L0 = G_lim − μ,
which needs no parent and no extinction; a kept draw then gets its parent and A0 and is kept
with f_parent(L) / envelope(L0), L = L0 − k_min·A0, where k_min = min A_G/A0 over the
photometry grid (:func:`extinction_floor`) bounds every star's extinction from below. Its mass
is drawn from the IMF between the parent's hull quantiles at L, and the exact photometry makes
the final cut G ≤ G_lim. The accepted stars are distributed exactly as "draw every star, then
cut" (tested per (G, distance) bin); every draw of a batch uses three uniforms in a fixed
order, so the result is a function of the seeds.

Example:
    >>> from galmock.config import load_job
    >>> from galmock.imf import kroupa2001
    >>> from galmock.observables import build_observatory
    >>> job = load_job("jobs/demo.yaml")
    >>> model, imf = build_observatory(job.observables, job.observer), kroupa2001()
    >>> table = visibility_table(model.isochrones, model.photometry, imf,
    ...                          age=np.array([0.1, 10.0]), feh=np.array([0.0, -1.0]))
    >>> table.fraction(np.array([0, 1]), np.array([4.67, 4.67])).round(3).tolist()
    [0.081, 0.021]
    >>> table.fraction(np.array([0, 1]), np.array([30.0, 30.0])).round(3).tolist()  # all shine
    [0.873, 0.769]
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from galmock.imf import BrokenPowerLawIMF
from galmock.isochrones import REMNANT_PHASE, IsochroneGrid, isochrone_tracks
from galmock.observables import Observatory, distance_modulus, true_photometry
from galmock.photometry import BANDS, PhotometryGrid, absolute_magnitudes

__all__ = ["LEVEL_MAX", "LEVEL_MIN", "LEVEL_STEP", "MAGNITUDE_MARGIN", "VisibilityTable",
           "extinction_floor", "thin_to_visible", "visibility_table"]

#: Threshold levels (absolute G, mag): below the first a threshold takes the first level's
#: hull; above the last, every mass with photometry (the faintest stars, 0.1 Msun, are ~M_G 15).
LEVEL_MIN, LEVEL_MAX, LEVEL_STEP = -6.0, 17.0, 0.05
#: How much brighter than both its ends a star inside an EEP interval is taken to be at most
#: (its parameters are linear between two adjacent EEPs and the bolometric correction nearly so;
#: tests/test_visibility.py checks the bound on random stars).
MAGNITUDE_MARGIN = 0.02
# stellar_parameters' tolerance on the grid's ends (below_grid, remnant): a star that far past
# the first or last EEP's mass still takes that EEP.
_ENDS = 1e-6
_BLOCK = 256  # populations per block: ~20 MB of tracks at a time


@dataclass(frozen=True)
class VisibilityTable:
    """Per population and threshold level, the IMF quantiles ``[q_lo, q_hi]`` holding every mass
    visible at that level (float32, rounded outwards; q_lo = q_hi = 0: none), and per level the
    largest visible fraction of any population (``envelope``)."""

    levels: np.ndarray  # (J,) increasing; the last is +inf
    q_lo: np.ndarray  # (P, J)
    q_hi: np.ndarray  # (P, J)
    envelope: np.ndarray  # (J,)

    def level(self, threshold: np.ndarray) -> np.ndarray:
        """Index of the first level at or above each threshold (a superset of its masses)."""
        return np.clip(np.searchsorted(self.levels, threshold, side="left"), 0,
                       len(self.levels) - 1)

    def fraction(self, population: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """The IMF fraction that may be visible for stars of ``population`` at ``threshold``."""
        j = self.level(np.asarray(threshold, dtype=np.float64))
        p = np.asarray(population, dtype=np.int64)
        return self.q_hi[p, j].astype(np.float64) - self.q_lo[p, j].astype(np.float64)

    def envelope_fraction(self, threshold: np.ndarray) -> np.ndarray:
        """The largest :meth:`fraction` of any population at ``threshold``."""
        return self.envelope[self.level(np.asarray(threshold, dtype=np.float64))]

    def draw_masses(self, imf: BrokenPowerLawIMF, population: np.ndarray, threshold: np.ndarray,
                    u: np.ndarray) -> np.ndarray:
        """Initial masses from the IMF restricted to the population's hull at ``threshold``,
        by inverse CDF from uniforms ``u``."""
        j = self.level(np.asarray(threshold, dtype=np.float64))
        p = np.asarray(population, dtype=np.int64)
        lo = self.q_lo[p, j].astype(np.float64)
        hi = self.q_hi[p, j].astype(np.float64)
        return imf.quantile(lo + np.asarray(u) * (hi - lo))


def extinction_floor(grid: PhotometryGrid) -> float:
    """min A_G / A0 over every node and A0 of the photometry grid: no star's A_G is below this
    times its A0 (A_G is interpolated linearly between nodes and beyond A0 = 10 keeps the last
    ratio).

    Example:
        >>> from galmock.photometry import load_photometry_grid
        >>> round(extinction_floor(load_photometry_grid()), 3)
        0.578
    """
    na = len(grid.a0)
    table = grid.ax.values.reshape(*grid.ax.values.shape[:-1], len(BANDS), na)
    g = table[..., BANDS.index("G"), 1:]  # A0 = 0 has A_G = 0
    return float((g / grid.a0[1:]).min())


def _outwards(q: np.ndarray, down: bool) -> np.ndarray:
    """float32 copy of ``q`` rounded down (or up), so the float32 interval holds the float64."""
    f = q.astype(np.float32)
    if down:
        return np.where(f.astype(np.float64) > q, np.nextafter(f, np.float32(-1)), f)
    return np.where(f.astype(np.float64) < q, np.nextafter(f, np.float32(2)), f)


def visibility_table(isochrones: IsochroneGrid, photometry: PhotometryGrid,
                     imf: BrokenPowerLawIMF, age: np.ndarray, feh: np.ndarray,
                     threads: int = 1) -> VisibilityTable:
    r"""The visible-mass table of populations with ``age`` (Gyr) and ``feh`` (see the module
    docstring).

    Arguments:
        isochrones: the MIST grid.
        photometry: the synthetic-photometry grid.
        imf: the IMF the masses are drawn from (its quantiles are stored).
        age: the populations' ages (Gyr), as the catalog stores them (float32 values).
        feh: their [Fe/H], likewise.
        threads: blocks of populations built at once (numpy releases the GIL in the heavy
            parts: 1.7x faster with 2).
    """
    age = np.asarray(age, dtype=np.float64).reshape(-1)
    feh = np.asarray(feh, dtype=np.float64).reshape(-1)
    levels = np.append(np.arange(LEVEL_MIN, LEVEL_MAX + LEVEL_STEP / 2, LEVEL_STEP), np.inf)
    q_lo = np.zeros((len(age), len(levels)), dtype=np.float32)
    q_hi = np.zeros_like(q_lo)

    def block(start: int) -> None:
        stop = min(start + _BLOCK, len(age))
        lo, hi = _hulls(isochrones, photometry, age[start:stop], feh[start:stop], levels)
        empty = ~np.isfinite(lo)
        cdf_lo = np.where(empty, 0.0, imf.cdf(np.where(empty, imf.m_min, lo)))
        cdf_hi = np.where(empty, 0.0, imf.cdf(np.where(empty, imf.m_min, hi)))
        q_lo[start:stop] = _outwards(cdf_lo, down=True)
        q_hi[start:stop] = np.where(empty, np.float32(0), _outwards(cdf_hi, down=False))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(block, range(0, len(age), _BLOCK)))
    envelope = (q_hi.astype(np.float64) - q_lo.astype(np.float64)).max(axis=0, initial=0.0)
    return VisibilityTable(levels=levels, q_lo=q_lo, q_hi=q_hi, envelope=envelope)


def _hulls(isochrones: IsochroneGrid, photometry: PhotometryGrid, age: np.ndarray,
           feh: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per population and level, the lowest and highest mass of the EEP intervals bright enough
    (NaN where none is)."""
    tracks = isochrone_tracks(isochrones, age, feh)
    shines = tracks.valid & (tracks.phase < REMNANT_PHASE)
    mg = np.full(tracks.valid.shape, np.nan)
    if shines.any():
        z = np.broadcast_to(feh[:, None], shines.shape)[shines]
        mg[shines] = absolute_magnitudes(photometry, 10.0 ** tracks.log_teff[shines],
                                         tracks.logg[shines], z, tracks.log_r[shines]).g
    m0, m1 = tracks.mass_initial[:, :-1], tracks.mass_initial[:, 1:]
    s0, s1 = shines[:, :-1], shines[:, 1:]
    with np.errstate(invalid="ignore"):
        usable = (m1 > m0) & (s0 | s1)
        bright = np.fmin(mg[:, :-1], mg[:, 1:]) - MAGNITUDE_MARGIN
    # A star between a shining EEP and a remnant's takes the nearer one's phase and values
    # interpolated towards a remnant's: no bound on its M_G, so always a candidate.
    bright = np.where(s0 & s1, bright, -np.inf)
    bright = np.where(usable, bright, np.inf)
    order = np.argsort(bright, axis=1, kind="stable")
    b_sorted = np.take_along_axis(bright, order, axis=1)
    lo_run = np.minimum.accumulate(np.take_along_axis(np.where(usable, m0, np.inf), order, 1), 1)
    hi_run = np.maximum.accumulate(np.take_along_axis(np.where(usable, m1, -np.inf), order, 1), 1)
    lo = np.full((len(age), len(levels)), np.nan)
    hi = np.full_like(lo, np.nan)
    n_usable = usable.sum(axis=1)  # sorted first: the others' bright is +inf
    for p in range(len(age)):
        count = np.minimum(np.searchsorted(b_sorted[p], levels, side="right"), n_usable[p])
        some = count > 0
        lo[p, some] = lo_run[p, count[some] - 1] * (1 - _ENDS)
        hi[p, some] = hi_run[p, count[some] - 1] * (1 + _ENDS)
    return lo, hi


def thin_to_visible(
    table: VisibilityTable,
    model: Observatory,
    imf: BrokenPowerLawIMF,
    limit: float,
    floor: float,
    pos: np.ndarray,
    parents: Callable[[np.ndarray], np.ndarray],
    age: np.ndarray,
    feh: np.ndarray,
    uniforms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The draws at ``pos`` (n, 3) that are visible stars: ``(rows, parent, mass)``.

    Arguments:
        table: the visible-mass table of the populations (:func:`visibility_table`).
        model: grids, dust and observer for the exact photometry.
        imf: the IMF.
        limit: G_lim (true, extincted G).
        floor: :func:`extinction_floor` of ``model.photometry``.
        pos: galactocentric positions of the draws (kpc).
        parents: rows of ``pos`` → each one's population (its parent particle), called only
            for the draws the first stage keeps.
        age: every population's age as stored (float32 values, Gyr).
        feh: likewise [Fe/H].
        uniforms: (n, 3) uniforms in [0, 1): the two stages' and the mass's, per draw.

    Returns the kept rows of ``pos`` (increasing), their populations and initial masses
    (float32, as the catalog stores them).
    """
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    mu = distance_modulus(np.linalg.norm(pos - model.observer, axis=1))
    level0 = limit - mu
    envelope = table.envelope_fraction(level0)
    rows = np.flatnonzero(uniforms[:, 0] < envelope)
    population = np.asarray(parents(rows), dtype=np.int64)
    level = level0[rows] - floor * model.dust.a0(model.observer, pos[rows])
    keep = uniforms[rows, 1] * envelope[rows] < table.fraction(population, level)
    rows, population, level = rows[keep], population[keep], level[keep]
    mass = table.draw_masses(imf, population, level, uniforms[rows, 2]).astype(np.float32)
    true = true_photometry(model, pos[rows], mass, age[population], feh[population])
    with np.errstate(invalid="ignore"):
        seen = true.g <= limit
    return rows[seen], population[seen], mass[seen]
