r"""Stellar parameters from (initial mass, age, [Fe/H]) by interpolating MIST isochrones in EEP.

The grid is MIST v2.5 (v/vcrit = 0.4) as the ``lachesis-grids`` package ships it (HDF5 package
data, no download): 15 [Fe/H] values from -4 to +0.5, 107 ages from log10(age/yr) = 5 to 10.3
in steps of 0.05, and along each isochrone its equivalent evolutionary points (EEPs: the same
EEP marks the same phase, e.g. the terminal-age main sequence, on every isochrone).

Interpolating naively in mass mixes phases: near the main-sequence turn-off two neighbouring
isochrones put the same initial mass on different phases, and averaging them makes stars that
no isochrone has. As the MIST and ``isochrones`` packages do, galmock interpolates at fixed
EEP instead:

1. the star's [Fe/H] and log age fall in one grid cell; the 4 x 4 isochrones around it,
   weighted by cubic Lagrange interpolation in both (linear in the grid's edge cells), define
   the star's own isochrone, row by row at equal EEP (cubic, not bilinear: post-main-sequence
   phases span tiny ranges of initial mass, and a linear interpolant's curvature error moved
   giants along the RGB by 0.1 dex in L at the grid's age step);
2. along that isochrone, initial mass increases with EEP: a bisection finds the (fractional)
   EEP where it equals the star's initial mass;
3. every parameter is the same combination of the corners, linear in EEP between the two
   bracketing EEPs; ``phase`` is the nearer EEP's phase on the heaviest-weighted corner.

**Remnants** are flagged (``remnant``): white dwarfs and post-AGB stars (MIST phase 6; the
grid carries their parameters, which are kept) and stars heavier than the heaviest the
isochrone holds at their age (every parameter NaN). Stars lighter than the grid's lightest
(0.1 Msun) are flagged ``below_grid`` (NaN): brown dwarfs and the faintest M dwarfs, beyond
any survey's reach. Where one corner's isochrone lacks an EEP the others have (they start and
end at different EEPs), that corner stands in with its lightest or heaviest star. Ages and
[Fe/H] outside the grid are **clipped** to it (a simulation's [Fe/H] of -5 takes the -4
isochrones; ages below 10^5 yr the youngest) and counted in :attr:`StellarParameters.clipped`.
EEP rows missing from an isochrone (NaN in the grid, e.g. a few low-mass main-sequence points)
are filled by linear interpolation along EEP between their neighbours. The grid stores initial
masses as float32: in late phases (AGB) several EEPs share one mass, and a star of that mass
takes the last of them.

Phases (MIST): -1 pre-main sequence, 0 main sequence, 2 red giant branch, 3 core helium
burning, 4 early AGB, 5 thermally pulsing AGB, 6 post-AGB and white dwarf, 9 Wolf-Rayet.

References:
    Choi, J. et al. (2016), ApJ 823, 102 (MIST I). Dotter, A. (2016), ApJS 222, 8 (EEPs).

Example:
    >>> grid = load_mist()
    >>> sun = stellar_parameters(grid, [1.0], [4.57], [0.0])
    >>> round(float(sun.teff[0])), round(float(sun.log_l[0]), 2), int(sun.phase[0])
    (5834, 0.03, 0)
    >>> old = stellar_parameters(grid, [0.5, 0.82, 0.95, 0.05], [12.0] * 4, [-1.0] * 4)
    >>> old.phase.tolist()  # main sequence, red giant, white dwarf, below the grid
    [0.0, 2.0, 6.0, nan]
    >>> old.remnant.tolist(), old.below_grid.tolist()
    ([False, False, True, False], [False, False, False, True])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from lachesis_grids import grid_path
from numpy.typing import ArrayLike

__all__ = ["MIST_FILE", "PARAMETERS", "REMNANT_PHASE", "IsochroneGrid", "IsochroneTracks",
           "StellarParameters", "isochrone_tracks", "load_mist", "stellar_parameters"]

#: The MIST grid of lachesis-grids.
MIST_FILE = "mist_v2.5_vvcrit0.4.h5"
#: Grid column → :class:`StellarParameters` field, interpolated linearly.
PARAMETERS = {
    "star_mass": "mass_current",
    "log_Teff": "log_teff",
    "log_g": "logg",
    "log_L": "log_l",
    "log_R": "log_r",
    "Mbol": "mbol",
}
#: MIST phase 6: post-AGB stars and white dwarfs, flagged as remnants (parameters kept).
REMNANT_PHASE = 6
_BISECTION_STEPS = 12  # 2**12 > the 1722 EEPs of an isochrone


@dataclass(frozen=True)
class IsochroneGrid:
    """Isochrones on a ([Fe/H], log age) grid, rows by EEP.

    Isochrone ``(i, j)`` (``feh[i]``, ``log_age[j]``) holds EEPs ``eep_start[i, j]`` to
    ``eep_start[i, j] + n_rows[i, j] - 1`` in rows ``row_start[i, j]`` onwards of each column.
    """

    feh: np.ndarray
    log_age: np.ndarray
    eep_start: np.ndarray
    n_rows: np.ndarray
    row_start: np.ndarray
    initial_mass: np.ndarray
    phase: np.ndarray
    columns: dict[str, np.ndarray]
    track_columns: np.ndarray  # (rows, 4): initial mass, log Teff, log g, log R (isochrone_tracks)


@dataclass(frozen=True)
class StellarParameters:
    """Per star: the interpolated parameters (NaN where ``remnant`` or ``below_grid``)."""

    mass_current: np.ndarray
    log_teff: np.ndarray
    logg: np.ndarray
    log_l: np.ndarray
    log_r: np.ndarray
    mbol: np.ndarray
    phase: np.ndarray
    eep: np.ndarray
    remnant: np.ndarray
    below_grid: np.ndarray
    clipped: int  # stars whose age or [Fe/H] was clipped to the grid

    @property
    def teff(self) -> np.ndarray:
        return 10.0**self.log_teff


def load_mist(path: str | Path | None = None) -> IsochroneGrid:
    """Read the MIST grid (default: lachesis-grids' package data) into memory (~90 MB: the
    eight columns galmock uses, as float64)."""
    path = Path(path) if path is not None else grid_path(MIST_FILE)
    # The four isochrone_tracks gathers first (adjacent in memory), then phase and the rest.
    wanted = ("initial_mass", "log_Teff", "log_g", "log_R", "phase",
              *(c for c in PARAMETERS if c not in ("log_Teff", "log_g", "log_R")))
    with h5py.File(path, "r") as f:
        names = [str(c) for c in f.attrs["columns"]]
        data = f["values"]
        # Column by column (the file is chunked by column): no full float32 copy on the way.
        values = np.empty((data.shape[0], len(wanted)), dtype=np.float64)
        for k, name in enumerate(wanted):
            values[:, k] = data[:, names.index(name)]
        feh, log_age = f["feh_values"][:], f["age_values"][:]
        eep_start, n_rows = f["offsets"][:], f["lengths"][:]
    shape = (len(feh), len(log_age))
    row_start = np.r_[0, np.cumsum(n_rows)[:-1]]
    _fill_gaps(values, row_start, n_rows, label=wanted.index("phase"))
    col = {name: values[:, k] for k, name in enumerate(wanted)}
    return IsochroneGrid(
        feh=feh,
        log_age=log_age,
        eep_start=eep_start.reshape(shape),
        n_rows=n_rows.reshape(shape),
        row_start=row_start.reshape(shape),
        initial_mass=col.pop("initial_mass"),
        phase=col.pop("phase"),
        track_columns=values[:, :4],  # a view: initial mass, log Teff, log g, log R
        columns=col,
    )


def _fill_gaps(
    values: np.ndarray, row_start: np.ndarray, n_rows: np.ndarray, label: int
) -> None:
    """Fill NaN rows inside each isochrone by linear interpolation along EEP (in place); the
    column ``label`` (phase) takes the previous valid row's."""
    for start, n in zip(row_start, n_rows):
        block = values[start : start + n]
        missing = np.isnan(block[:, 0])
        if not missing.any():
            continue
        eep = np.arange(n)
        valid = ~missing
        for k in range(block.shape[1]):
            block[missing, k] = np.interp(eep[missing], eep[valid], block[valid, k])
        previous = np.maximum.accumulate(np.where(valid, eep, 0))
        block[missing, label] = block[previous[missing], label]


