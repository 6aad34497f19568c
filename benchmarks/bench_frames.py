"""Galactocentric→ICRS throughput: galmock vs astropy, one core, same stars, one process.

Run with ``.venv/bin/python benchmarks/bench_frames.py [--n 1000000] [--write PATH]``. Thread
pools are pinned to one thread before numpy/torch load, so the ratio is per core. Each galmock
row is compared with astropy producing the same columns: the ICRS astrometry alone (ra, dec,
parallax, pm, rv) and all nine galmock columns (plus Galactic l, b).
"""

from __future__ import annotations

import os

# Before numpy/torch are imported: their BLAS/OpenMP pools read these once.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import astropy  # noqa: E402
import astropy.units as u  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from astropy.coordinates import ICRS, Galactic, SkyCoord  # noqa: E402

from galmock.frames import galactocentric_frame, galactocentric_to_icrs  # noqa: E402

KMS = u.km / u.s


def make_stars(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Galactocentric kpc and km/s: an exponential disk plus a halo out to ~300 kpc."""
    rng = np.random.default_rng(seed)
    radius = np.where(rng.random(n) < 0.8, rng.exponential(3.0, n), rng.uniform(0, 300, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    x, y, z = radius * np.cos(phi), radius * np.sin(phi), rng.normal(0, 0.5, n)
    vx, vy, vz = rng.normal(0, 100, (3, n))
    return x, y, z, vx, vy - 220.0, vz


def astropy_icrs(cols: tuple[np.ndarray, ...], gal: bool) -> list[np.ndarray]:
    x, y, z, vx, vy, vz = cols
    coord = SkyCoord(
        x=x * u.kpc,
        y=y * u.kpc,
        z=z * u.kpc,
        v_x=vx * KMS,
        v_y=vy * KMS,
        v_z=vz * KMS,
        frame=galactocentric_frame(),
    )
    icrs = coord.transform_to(ICRS())
    out = [
        icrs.ra.deg,
        icrs.dec.deg,
        icrs.distance.to_value(u.mas, equivalencies=u.parallax()),
        icrs.pm_ra_cosdec.to_value(u.mas / u.yr),
        icrs.pm_dec.to_value(u.mas / u.yr),
        icrs.radial_velocity.to_value(KMS),
    ]
    if gal:
        # Directions only: carrying the velocities through would make astropy look slower.
        galactic = ICRS(ra=icrs.ra, dec=icrs.dec).transform_to(Galactic())
        out += [galactic.l.deg, galactic.b.deg]
    return out


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: caches (the derived frame map), allocator, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="stars (default 1e6)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cols = make_stars(args.n)
    tcols = tuple(torch.from_numpy(c) for c in cols)

    icrs_cols, all_cols = "ra, dec, parallax, pm, rv", "all 9"
    astropy_runs = {
        icrs_cols: ("astropy SkyCoord → ICRS", lambda: astropy_icrs(cols, gal=False)),
        all_cols: ("astropy SkyCoord → ICRS, then l, b", lambda: astropy_icrs(cols, gal=True)),
    }
    galmock_runs = [
        (
            icrs_cols,
            "galmock, numpy, `galactic=False`",
            lambda: galactocentric_to_icrs(*cols, galactic=False),
        ),
        (all_cols, "galmock, numpy", lambda: galactocentric_to_icrs(*cols)),
        (all_cols, "galmock, torch CPU tensors", lambda: galactocentric_to_icrs(*tcols)),
    ]
    baseline = {c: best_of(fn, args.repeats) for c, (_, fn) in astropy_runs.items()}
    rows = [(name, c, baseline[c], 1.0) for c, (name, _) in astropy_runs.items()]
    for columns, name, fn in galmock_runs:
        t = best_of(fn, args.repeats)
        rows.append((name, columns, t, baseline[columns] / t))
    lines = [
        f"n = {args.n:,} float64 stars, 1 thread (OMP/MKL/OpenBLAS = 1, "
        f"torch.set_num_threads(1)), best of {args.repeats}; ratio = astropy time for the same "
        "columns / this time",
        "",
        "| path | columns | seconds | stars/s | × astropy |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, columns, t, ratio in rows:
        lines.append(f"| {name} | {columns} | {t:.3f} | {args.n / t:,.0f} | {ratio:.1f} |")
    lines += [
        "",
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"astropy {astropy.__version__}; {platform.machine()}, {os.cpu_count()} CPUs visible",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        args.write.write_text(table + "\n")


if __name__ == "__main__":
    main()
