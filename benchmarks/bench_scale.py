"""A cost model for a production run: each stage's rate per core, measured on a run of the demo
galaxy at ``--particles``, scaled to a stated galaxy (``--galaxy-particles``, ``--stars``,
``--regions``) to give core-hours and node-hours per stage and the stage that bounds the run.

The measured run uses the job defaults (``galmock/defaults.yaml``: network, recipe, ensemble)
with regions of the stated galaxy's size (``--galaxy-particles / --regions`` particles each), so
per-region costs carry over. Every stage runs as its own process with one thread
(``OMP_NUM_THREADS=1``, ``flows.threads=1``; convert with one Dask worker): rates are per core.
Training runs ``--members`` member(s) x ``--epochs`` epochs per flow and is scaled to the
packaged defaults' ``ensemble_size`` x ``max_epochs`` (the most a region trains: early stopping
can end sooner; flow matching costs the same per epoch whatever the region's size,
``batches_per_epoch`` steps of ``batch_rows`` rows). Upsampling and convert run on
``--run-stars`` stars. Peak memory per process is GNU time's maximum resident set size. The
rates are absolute, per core (a projection, not a ratio: the stages' own baselines are in
``bench_upsample.py``, ``bench_convert.py`` and ``bench_training.py``).

Example:
    .venv/bin/python benchmarks/bench_scale.py --workdir /tmp/bench-scale
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import sys
from pathlib import Path

from _process import timed_run

MAXRSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def stage(run: Path, name: str, sets: list[str]) -> tuple[float, float]:
    """Run one stage in its own process: (wall seconds, peak RSS in MiB)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "galmock", name,
           str(run / "job.yaml"), "--output", str(run)]
    for s in sets:
        cmd += ["--set", s]
    result, wall = timed_run(cmd, name)
    rss = int(MAXRSS.search(result.stderr)[1]) / 1024  # type: ignore[index]
    return wall, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/galmock-bench-scale")
    ap.add_argument("--particles", type=int, default=1_000_000, help="measured run's particles")
    ap.add_argument("--galaxy-particles", type=float, default=1e7)
    ap.add_argument("--stars", type=float, default=1e9)
    ap.add_argument("--regions", type=int, default=256)
    ap.add_argument("--run-stars", type=float, default=5e5, help="stars the measured run makes")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per flow in the measured run")
    ap.add_argument("--members", type=int, default=1,
                    help="ensemble members per region in the measured run (the galaxy's count "
                         "is the recipe's ensemble_size)")
    ap.add_argument("--cores-per-node", type=int, default=64)
    args = ap.parse_args()

    run = Path(args.workdir) / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    target = int(args.galaxy_particles // args.regions) + 1
    mass = 5.5e10  # the demo galaxy's stellar mass; the IMF mean star is 0.574 Msun
    fraction = args.run_stars * 0.574 / mass
    (run / "job.yaml").write_text(
        f"name: bench-scale\nseed: 1\noutput: {run}\n"
        f"galaxy:\n  source: demo\n  demo:\n    n_particles: {args.particles}\n"
        f"plan:\n  kind: kdtree\n  target_particles: {target}\n"
        f"flows:\n  threads: 1\n  training:\n    max_epochs: {args.epochs}\n"
        f"    patience_epochs: {args.epochs}\n    ensemble_size: {args.members}\n"
        f"upsample:\n  mode: imf\n  sampling_fraction: {fraction:.6g}\n"
        f"convert:\n  n_workers: 1\n  threads_per_worker: 1\n"
    )
    from galmock.config import FlowsConfig, load_job
    from galmock.plan import read_plan
    from galmock.store import open_catalog

    job = load_job(run / "job.yaml", output=run)
    recipe = FlowsConfig.from_defaults().training  # the stated galaxy's: the packaged defaults
    measured: dict[str, tuple[float, float]] = {}
    for name in ("ingest", "plan", "train", "upsample", "convert"):
        measured[name] = stage(run, name, [])
        print(f"# {name}: {measured[name][0]:.1f} s, peak {measured[name][1]:.0f} MiB",
              file=sys.stderr)
    regions = len(read_plan(run / "plan.json").regions)
    stars = len(open_catalog(run / "stars.zarr"))
    flows_trained = regions * args.members * 2 * args.epochs  # flow-epochs measured

    # Core-seconds per unit of work, and the stated galaxy's units.
    per_unit = {
        "ingest": measured["ingest"][0] / args.particles,
        "plan": measured["plan"][0] / args.particles,
        "train": measured["train"][0] / flows_trained,
        "upsample": measured["upsample"][0] / stars,
        "convert": measured["convert"][0] / stars,
    }
    galaxy_units = {
        "ingest": args.galaxy_particles,
        "plan": args.galaxy_particles,
        "train": args.regions * recipe.ensemble_size * 2 * recipe.max_epochs,
        "upsample": args.stars,
        "convert": args.stars,
    }
    unit_name = {"ingest": "particle", "plan": "particle", "train": "flow-epoch",
                 "upsample": "star", "convert": "star"}
    parallel = {"ingest": "one process", "plan": "one process",
                "train": "MPI ranks, one region each", "upsample": "MPI ranks",
                "convert": "Dask workers"}
    core_hours = {k: per_unit[k] * galaxy_units[k] / 3600 for k in per_unit}
    bound = max(core_hours, key=core_hours.get)  # type: ignore[arg-type]

    today = datetime.date.today().isoformat()
    print(f"# scale: cost model, CPU, {today}")
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cpus, python "
          f"{platform.python_version()}, 1-min load {os.getloadavg()[0]:.1f}. Measured run: "
          f"{args.particles:,} demo particles in {regions} regions of ~{target:,}, "
          f"{stars:,} stars; flows {job.flows.kind} {job.flows.hidden_features}x"
          f"{job.flows.hidden_layers}, {recipe.method}; measured {args.members} member(s) x "
          f"{args.epochs} epochs per flow, scaled to the defaults' ensemble of "
          f"{recipe.ensemble_size} x max_epochs {recipe.max_epochs}; "
          "one thread per stage process.")
    print(f"\nStated galaxy: {args.galaxy_particles:.3g} particles, {args.stars:.3g} stars, "
          f"{args.regions} regions; nodes of {args.cores_per_node} cores.\n")
    print("| stage | measured s | peak MiB | core-s per unit | units (galaxy) | core-hours | "
          "node-hours | runs on |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for k in per_unit:
        mark = " **(bounds the run)**" if k == bound else ""
        print(f"| {k}{mark} | {measured[k][0]:.1f} | {measured[k][1]:.0f} | "
              f"{per_unit[k]:.3g} per {unit_name[k]} | {galaxy_units[k]:.3g} | "
              f"{core_hours[k]:.3g} | {core_hours[k] / args.cores_per_node:.3g} | "
              f"{parallel[k]} |")
    total = sum(core_hours.values())
    print(f"\nTotal {total:.3g} core-hours ({total / args.cores_per_node:.3g} node-hours); "
          f"{bound} is {core_hours[bound] / total:.0%} of it. ingest and plan run in one "
          "process each: their wall time on the galaxy is their core-hours.")


if __name__ == "__main__":
    main()