def stellar_parameters(
    grid: IsochroneGrid,
    mass_initial: np.ndarray,
    age_gyr: np.ndarray,
    feh: np.ndarray,
) -> StellarParameters:
    """Interpolate ``grid`` at each star's initial mass [Msun], age [Gyr] and [Fe/H] (see the
    module docstring for the method, remnants and clipping)."""
    mass = np.asarray(mass_initial, np.float64)
    corners, starts, ends, lo, hi, clipped = _corners(grid, age_gyr, feh)

    def rows(eep: np.ndarray) -> list[np.ndarray]:
        return [grid.row_start[a, b] + np.clip(eep, first, last) - first
                for (a, b, _), first, last in zip(corners, starts, ends)]

    def mass_at(eep: np.ndarray) -> np.ndarray:
        return sum(w * grid.initial_mass[r] for (_, _, w), r in zip(corners, rows(eep)))

    # The grid's masses are float32: a star at a node's mass (0.1 Msun) is on the grid.
    below = mass < mass_at(lo) * (1 - 1e-6)
    remnant = mass > mass_at(hi) * (1 + 1e-6)
    # Bisection for the last EEP whose initial mass is <= the star's: [left, right] brackets.
    left, right = lo.copy(), hi.copy()
    for _ in range(_BISECTION_STEPS):
        mid = (left + right + 1) // 2
        up = mass_at(mid) <= mass
        left = np.where(up & (mid <= right), mid, left)
        right = np.where(up | (mid > right), right, mid - 1)
    right = np.minimum(left + 1, hi)
    m_left, m_right = mass_at(left), mass_at(right)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(m_right > m_left, (mass - m_left) / (m_right - m_left), 0.0)
    t = np.clip(t, 0.0, 1.0)
    r_left, r_right = rows(left), rows(right)
    out = {}
    for column, field in PARAMETERS.items():
        values = grid.columns[column]
        out[field] = sum(
            w * ((1 - t) * values[a] + t * values[b])
            for (_, _, w), a, b in zip(corners, r_left, r_right)
        )
    heaviest = np.argmax(np.stack([w for _, _, w in corners]), axis=0)
    nearer = np.where(t < 0.5, np.stack(r_left), np.stack(r_right))
    phase = grid.phase[np.take_along_axis(nearer, heaviest[None], axis=0)[0]]
    bad = below | remnant
    for field in out:
        out[field] = np.where(bad, np.nan, out[field])
    return StellarParameters(
        **out,
        phase=np.where(bad, np.nan, phase),
        eep=np.where(bad, np.nan, left + t),
        remnant=remnant | (phase >= REMNANT_PHASE),
        below_grid=below & ~remnant,
        clipped=int(np.count_nonzero(clipped)),
    )


