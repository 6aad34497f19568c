"""MIST isochrone interpolation (galmock.isochrones): grid nodes, held-out isochrones, the Sun,
remnants, clipping.

The held-out tests drop one isochrone from the grid (one age at every [Fe/H], or one [Fe/H]
at every age) and interpolate the dropped isochrone's stars from its neighbours, now twice as
far apart as in the real grid: the errors bound the real interpolation error from above. The
bounds are the measured errors with about a factor 2 of room; a linear-in-age interpolation
(what the cubic one replaced) fails the giant-branch bound by 4x.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from galmock.isochrones import IsochroneGrid, load_mist, stellar_parameters

MAIN_SEQUENCE, RED_GIANT_BRANCH = 0, 2


@pytest.fixture(scope="module")
def grid() -> IsochroneGrid:
    return load_mist()


def without(grid: IsochroneGrid, age: int | None = None, feh: int | None = None):
    ages = np.array([k for k in range(len(grid.log_age)) if k != age])
    fehs = np.array([k for k in range(len(grid.feh)) if k != feh])
    cells = np.ix_(fehs, ages)
    return dataclasses.replace(
        grid, feh=grid.feh[fehs], log_age=grid.log_age[ages], eep_start=grid.eep_start[cells],
        n_rows=grid.n_rows[cells], row_start=grid.row_start[cells],
    )


def isochrone_stars(grid: IsochroneGrid, feh: int, age: int, phase: int) -> np.ndarray:
    """Rows of one isochrone in one phase whose initial mass differs from both neighbours'
    (the grid stores masses as float32: late phases repeat a mass over several EEPs, where
    the mass cannot say which EEP a star is at)."""
    rows = grid.row_start[feh, age] + np.arange(grid.n_rows[feh, age])
    mass = grid.initial_mass[rows]
    distinct = np.r_[True, np.diff(mass) > 0] & np.r_[np.diff(mass) > 0, True]
    return rows[(grid.phase[rows] == phase) & distinct]


def errors(grid, reduced, feh, age, phase, same_phase=0.95):
    rows = isochrone_stars(grid, feh, age, phase)
    got = stellar_parameters(reduced, grid.initial_mass[rows],
                             np.full(len(rows), 10 ** grid.log_age[age] / 1e9),
                             np.full(len(rows), grid.feh[feh]))
    d_teff = np.abs(got.log_teff - grid.columns["log_Teff"][rows])
    d_lum = np.abs(got.log_l - grid.columns["log_L"][rows])
    assert len(rows) > 100 and np.isfinite(d_teff).all() and np.isfinite(d_lum).all()
    assert (got.phase == phase).mean() > same_phase  # the RGB tip spills into core He burning
    return d_teff, d_lum


def test_grid_nodes_are_reproduced(grid):
    for feh, age in ((12, 90), (8, 100), (3, 60)):
        rows = grid.row_start[feh, age] + np.arange(grid.n_rows[feh, age])
        mass = grid.initial_mass[rows]
        distinct = np.r_[True, np.diff(mass) > 0] & np.r_[np.diff(mass) > 0, True]
        got = stellar_parameters(grid, mass[distinct],
                                 np.full(distinct.sum(), 10 ** grid.log_age[age] / 1e9),
                                 np.full(distinct.sum(), grid.feh[feh]))
        for field, column in (("log_teff", "log_Teff"), ("log_l", "log_L"), ("logg", "log_g")):
            np.testing.assert_allclose(getattr(got, field), grid.columns[column][rows][distinct],
                                       atol=1e-6, err_msg=field)


@pytest.mark.parametrize(("feh", "age"), [(12, 90), (12, 100), (8, 95), (12, 85)])
def test_held_out_ages(grid, feh, age):
    reduced = without(grid, age=age)
    d_teff, d_lum = errors(grid, reduced, feh, age, MAIN_SEQUENCE)
    assert np.median(d_teff) < 0.001 and np.percentile(d_teff, 95) < 0.05
    assert np.median(d_lum) < 0.002 and np.percentile(d_lum, 95) < 0.2
    d_teff, d_lum = errors(grid, reduced, feh, age, RED_GIANT_BRANCH, same_phase=0.85)
    assert np.median(d_teff) < 0.008 and np.median(d_lum) < 0.05


@pytest.mark.parametrize("age", [80, 95])
def test_held_out_metallicity(grid, age):
    reduced = without(grid, feh=11)  # [Fe/H] = -0.25 from -1, -0.75, -0.5, 0, 0.25
    d_teff, d_lum = errors(grid, reduced, 11, age, MAIN_SEQUENCE)
    assert np.median(d_teff) < 0.005 and np.median(d_lum) < 0.015
    d_teff, d_lum = errors(grid, reduced, 11, age, RED_GIANT_BRANCH, same_phase=0.8)
    assert np.median(d_teff) < 0.05 and np.median(d_lum) < 0.3


def test_the_sun(grid):
    """MIST's solar-calibrated model at 4.57 Gyr against the IAU 2015 nominal Sun (Teff 5772 K,
    L = 1): MIST v2.5's own calibration differs by ~60 K, so 100 K and 0.05 dex."""
    sun = stellar_parameters(grid, [1.0], [4.57], [0.0])
    assert abs(sun.teff[0] - 5772) < 100 and abs(sun.log_l[0]) < 0.05
    assert abs(sun.logg[0] - 4.438) < 0.05 and sun.phase[0] == MAIN_SEQUENCE


def test_remnants_and_stars_below_the_grid(grid):
    mass = np.array([0.05, 0.1, 0.5, 0.7, 0.95, 3.0, 60.0])
    got = stellar_parameters(grid, mass, np.full(7, 12.0), np.full(7, -1.0))
    assert got.below_grid.tolist() == [True, False, False, False, False, False, False]
    assert got.remnant.tolist() == [False, False, False, False, True, True, True]
    assert np.isnan(got.log_teff[[0, 6]]).all() and np.isfinite(got.log_teff[1:6]).all()
    assert got.phase[4] == 6  # a white dwarf: flagged, parameters kept
    # The turn-off moves down with age: a 1.5 Msun star lives at 1 Gyr, not at 5.
    young, old = stellar_parameters(grid, [1.5, 1.5], [1.0, 5.0], [0.0, 0.0]).remnant
    assert not young and old


def test_out_of_grid_ages_and_metallicities_are_clipped(grid):
    got = stellar_parameters(grid, [0.8, 0.8, 5.0, 5.0], [10.0, 10.0, 1e-6, 1e-4],
                             [-5.0, -4.0, 0.0, 0.0])
    assert got.clipped == 2
    assert got.log_teff[0] == got.log_teff[1]  # [Fe/H] -5 takes the -4 isochrones
    assert got.log_teff[2] == got.log_teff[3]  # 1 kyr takes the youngest, 10^5 yr
    assert got.phase[2] == -1  # pre-main sequence
    # At 10^5 yr the grid starts at 2.6 Msun: lighter stars are below it, not extrapolated.
    assert stellar_parameters(grid, [1.0], [1e-4], [0.0]).below_grid[0]
