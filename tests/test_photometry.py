"""Gaia DR3 absolute magnitudes and extinctions (galmock.photometry) against published values:
the Sun, the mean dwarf sequence, and the grid's own nodes; bad input is refused by name."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest

from galmock.errors import InputError
from galmock.photometry import absolute_magnitudes, extinction, load_photometry_grid

LOG_G_SUN = 4.438

# Mamajek's "modern mean dwarf stellar colour and effective temperature sequence" (version
# 2024.05.15; Pecaut & Mamajek 2013, ApJS 208, 9): SpT -> Teff (K), R (R_sun), M (M_sun),
# BP - RP, M_G. Its Gaia colours are DR2's, within ~0.02 mag of DR3 per the table's notes.
DWARFS = {
    "A0V": (9700, 2.193, 2.33, -0.037, 1.00), "F0V": (7220, 1.728, 1.60, 0.377, 2.51),
    "F5V": (6550, 1.473, 1.32, 0.587, 3.26), "G0V": (5930, 1.100, 1.07, 0.784, 4.325),
    "G2V": (5770, 1.012, 1.00, 0.823, 4.635), "K0V": (5290, 0.813, 0.86, 0.983, 5.553),
    "K5V": (4440, 0.701, 0.70, 1.43, 6.85), "M0V": (3850, 0.588, 0.585, 1.84, 8.10),
    "M2V": (3560, 0.446, 0.45, 2.23, 9.29),
}


@pytest.fixture(scope="module")
def grid():
    return load_photometry_grid()


def dwarf(spt: str) -> tuple[float, float, float]:
    teff, r, m, _, _ = DWARFS[spt]
    return teff, LOG_G_SUN + math.log10(m) - 2 * math.log10(r), math.log10(r)


def test_the_sun(grid) -> None:
    # Casagrande & VandenBerg (2018): M_G = 4.67, BP - RP = 0.82. Kurucz's solar model through
    # the DR3 passbands and zero points: 4.67 and 0.80; 0.03 mag covers both the published
    # values' uncertainty (~0.02) and the model's.
    sun = absolute_magnitudes(grid, [5772.0], [LOG_G_SUN], [0.0], [0.0])
    assert abs(sun.g[0] - 4.67) < 0.03 and abs(sun.bp[0] - sun.rp[0] - 0.82) < 0.03
    assert sun.clipped == 0 and sun.filled == 0


def test_the_mean_dwarf_sequence(grid) -> None:
    """A0V to M2V at solar [Fe/H]: |ΔM_G| < 0.12 and |Δ(BP − RP)| < 0.08 (measured: at most
    0.097 at M0V and 0.064 at K5V). The bounds allow the table's DR2-to-DR3 colour offsets
    (~0.02), its mean-sequence scatter and the Kurucz models' known offsets for K/M dwarfs."""
    teff, logg, log_r = np.array([dwarf(s) for s in DWARFS]).T
    got = absolute_magnitudes(grid, teff, logg, np.zeros(len(teff)), log_r)
    want_colour = np.array([v[3] for v in DWARFS.values()])
    want_g = np.array([v[4] for v in DWARFS.values()])
    assert np.abs(got.g - want_g).max() < 0.12, dict(zip(DWARFS, got.g - want_g))
    assert np.abs(got.bp - got.rp - want_colour).max() < 0.08, dict(
        zip(DWARFS, got.bp - got.rp - want_colour))
    # The sequence is monotone: cooler dwarfs are fainter and redder.
    assert (np.diff(got.g) > 0).all() and (np.diff(got.bp - got.rp) > 0).all()


def test_grid_nodes_are_reproduced(grid) -> None:
    with np.load(resources.files("galmock") / "data" / "kurucz_gaia_dr3.npz") as f:
        mag0, teff, logg, feh = f["mag0"], f["teff"], f["logg"], f["feh"]
    rng = np.random.default_rng(0)
    i, j, k = (rng.integers(0, n, 50) for n in (len(teff), len(logg), len(feh)))
    values = grid.mag0(np.column_stack([np.log10(teff[i]), logg[j], feh[k]]))
    assert np.allclose(values, mag0[:, i, j, k].T, atol=1e-6)


def test_cooler_than_the_grid_keeps_the_luminosity(grid) -> None:
    """A 3000 K star takes the 3500 K node's colours, but its own luminosity: at equal radius,
    10 log10(3500 / 3000) = 0.67 mag fainter in every band; clipped stars are counted."""
    p = absolute_magnitudes(grid, [3500.0, 3000.0], [5.0, 5.0], [0.0, 0.0], [-0.5, -0.5])
    assert np.allclose([p.g[1] - p.g[0], p.bp[1] - p.bp[0], p.rp[1] - p.rp[0]],
                       10 * math.log10(3500 / 3000), atol=1e-9)
    assert p.clipped == 1
    m3 = absolute_magnitudes(grid, [3430.0], [4.88], [0.0], [math.log10(0.361)])
    assert abs(m3.g[0] - 10.05) < 0.12  # Mamajek M3V: the magnitude holds, the colour does not


def test_extinction_is_zero_without_dust_and_grows_with_it(grid) -> None:
    rng = np.random.default_rng(1)
    n = 2000
    teff = 10 ** rng.uniform(np.log10(3500), np.log10(30000), n)
    logg = rng.uniform(0.5, 5.0, n)
    feh = rng.uniform(-2.5, 0.5, n)
    a0 = np.linspace(0, 9.99, 30)
    bands = [extinction(grid, teff, logg, feh, np.full(n, a)) for a in a0]
    for name in ("g", "bp", "rp"):
        ax = np.array([getattr(b, name) for b in bands])  # (A0 step, star)
        assert (ax[0] == 0).all()
        assert (np.diff(ax, axis=0) > 0).all()
    # BP is bluer than G, RP redder: A_BP > A_G > A_RP at every A0 > 0.
    last = bands[-1]
    assert ((last.bp > last.g) & (last.g > last.rp)).all()
    one = np.zeros(3, dtype=int)  # the same star thrice
    beyond = extinction(grid, teff[one], logg[one], feh[one], [10.0, 20.0, 30.0])
    assert beyond.clipped == 2 and np.allclose(beyond.g[1:] / beyond.g[0], [2.0, 3.0])


@pytest.mark.parametrize("call, message", [
    (lambda g: absolute_magnitudes(g, [5000.0, math.nan], [4.5, 4.5], [0, 0], [0, 0]),
     r"teff is not finite for 1 star\(s\) \(first: row 1, value nan\)"),
    (lambda g: absolute_magnitudes(g, [5000.0], [4.5, 4.5], [0], [0]),
     "logg has 2 values, teff has 1"),
    (lambda g: absolute_magnitudes(g, [-5.0], [4.5], [0], [0]), "teff must be positive"),
    (lambda g: extinction(g, [5000.0], [4.5], [0], [-0.1]), "a0 must be >= 0 mag, got -0.1"),
])
def test_bad_input_is_refused_by_name(grid, call, message) -> None:
    with pytest.raises(InputError, match=message):
        call(grid)


def test_a_damaged_grid_file_is_refused(tmp_path) -> None:
    bad = tmp_path / "grid.npz"
    np.savez(bad, teff=np.arange(3.0))
    with pytest.raises(InputError, match=r"grid\.npz: not a galmock photometry grid"):
        load_photometry_grid(bad)