@dataclass(frozen=True)
class IsochroneTracks:
    """Whole interpolated isochrones, one row per population and one column per EEP, from the
    first EEP any population has (``first_eep``): ``valid`` marks the EEPs a population's
    isochrone holds; elsewhere every value is NaN. Initial mass mostly increases along a row but
    may turn over in places (pre-main sequence, AGB, float32 ties); a star of mass m lies
    between the EEPs k and k + 1 with m_k <= m < m_{k+1} that the bisection finds."""

    mass_initial: np.ndarray  # (P, E)
    log_teff: np.ndarray
    logg: np.ndarray
    log_r: np.ndarray
    phase: np.ndarray
    valid: np.ndarray
    first_eep: int  # the EEP of column 0


def isochrone_tracks(grid: IsochroneGrid, age_gyr: np.ndarray, feh: np.ndarray) -> IsochroneTracks:
    r"""The isochrone of each population (``age_gyr``, ``feh``) at every integer EEP: exactly
    what :func:`stellar_parameters` interpolates between for a star of that population (the same
    corners and weights; a star's parameters are linear in EEP between two of these columns).

    Arguments:
        grid: the isochrone grid (:func:`load_mist`).
        age_gyr: ages of the P populations (Gyr), clipped to the grid as for stars.
        feh: their [Fe/H], clipped likewise.

    Example:
        >>> tracks = isochrone_tracks(load_mist(), np.array([4.57, 12.0]), np.array([0.0, -1.0]))
        >>> sun = stellar_parameters(load_mist(), [1.0], [4.57], [0.0])
        >>> k = int(sun.eep[0]) - tracks.first_eep  # the Sun's bracket
        >>> row = tracks.mass_initial[0]
        >>> bool(row[k] <= 1.0 < row[k + 1])
        True
        >>> lo, hi = sorted(tracks.log_teff[0, k : k + 2])
        >>> bool(lo <= sun.log_teff[0] <= hi)  # linear in EEP in between
        True
    """
    corners, starts, ends, lo, hi, _ = _corners(grid, np.reshape(age_gyr, -1), np.reshape(feh, -1))
    first = int(lo.min()) if len(lo) else 0
    eep = np.arange(first, int(hi.max()) + 1 if len(hi) else first)[None, :]  # (1, E)
    valid = (eep >= lo[:, None]) & (eep <= hi[:, None])
    rows = [(grid.row_start[a, b][:, None] + np.clip(eep, s[:, None], e[:, None]) - s[:, None])
            for (a, b, _), s, e in zip(corners, starts, ends)]
    # One gather of the four columns per corner (rows of 4 adjacent values), in the order
    # stellar_parameters sums the corners, so the values agree with its to the last bit.
    table = grid.track_columns
    total = np.zeros((*valid.shape, table.shape[1]))
    for (_, _, w), r in zip(corners, rows):
        total += w[:, None, None] * table[r]
    total[~valid] = np.nan
    heaviest = np.argmax(np.stack([w for _, _, w in corners]), axis=0)
    nearest = np.take_along_axis(np.stack(rows), heaviest[None, :, None], axis=0)[0]
    return IsochroneTracks(
        mass_initial=total[..., 0],
        log_teff=total[..., 1],
        logg=total[..., 2],
        log_r=total[..., 3],
        phase=np.where(valid, grid.phase[nearest], np.nan),
        valid=valid,
        first_eep=first,
    )



