"""CNF sampling throughput: galmock's fast RK4 sampler vs a plain PyTorch RK4 loop, one process.

Run with ``.venv/bin/python benchmarks/bench_sampling.py [--threads 1] [--sizes 1e4,1e5,1e6]
[--compile]``. Both sides integrate the same base normals through the same network (the paper's
architecture: 4 x 32 GELU, 20 RK4 steps; untrained weights, which do not change the cost):

- plain: the textbook loop on the whole batch, ``F(cat[y, t])`` per stage, under ``no_grad``
  (``CNF.odeint``);
- fast: ``CNF.generate``: chunks of ``flows.chunk_rows`` rows, ``inference_mode``, the time and
  context inputs folded into the first layer's bias, in-place RK4 updates.

It also times a chunk-size sweep and end-to-end ``PhaseSpaceFlow.sample`` (position flow +
conditional velocity flow + float64 inverse preprocessing + rejection), and repeats on CUDA when
available. Prints a markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from galmock.flows.base import resolve_chunk_rows
from galmock.flows.cnf import CNF
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def make_cnf(context: int, device: torch.device, seed: int) -> CNF:
    torch.manual_seed(seed)
    return CNF(3, context, hidden_features=32, hidden_layers=4, rk4_steps=20).to(device).eval()


def make_phase_space(device: torch.device, chunk_rows: int, compile: bool) -> PhaseSpaceFlow:
    rng = np.random.default_rng(0)
    d = rng.normal(0, 1.0, (20_000, 3))
    pos = d[np.linalg.norm(d, axis=1) < 3.5] + np.array([-8.122, 0.0, 0.0208])
    vel = rng.normal([10, 220, 5], [40, 30, 25], (len(pos), 3))
    return PhaseSpaceFlow(
        make_cnf(0, device, 1), make_cnf(3, device, 2),
        PositionPreprocessing.fit(pos, (-8.122, 0.0, 0.0208), 3.5),
        VelocityPreprocessing.fit(vel), float(np.linalg.norm(vel, axis=1).max()),
        chunk_rows=chunk_rows, compile=compile,
    ).to(device)


def run(device: torch.device, sizes: list[int], compile: bool, repeats: int) -> list[str]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    chunk = resolve_chunk_rows("auto", device)
    flow = make_cnf(0, device, 0)
    lines = [
        f"### {device.type}: 3-D CNF (4 x 32 GELU, 20 RK4 steps), fast chunk = {chunk:,} rows",
        "",
        "| stars | plain s | plain stars/s | fast s | fast stars/s | fast / plain |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    g = torch.Generator(device=device).manual_seed(0)
    for n in sizes:
        z = torch.randn(n, 3, generator=g, device=device)
        reps = repeats if n <= 100_000 else 1

        def plain(z=z):
            with torch.no_grad():
                return flow.odeint(z)

        t_plain = best_time(plain, reps, sync)
        t_fast = best_time(lambda z=z: flow.generate(z, chunk_rows=chunk), reps, sync)
        lines.append(f"| {n:,} | {t_plain:.3f} | {n / t_plain:,.0f} | {t_fast:.3f} | "
                     f"{n / t_fast:,.0f} | {t_plain / t_fast:.2f} |")
    if compile:
        z = torch.randn(sizes[-1], 3, generator=g, device=device)
        start = time.perf_counter()
        flow.generate(z[:chunk], chunk_rows=chunk, compile=True)
        sync()
        first = time.perf_counter() - start
        t = best_time(lambda: flow.generate(z, chunk_rows=chunk, compile=True), 1, sync)
        lines.append(f"| {len(z):,} | | | {t:.3f} | {len(z) / t:,.0f} | compiled "
                     f"(first call {first:.0f} s) |")

    n = 1 << 17 if device.type == "cpu" else 1 << 22
    z = torch.randn(n, 3, generator=g, device=device)
    lines += ["", f"Fast path vs chunk size ({n:,} stars, best of 2):", "",
              "| chunk rows | s | stars/s |", "| ---: | ---: | ---: |"]
    chunks = [4096, 8192, 16384, 32768, 65536, n] if device.type == "cpu" else [
        1 << 16, 1 << 18, 1 << 20, n]
    for rows in chunks:
        t = best_time(lambda rows=rows: flow.generate(z, chunk_rows=rows), 2, sync)
        lines.append(f"| {rows:,} | {t:.3f} | {n / t:,.0f} |")

    n = 200_000 if device.type == "cpu" else 4_000_000
    model = make_phase_space(device, chunk, compile=compile and device.type == "cuda")
    model.sample(1000, torch.Generator(device=device).manual_seed(0))  # warm-up
    rates: list[float] = []

    def sample():
        rates.append(model.sample(n, torch.Generator(device=device).manual_seed(1))[2])

    t = best_time(sample, 1, sync)
    lines += ["", f"End to end, `PhaseSpaceFlow.sample` ({n:,} stars: position flow + conditional "
              f"velocity flow + float64 inverse preprocessing + rejection, rejection rate "
              f"{rates[-1]:.4f}): {t:.2f} s, **{n / t:,.0f} stars/s**", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="batch sizes (stars)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for batches <= 1e5")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    header = [
        "# CNF sampling throughput",
        "",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch threads "
        f"{torch.get_num_threads()}; best of {args.repeats} (1 for batches > 1e5)",
        "",
    ]
    lines = header + run(torch.device("cpu"), sizes, args.compile, args.repeats)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        lines += [f"GPU: {torch.cuda.get_device_name(device)}", ""]
        lines += run(device, [10**6, 10**7], True, args.repeats)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
