"""Flow training cost: epochs/s by particle count, and wall time to early stopping.

Run with ``.venv/bin/python benchmarks/bench_training.py [--threads 1] [--sizes 1000,4000,16000]
[--stop-n 1000 --patience 50] [--kind cnf]``. The recipe is the job defaults (the paper's: 4 x 32
GELU CNF, 20 RK4 steps, exact trace, 10 mini-batches per epoch, 20% validation) unless
``--patience`` / ``--kind`` change it. The particles are a toy solar-neighbourhood region: a
Plummer-like ball of radius 3.5 kpc around the Sun with disk-like velocities. Prints markdown.

- epochs/s: one main-phase and one fine-tuning epoch (each: 10 optimizer steps on 80% of the
  particles, then the validation loss on 20%), for the position flow p(r) and the conditional
  velocity flow p(v | r);
- time to early stop: a whole ``fit_phase_space_flow`` (both flows, both phases) on
  ``--stop-n`` particles.

``bench_training.py time-to-quality [--marks 30,120,600]`` runs the other training benchmark,
:mod:`bench_time_to_quality` (held-out log L - truth after 30 s, 2 min and 10 min on one core,
flow matching against likelihood training of the same CNF on the same data).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import bench_time_to_quality  # benchmarks/ is the script's own directory
import numpy as np
import torch

from galmock.config import FlowsConfig
from galmock.flows import family_names
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.flows.training import fit_density_flow, fit_phase_space_flow, new_flow

SUN = (-8.122, 0.0, 0.0208)
RADIUS = 3.5


def region(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` particles within RADIUS of the Sun: Plummer-like density, rotating disk velocities."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(len(o) for o in out) < n:
        u = rng.uniform(0, 1, 4 * n)
        r = 2.0 / np.sqrt(u ** (-2 / 3) - 1)  # Plummer radii, scale 2 kpc
        d = rng.normal(size=(4 * n, 3))
        d *= (r / np.linalg.norm(d, axis=1))[:, None]
        out.append(d[r < RADIUS])
    offset = np.concatenate(out)[:n]
    offset[:, 2] *= 0.3  # flattened
    pos = np.asarray(SUN) + offset
    phi = np.arctan2(pos[:, 1], pos[:, 0])
    vel = np.column_stack([220 * np.sin(phi), -220 * np.cos(phi), np.zeros(n)])
    vel += rng.normal(0, [35, 25, 20], (n, 3))
    return pos, vel


def config(kind: str, **training) -> FlowsConfig:
    return FlowsConfig.from_defaults(kind=kind, device="cpu", training=training)


def epochs_per_second(sizes: list[int], kind: str) -> list[str]:
    cfg = config(kind, max_epochs=1, patience_epochs=1)  # 1 main + 1 fine-tuning epoch
    lines = ["| particles | rows per batch | p(r): s/epoch | p(v given r): s/epoch | "
             "epochs/s, p(r) / p(v given r) |", "| ---: | ---: | ---: | ---: | ---: |"]
    for n in sizes:
        pos, vel = region(n)
        y = PositionPreprocessing.fit(pos, SUN, RADIUS).forward(pos).float()
        yv = VelocityPreprocessing.fit(vel).forward(vel).float()
        times = []
        for x, context in ((y, None), (yv, y)):
            flow = new_flow(cfg.spec(), 3, 0 if context is None else 3, 0)
            start = time.perf_counter()
            report = fit_density_flow(flow, x, context, cfg.training, 0, runtime=cfg.runtime())
            times.append((time.perf_counter() - start) / sum(report.epochs.values()))
        rows = round(0.8 * n / cfg.training.batches_per_epoch)
        lines.append(f"| {n:,} | {rows:,} | {times[0]:.2f} | {times[1]:.2f} | "
                     f"{1 / times[0]:.3f} / {1 / times[1]:.3f} |")
    return lines


def time_to_stop(n: int, kind: str, patience: int) -> list[str]:
    cfg = config(kind, patience_epochs=patience)
    pos, vel = region(n)
    start = time.perf_counter()
    _, report = fit_phase_space_flow(pos, vel, cfg.spec(), cfg.training, 0, SUN, RADIUS,
                                     runtime=cfg.runtime())
    total = time.perf_counter() - start
    lines = [f"Time to early stop, {n:,} particles, patience {patience}: **{total:.0f} s**", "",
             "| flow | main epochs | fine-tune epochs | best validation loss | s |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in (report.position, report.velocity):
        lines.append(f"| {r.label} | {r.epochs['main']} | {r.epochs['finetune']} | "
                     f"{r.best_validation_loss:.4f} | {r.wall_time_s:.0f} |")
    return lines


def main() -> None:
    if sys.argv[1:2] == ["time-to-quality"]:
        sys.argv = [bench_time_to_quality.__file__, *sys.argv[2:]]
        bench_time_to_quality.main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--sizes", default="1000,4000,16000", help="particle counts for epochs/s"
                        " ('' to skip)")
    parser.add_argument("--stop-n", type=int, default=0, help="particles for the time to early "
                        "stop (0: skip)")
    parser.add_argument("--patience", type=int, default=50,
                        help="flows.training.patience_epochs")
    parser.add_argument("--kind", default="cnf", choices=family_names())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"# {args.kind} training cost",
        "",
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, CPU",
        "",
    ]
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    if sizes:
        lines += [*epochs_per_second(sizes, args.kind), ""]
    if args.stop_n:
        lines += [*time_to_stop(args.stop_n, args.kind, args.patience), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