Corner = tuple[np.ndarray, np.ndarray, np.ndarray]


def _corners(grid: IsochroneGrid, age_gyr: ArrayLike, feh: ArrayLike) -> tuple[
        list[Corner], list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """The 4 x 4 isochrones around each (age, [Fe/H]) with their weights (``(i_feh, j_age,
    weight)``), each one's first and last EEP, the EEP range the corners that count (weight > 0)
    span, and which values were clipped to the grid."""
    metal = np.asarray(feh, np.float64)
    with np.errstate(divide="ignore"):
        log_age = np.log10(np.maximum(np.asarray(age_gyr, np.float64), 0.0) * 1e9)
    metals, clip_f = _lagrange(grid.feh, metal)
    ages, clip_a = _lagrange(grid.log_age, log_age)
    corners = [(ii, jj, wi * wj) for ii, wi in metals for jj, wj in ages]
    starts = [grid.eep_start[a, b] for a, b, _ in corners]
    ends = [grid.eep_start[a, b] + grid.n_rows[a, b] - 1 for a, b, _ in corners]
    # The EEPs any corner that counts has; a corner without an EEP stands in with its nearest
    # end (its lightest star, or its heaviest).
    big = np.iinfo(np.int64).max
    lo = np.min([np.where(w > 0, e, big) for (_, _, w), e in zip(corners, starts)], axis=0)
    hi = np.max([np.where(w > 0, e, -1) for (_, _, w), e in zip(corners, ends)], axis=0)
    return corners, starts, ends, lo, hi, clip_f | clip_a


def _lagrange(
    nodes: np.ndarray, x: np.ndarray
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """(node index, weight) pairs of the cubic Lagrange interpolant on the four nodes around
    each value (linear, two of the weights zero, in the first and last cells), and whether the
    value was clipped to the nodes' range (NaN counts as clipped, to the first node)."""
    clipped = (x < nodes[0]) | (x > nodes[-1]) | ~np.isfinite(x)
    x = np.clip(np.nan_to_num(x, nan=nodes[0]), nodes[0], nodes[-1])
    n = len(nodes)
    cell = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, n - 2)
    frac = (x - nodes[cell]) / (nodes[cell + 1] - nodes[cell])
    interior = (cell >= 1) & (cell <= n - 3)
    first = np.clip(cell - 1, 0, n - 4)
    idx = [first + k for k in range(4)]
    out = []
    for k in range(4):
        w = np.ones_like(x)
        for m in range(4):
            if m != k:
                w = w * (x - nodes[idx[m]]) / (nodes[idx[k]] - nodes[idx[m]])
        linear = np.where(idx[k] == cell, 1 - frac, np.where(idx[k] == cell + 1, frac, 0.0))
        out.append((idx[k], np.where(interior, w, linear)))
    return out, clipped
