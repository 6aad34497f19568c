"""Simplified-EnBiD tree build time vs a scipy cKDTree build on the same points, one process.

Run with ``.venv/bin/python benchmarks/bench_enbid.py [--sizes 1e5,1e6] [--repeats 1]
[--write benchmarks/results/enbid-cpu-DATE.md]``. For each size it builds, on the same 6-D
points (the demo galaxy's phase space, kpc and km/s; and standard Gaussians):

- baseline: ``scipy.spatial.cKDTree(points)`` (median splits, C++), the usual cost of
  "a space-partitioning tree over these points";
- galmock: ``build_enbid_tree(points, record_splits=False)`` (vectorised numpy, level by level).

The ratio is galmock's time over cKDTree's. It also times ``EnbidUpsampler.sample`` for 10x the
points against ``rng.standard_normal`` of the same shape, and, when the ``enbid-ananke`` wheel is
installed, the real EnBiD 2.0 binary at the smallest size (its default smoothing, file I/O
included; for scale, not like for like). Prints a markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
from scipy.spatial import cKDTree

from galmock.demo import demo_particles
from galmock.validate.enbid import EnbidUpsampler, build_enbid_tree


def best_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def demo_points(n: int) -> np.ndarray:
    cols = demo_particles(n, seed=0).columns
    return np.column_stack([cols[k] for k in ("x", "y", "z", "vx", "vy", "vz")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6", help="comma-separated point counts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--write", type=Path, help="also write the markdown report here")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    lines = [
        f"6-D points, best of {args.repeats}; ratio = EnBiD tree time / cKDTree build time",
        "",
        "| points | data | cKDTree s | EnBiD tree s | levels | × cKDTree | points/s (EnBiD) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        rng = np.random.default_rng(1)
        for name, pts in (("demo galaxy", demo_points(n)), ("Gaussian", rng.normal(size=(n, 6)))):
            t_kd = best_time(lambda pts=pts: cKDTree(pts), args.repeats)
            trees = []
            t_en = best_time(
                lambda pts=pts, trees=trees: trees.append(
                    build_enbid_tree(pts, record_splits=False)
                ),
                args.repeats,
            )
            depth = trees[-1].depth
            lines.append(
                f"| {n:,} | {name} | {t_kd:.2f} | {t_en:.2f} | {depth} | "
                f"{t_en / t_kd:.1f} | {n / t_en:,.0f} |"
            )
    n = sizes[0]
    pts = demo_points(n)
    up = EnbidUpsampler.fit(pts[:, :3], pts[:, 3:])
    draws = 10 * n
    t_sample = best_time(lambda: up.sample(draws, seed=0), args.repeats)
    rng = np.random.default_rng(0)
    t_normal = best_time(lambda: rng.standard_normal((draws, 6)), args.repeats)
    lines += [
        "",
        f"EnbidUpsampler.sample({draws:,}) on {n:,} demo particles: {t_sample:.2f} s "
        f"({draws / t_sample:,.0f} stars/s; {t_sample / t_normal:.1f}x the time of "
        f"rng.standard_normal(({draws:,}, 6)))",
    ]
    try:
        from enbid_ananke import enbid
    except ImportError:
        lines.append("\nenbid-ananke not installed: no real-EnBiD timing.")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            enbid(pts[:, :3], velocities=pts[:, 3:], name=tmp, verbose=False)
            t_real = time.perf_counter() - start
        lines.append(
            f"\nReal EnBiD 2.0 (enbid-ananke, default smoothing, ASCII I/O) on the same {n:,} "
            f"demo particles: {t_real:.2f} s"
        )
    lines += [
        "",
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs visible",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        args.write.write_text(report + "\n")


if __name__ == "__main__":
    main()
