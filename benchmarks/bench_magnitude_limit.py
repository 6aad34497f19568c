"""Magnitude-limited upsampling against "draw every star, then cut", on a trained run.

Run with ``.venv/bin/python benchmarks/bench_magnitude_limit.py --run runs/demo`` after
``make demo`` (any run with trained models). Prints markdown (results go to
``benchmarks/results/magnitude-limit-cpu-<date>.md``).

For each region: the same owned flow draws go through (a) galmock's two-stage thinning
(:func:`galmock.visibility.thin_to_visible`: envelope, then parent and extinction for the
survivors, masses from the visible part of the IMF, exact photometry and cut) and (b) the
baseline in the same process: a parent, an IMF mass and the photometry for every draw, then
the cut. Both keep G <= the job's limit. Reported: flow draws per catalog star, seconds per
catalog star of each path, the visible-mass table's cost per population, and an extrapolation
to a 5e10 Msun galaxy drawn in full (sampling_fraction 1), method stated with the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import numpy as np
import torch

from galmock.config import load_job
from galmock.flows.artifact import load_artifact
from galmock.layout import RunLayout
from galmock.models import model_location
from galmock.observables import build_observatory, true_photometry
from galmock.plan import read_plan
from galmock.regions import RegionParticles
from galmock.sampling import ParentMatcher, build_imf, owned_volume, support_radius
from galmock.visibility import extinction_floor, thin_to_visible, visibility_table

GALAXY_MSUN = 5e10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory with models")
    parser.add_argument("--job", default="jobs/demo.yaml")
    parser.add_argument("--draws", type=int, default=200_000, help="owned draws per region")
    args = parser.parse_args()
    job = load_job(args.job, output=args.run)
    layout = RunLayout(job.run_dir)
    plan = read_plan(layout.plan)
    data = RegionParticles(layout.training, plan)
    model = build_observatory(job.observables, job.observer)
    imf = build_imf(job.upsample)
    limit = job.observables.magnitude_limit
    floor = extinction_floor(model.photometry)
    threads = torch.get_num_threads()
    rows = []
    totals = {"draws": 0, "flow": 0.0, "limited": 0.0, "full": 0.0, "kept": 0, "cut": 0,
              "table": 0.0, "populations": 0}
    for region in plan.regions:
        rid = region.id
        particles = data.particles(rid)
        age = particles.age.astype(np.float32).astype(np.float64)
        feh = particles.feh.astype(np.float32).astype(np.float64)
        t0 = time.perf_counter()
        table = visibility_table(model.isochrones, model.photometry, imf, age, feh, threads)
        t_table = time.perf_counter() - t0
        flows = load_artifact(model_location(job, plan, rid))
        owns = owned_volume(plan, rid, support_radius(particles.pos))
        t0 = time.perf_counter()
        pos, vel, _ = flows.sample(int(args.draws * 1.2), torch.Generator().manual_seed(rid))
        pos, vel = pos.numpy(), vel.numpy()
        t_flow = (time.perf_counter() - t0) / len(pos)
        inside = owns(pos)
        pos, vel = pos[inside][: args.draws], vel[inside][: args.draws]
        matcher = ParentMatcher(particles.pos, particles.vel)
        u = np.random.default_rng(rid).random((len(pos), 3))
        t0 = time.perf_counter()
        def parents(r: np.ndarray, m: ParentMatcher = matcher, p: np.ndarray = pos,
                    v: np.ndarray = vel) -> np.ndarray:
            return m.query(p[r], v[r])

        kept, _, _ = thin_to_visible(table, model, imf, limit, floor, pos, parents, age, feh, u)
        t_limited = time.perf_counter() - t0
        t0 = time.perf_counter()
        parent = matcher.query(pos, vel)
        mass = imf.sample(len(pos), np.random.default_rng(rid)).astype(np.float32)
        g = true_photometry(model, pos, mass, age[parent], feh[parent]).g
        cut = int(np.sum(g <= limit))
        t_full = time.perf_counter() - t0
        n = len(pos)
        rows.append((rid, len(age), t_table / len(age) * 1e3, n, len(kept), cut,
                     n / max(len(kept), 1), t_flow * 1e6,
                     (t_flow * n + t_limited) / max(len(kept), 1) * 1e6,
                     (t_flow * n + t_full) / max(cut, 1) * 1e6))
        for key, value in (("draws", n), ("flow", t_flow * n), ("limited", t_limited),
                           ("full", t_full), ("kept", len(kept)), ("cut", cut),
                           ("table", t_table), ("populations", len(age))):
            totals[key] += value
    print(f"# Magnitude-limited upsampling vs draw-then-cut ({dt.date.today()})\n")
    print(f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"torch threads {threads}; run {args.run}, G <= {limit}, dust "
          f"{job.observables.dust.model} ({job.observables.dust.a0_per_kpc} mag/kpc).\n")
    print("| region | populations | table ms/pop | owned draws | kept (sampler) | kept (cut) "
          "| draws per star | flow µs/draw | sampler µs/star | draw-then-cut µs/star |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| {} | {:,} | {:.2f} | {:,} | {:,} | {:,} | {:.1f} | {:.1f} | {:.0f} | {:.0f} |"
              .format(*r))
    per_star_limited = (totals["flow"] + totals["limited"]) / totals["kept"]
    per_star_full = (totals["flow"] + totals["full"]) / totals["cut"]
    visible = totals["kept"] / totals["draws"]
    stars = GALAXY_MSUN / imf.mean_mass()
    particles = GALAXY_MSUN / 5.5e4  # particles of ~5.5e4 Msun, as in the demo
    cpu_hours = (stars * visible * per_star_limited
                 + particles * 1.3 * totals["table"] / totals["populations"]) / 3600 * threads
    print(f"\nAll regions: {totals['draws']:,} owned draws, {totals['kept']:,} stars kept by the "
          f"sampler and {totals['cut']:,} by the cut ({visible:.2%} visible); "
          f"{totals['draws'] / totals['kept']:.1f} flow draws per catalog star; per catalog "
          f"star {per_star_limited * 1e6:.0f} µs (sampler) against {per_star_full * 1e6:.0f} µs "
          f"(draw then cut): {per_star_full / per_star_limited:.1f}x.")
    print(f"\nExtrapolation to a {GALAXY_MSUN:.0e} Msun galaxy at sampling_fraction 1 seen from "
          f"the same place: {stars:.2e} stars drawn, {stars * visible:.2e} visible; CPU cost = "
          f"visible stars x sampler seconds per star + 1.3 x particles ({particles:.1e} at "
          f"5.5e4 Msun, 1.3 for the margins) x table seconds per population, times {threads} "
          f"core(s): {cpu_hours:,.0f} core-hours (draw then cut: "
          f"{stars * visible * per_star_full / 3600 * threads:,.0f}).")


if __name__ == "__main__":
    main()
