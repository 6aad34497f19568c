"""The magnitude-limited sampler (galmock.visibility): its visible-mass table holds every visible
star, and two-stage thinning gives the stars "draw every star, then cut" gives."""

from __future__ import annotations

import numpy as np
import pytest

from galmock.config import load_job
from galmock.imf import kroupa2001
from galmock.isochrones import isochrone_tracks, stellar_parameters
from galmock.observables import build_observatory, true_photometry
from galmock.photometry import absolute_magnitudes, extinction
from galmock.visibility import extinction_floor, thin_to_visible, visibility_table

LIMIT = 20.7


@pytest.fixture(scope="module")
def model():
    job = load_job("jobs/demo.yaml")
    return build_observatory(job.observables, job.observer)


def populations(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ages log-uniform 10 Myr - 13.5 Gyr and [Fe/H] -2.5 to +0.5, rounded to float32 as the
    catalog stores them."""
    rng = np.random.default_rng(seed)
    age = (10 ** rng.uniform(-2.0, np.log10(13.5), n)).astype(np.float32).astype(np.float64)
    feh = rng.uniform(-2.5, 0.5, n).astype(np.float32).astype(np.float64)
    return age, feh


def test_table_holds_every_visible_mass(model):
    """For random stars of random populations, the star's IMF quantile lies in its population's
    hull at the threshold of its own M_G: no visible star is ever left out."""
    imf = kroupa2001()
    age, feh = populations(300, seed=1)
    table = visibility_table(model.isochrones, model.photometry, imf, age, feh)
    rng = np.random.default_rng(2)
    pop = rng.integers(0, len(age), 300_000)
    # A third of the masses from the IMF, a third log-uniform in 0.8-8 Msun, and a third
    # uniform in EEP: spread over every interval of the population's isochrone, so the short
    # bright phases (giant branch tip, clump, AGB) get as many stars as the main sequence.
    tracks = isochrone_tracks(model.isochrones, age, feh)
    masses = tracks.mass_initial
    k = np.minimum((rng.random(len(pop)) * (masses.shape[1] - 1)).astype(int), masses.shape[1] - 2)
    lo, hi = masses[pop, k], masses[pop, k + 1]
    along = lo + rng.random(len(pop)) * (hi - lo)
    kind = rng.integers(0, 3, len(pop))
    mass = np.select([kind == 0, kind == 1],
                     [imf.sample(len(pop), rng), 10 ** rng.uniform(np.log10(0.8), 1.0, len(pop))],
                     along)
    ok = np.isfinite(mass)  # an EEP beyond the population's isochrone
    pop, mass = pop[ok], mass[ok].astype(np.float32).astype(np.float64)
    sp = stellar_parameters(model.isochrones, mass, age[pop], feh[pop])
    shines = ~(sp.remnant | sp.below_grid)
    mg = absolute_magnitudes(model.photometry, sp.teff[shines], sp.logg[shines],
                             feh[pop][shines], sp.log_r[shines]).g
    q = imf.cdf(mass[shines])
    j = table.level(mg)
    p = pop[shines]
    inside = (table.q_lo[p, j] <= q) & (q <= table.q_hi[p, j])
    assert shines.sum() > 150_000 and (sp.phase[shines] >= 2).sum() > 20_000  # giants too
    assert inside.all(), (mass[shines][~inside][:5], mg[~inside][:5])
    # And the hull is not everything: at M_G <= 0 only giants and massive stars remain.
    bright = table.fraction(np.arange(len(age)), np.zeros(len(age)))
    assert np.median(bright) < 0.02 and (bright <= table.envelope[table.level(0.0)]).all()


def test_extinction_floor_bounds_every_star(model):
    rng = np.random.default_rng(3)
    teff = 10 ** rng.uniform(np.log10(2500), np.log10(60000), 100_000)
    logg, feh = rng.uniform(-0.5, 5.5, 100_000), rng.uniform(-4.5, 1.0, 100_000)
    a0 = rng.uniform(0.01, 30.0, 100_000)
    a_g = extinction(model.photometry, teff, logg, feh, a0).g
    assert (a_g >= extinction_floor(model.photometry) * a0 * (1 - 1e-12)).all()


def draws(n: int, seed: int, sun: np.ndarray) -> np.ndarray:
    """Positions within 4 kpc of the Sun, half of them in the dust layer."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    pos = sun + rng.uniform(0.01, 4.0, n)[:, None] ** 1.0 * direction
    flat = rng.random(n) < 0.5
    pos[flat, 2] = rng.normal(0.0, 0.1, flat.sum())
    return pos


def binned(g: np.ndarray, d: np.ndarray) -> np.ndarray:
    h, _, _ = np.histogram2d(g, d, bins=(np.arange(4.7, 20.71, 0.5), [0, 0.5, 1, 2, 3, 4.1]))
    return h


def test_two_stage_thinning_matches_draw_then_cut(model):
    """Counts per (G, distance) bin agree with drawing every star and cutting at G <= 20.7
    (chi-square of the independent count differences within 5 sigma of its degrees of freedom);
    a sampler keeping 10% too few fails the same test."""
    imf = kroupa2001()
    age, feh = populations(200, seed=4)
    table = visibility_table(model.isochrones, model.photometry, imf, age, feh)
    n = 400_000
    pos = draws(n, 5, model.observer)
    parent = np.random.default_rng(6).integers(0, len(age), n)
    distance = np.linalg.norm(pos - model.observer, axis=1)

    rng = np.random.default_rng(7)  # draw everything, then cut
    mass = imf.sample(n, rng).astype(np.float32)
    true = true_photometry(model, pos, mass, age[parent], feh[parent])
    seen = true.g <= LIMIT
    reference = binned(true.g[seen], distance[seen])

    floor = extinction_floor(model.photometry)

    def sample(squash: float) -> np.ndarray:
        u = np.random.default_rng(8).random((n, 3))
        u[:, 1] = np.minimum(u[:, 1] * squash, 0.999999)
        rows, pop, m = thin_to_visible(table, model, imf, LIMIT, floor, pos, lambda r: parent[r],
                                       age, feh, u)
        assert (pop == parent[rows]).all() and m.dtype == np.float32
        again = true_photometry(model, pos[rows], m, age[pop], feh[pop]).g
        return binned(again, distance[rows])

    def chi2(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
        both = (a + b) > 0
        return float((((a - b) ** 2)[both] / (a + b)[both]).sum()), int(both.sum())

    sampled = sample(1.0)
    assert reference.sum() > 20_000
    value, dof = chi2(reference, sampled)
    assert value < dof + 5 * np.sqrt(2 * dof), (value, dof)
    assert abs(sampled.sum() - reference.sum()) < 5 * np.sqrt(2 * reference.sum())
    value, dof = chi2(reference, sample(1.0 / 0.9))
    assert value > dof + 5 * np.sqrt(2 * dof), (value, dof)


def test_thinning_is_a_function_of_the_uniforms(model):
    imf = kroupa2001()
    age, feh = populations(20, seed=9)
    table = visibility_table(model.isochrones, model.photometry, imf, age, feh)
    pos = draws(20_000, 10, model.observer)
    parent = np.arange(20_000) % 20
    u = np.random.default_rng(11).random((20_000, 3))
    floor = extinction_floor(model.photometry)
    first = thin_to_visible(table, model, imf, LIMIT, floor, pos, lambda r: parent[r], age,
                            feh, u)
    second = thin_to_visible(table, model, imf, LIMIT, floor, pos, lambda r: parent[r], age,
                             feh, u)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert len(first[0]) > 1000
