"""Gaia observables per star, one core: stellar parameters, photometry, extinction, errors.

Run with ``.venv/bin/python benchmarks/bench_observables.py [--n 200000]``. Prints markdown
(results go to ``benchmarks/results/observables-cpu-<date>.md``). Thread pools are pinned to one
thread before numpy/torch load, so every rate is per core.

Stars: Kroupa (2001) initial masses 0.1-100 Msun, ages 0.5-13 Gyr, [Fe/H] ~ N(-0.3, 0.3),
positions in an exponential disk around the Sun. Each step is timed on the same stars and set
against the baseline run in the same process: the ICRS astrometry of ``galmock convert``
(:func:`galmock.frames.galactocentric_to_icrs`), so the table says how much each step adds to
a conversion.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from galmock.dust import ExponentialDustDisk  # noqa: E402
from galmock.frames import galactocentric_frame, galactocentric_to_icrs  # noqa: E402
from galmock.gaia_errors import gaia_uncertainties  # noqa: E402
from galmock.imf import kroupa2001  # noqa: E402
from galmock.isochrones import load_mist, stellar_parameters  # noqa: E402
from galmock.photometry import absolute_magnitudes, extinction, load_photometry_grid  # noqa: E402

SUN = np.array([-8.122, 0.0, 0.0208])


def best_of(fn: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="stars")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.n
    rng = np.random.default_rng(0)
    mass = kroupa2001(0.1, 100.0).sample(n, rng)
    age = rng.uniform(0.5, 13.0, n)
    feh = rng.normal(-0.3, 0.3, n)
    radius, phi = rng.exponential(3.0, n), rng.uniform(0, 2 * np.pi, n)
    pos = np.column_stack([radius * np.cos(phi), radius * np.sin(phi), rng.normal(0, 0.3, n)])
    vel = rng.normal(0, 50, (n, 3)) + np.array([0.0, -220.0, 0.0])
    iso, grid, disk = load_mist(), load_photometry_grid(), ExponentialDustDisk()
    frame = galactocentric_frame()

    t_astro, astro = best_of(lambda: galactocentric_to_icrs(*pos.T, *vel.T, frame=frame))
    t_iso, par = best_of(lambda: stellar_parameters(iso, mass, age, feh))
    ok = ~(par.remnant | par.below_grid)
    m = int(ok.sum())
    t_phot, phot = best_of(lambda: absolute_magnitudes(grid, par.teff[ok], par.logg[ok], feh[ok],
                                                      par.log_r[ok]))
    t_dust, a0 = best_of(lambda: disk.a0(SUN, pos[ok]))
    t_ext, ext = best_of(lambda: extinction(grid, par.teff[ok], par.logg[ok], feh[ok], a0))
    dm = 5 * np.log10(np.asarray(astro["distance"])[ok] * 100.0)  # kpc -> 10 pc units
    g, bp, rp = phot.g + dm + ext.g, phot.bp + dm + ext.bp, phot.rp + dm + ext.rp
    t_err, _ = best_of(lambda: gaia_uncertainties(g, bp, rp, par.teff[ok], par.logg[ok]))

    rows = [("astrometry (baseline, convert)", t_astro, n),
            ("stellar parameters (MIST, EEP)", t_iso, n),
            ("absolute G, BP, RP", t_phot, m),
            ("A0 along the sight line (dust disk)", t_dust, m),
            ("A_G, A_BP, A_RP", t_ext, m),
            ("Gaia DR3 uncertainties (pygaia)", t_err, m)]
    base = t_astro / n
    total = sum(t / k for _, t, k in rows[1:])
    lines = [
        "# Gaia observables per star (one core)",
        "",
        f"{dt.date.today()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {np.__version__}, {platform.machine()}, {os.cpu_count()} CPUs visible, one "
        "thread; best of 3.",
        "",
        f"{n:,} stars ({m:,} with photometry: not remnants, not below 0.1 Msun).",
        "",
        "| step | µs per star | stars/s per core | × astrometry |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {name} | {1e6 * t / k:.2f} | {k / t:,.0f} | {t / k / base:.2f} |"
          for name, t, k in rows],
        f"| all observables | {1e6 * total:.2f} | {1 / total:,.0f} | {total / base:.2f} |",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
