"""Time to quality: flow matching against likelihood training, same CNF, same data, one core.

Run with ``.venv/bin/python benchmarks/bench_time_to_quality.py [--marks 30,120,600]``. Prints
markdown (results go to ``benchmarks/results/time-to-quality-cpu-<date>.md``).

Data: the GalaxyFlow paper's set-up on the demo galaxy, whose density is exact: the particles
of a 2.2-million-particle demo galaxy within 3.5 kpc of the Sun (~71,000), split 1:1 into
training and test halves, with the paper's ball preprocessing. Model: p(r) and p(v | r), each
the job defaults' 4 x 32 GELU CNF vector field. Training, per method, for the largest mark of
wall time on one torch thread, alternating one optimizer step of the position flow and one of
the velocity flow:

- ``flow-matching``: the straight-path conditional flow-matching loss of
  :meth:`galmock.flows.cnf.CNF.flow_matching_loss`, batches of 2048 rows drawn with replacement,
  Adam at 2e-3 (constant here, so one run gives every mark);
- ``likelihood``: the paper's: the negative log-likelihood through 20 RK4 steps with the exact
  trace, 10 mini-batches per epoch, Adam at 1e-3.

At each mark (training time only; evaluation is not counted) both flows are evaluated with 20
RK4 steps on 5,000 test particles: the mean held-out log-likelihood minus the true density's
(normalised to the sphere, as ``galmock validate`` does), with its standard error. 0 is a
perfect model; −KL(truth ‖ model) is its expectation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time

import numpy as np
import torch

from galmock.demo import demo_particles
from galmock.flows.cnf import CNF
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.validate.truth import DemoTruth, heldout_loglikelihood

SUN = np.array([-8.122, 0.0, 0.0208])
RADIUS = 3.5


def solar_sphere(n_galaxy: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, DemoTruth]:
    source = demo_particles(n_galaxy, seed=seed)
    c = source.columns
    pos = np.column_stack([c["x"], c["y"], c["z"]])
    vel = np.column_stack([c["vx"], c["vy"], c["vz"]])
    inside = np.linalg.norm(pos - SUN, axis=1) < RADIUS
    truth = DemoTruth.from_attrs({"source_meta": source.meta})
    return pos[inside], vel[inside], truth


def true_inside_fraction(truth: DemoTruth, n: int = 4_000_000) -> tuple[float, int]:
    pos, _ = truth.sample(n, np.random.default_rng(7))
    return float((np.linalg.norm(pos - SUN, axis=1) < RADIUS).mean()), n


def run(
    method: str,
    marks: list[float],
    pos: np.ndarray,
    vel: np.ndarray,
    test: tuple[np.ndarray, np.ndarray],
    truth_logp: np.ndarray,
    inside: tuple[float, int],
) -> list[str]:
    torch.manual_seed(0)
    pos_pre = PositionPreprocessing.fit(pos, SUN, RADIUS)
    vel_pre = VelocityPreprocessing.fit(vel)
    y = pos_pre.forward(pos).float()
    yv = vel_pre.forward(vel).float()
    steps = 20
    flows = [CNF(3, 0, 32, 4, "gelu", steps), CNF(3, 3, 32, 4, "gelu", steps)]
    lr = 2e-3 if method == "flow-matching" else 1e-3
    opts = [torch.optim.Adam(f.parameters(), lr=lr) for f in flows]
    gen = torch.Generator().manual_seed(0)
    n = len(y)
    batch = 2048 if method == "flow-matching" else n // 10
    rows = []
    trained, count = 0.0, 0
    for mark in marks:
        while trained < mark:
            t0 = time.perf_counter()
            idx = torch.randint(n, (batch,), generator=gen)
            for k, (flow, opt) in enumerate(zip(flows, opts, strict=True)):
                x, c = (y[idx], None) if k == 0 else (yv[idx], y[idx])
                if method == "flow-matching":
                    loss = flow.flow_matching_loss(x, c, gen)
                else:
                    loss = -flow.log_prob(x, c).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            count += 1
            trained += time.perf_counter() - t0
        model = PhaseSpaceFlow(flows[0].eval(), flows[1].eval(), pos_pre, vel_pre, v_max=1e9)
        logp = model.log_prob(*test).numpy()
        for f in flows:
            f.train()
        result = heldout_loglikelihood(logp, truth_logp, *inside)
        rows.append(
            f"| {method} | {mark:.0f} | {count} | {result['difference_mean']:+.3f} | "
            f"{result['difference_stderr']:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", default="30,120,600", help="seconds of training (comma list)")
    parser.add_argument("--test", type=int, default=5000, help="test particles evaluated")
    parser.add_argument("--galaxy", type=int, default=2_200_000, help="demo galaxy particles")
    args = parser.parse_args()
    torch.set_num_threads(1)
    marks = sorted(float(m) for m in args.marks.split(","))
    pos, vel, truth = solar_sphere(args.galaxy)
    rng = np.random.default_rng(0)
    half = rng.permutation(len(pos))
    train, test = half[: len(pos) // 2], half[len(pos) // 2 :][: args.test]
    test_pv = (pos[test], vel[test])
    truth_logp = truth.log_prob(*test_pv)
    inside = true_inside_fraction(truth)
    lines = [
        "# Time to quality: flow matching vs likelihood (CNF 4 x 32 GELU, one core)",
        "",
        f"{dt.date.today()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs visible, 1 torch thread, CPU.",
        "",
        f"Solar sphere of the demo galaxy: {len(train):,} training and {len(test):,} test "
        "particles; held-out log L − truth (nats per particle; 0 is perfect).",
        "",
        "| method | training s | steps (each flow) | log L − truth | stderr |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for method in ("flow-matching", "likelihood"):
        lines += run(method, marks, pos[train], vel[train], test_pv, truth_logp, inside)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
