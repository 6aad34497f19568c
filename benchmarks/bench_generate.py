"""Galaxy generation throughput: GalacticFlow stars/s vs drawing the same standard normals.

Run with ``.venv/bin/python benchmarks/bench_generate.py [--threads 2] [--sizes 1e4,1e5]
[--layers 14]``. A :class:`GalaxyModel` of the paper's architecture (14 × (1×1 conv + double
RQS coupling), K = 10, 3 × 128 ReLU; untrained weights, which do not change the cost) samples
one galaxy of n stars (``GalaxyModel.sample``: base normals, the inverse flow in batches, float64
inverse z-scoring). The baseline is ``torch.randn(n, 9)`` in the same process, the floor any
sampler pays. The paper quotes ~3.5 s per 10^6 stars on an RTX 2080 Ti; CUDA is timed when
available. Prints a markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from galmock.flows.conditional_nsf import ConditionalNSF
from galmock.flows.galaxy_model import COLUMNS, PARAMETERS, GalaxyModel, ZScore

PARAMS = {"stellar_mass_msun": 1e10, "tau50_gyr": 6.0, "tau10_gyr": 1.5, "mean_feh": -0.3}


def model(layers: int, device: str) -> GalaxyModel:
    torch.manual_seed(0)
    flow = ConditionalNSF(len(COLUMNS), len(PARAMETERS), layers=layers)
    rng = np.random.default_rng(0)
    data = ZScore.fit(rng.normal(size=(1000, 9)), "data")
    cond = ZScore.fit(rng.normal(size=(10, 4)) + np.array([10, 6, 1.5, -0.3]), "conditions")
    return GalaxyModel(flow, data, cond).to(device).eval()


def best(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--sizes", default="1e4,1e5")
    ap.add_argument("--layers", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"# generate throughput ({platform.node()}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.layers} layers)\n")
    print("| device | stars | batch rows | generate s | stars/s | randn s | ratio | s per 10^6 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for device in devices:
        m = model(args.layers, device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for n in sizes:
            m.chunk_rows = min(n, 1 << 20 if device == "cuda" else 65536)
            gen = torch.Generator(device=device).manual_seed(1)
            m.sample(min(n, 1000), PARAMS, gen)  # warm-up
            t_gen = best(lambda n=n, m=m, g=gen: m.sample(n, PARAMS, g), args.repeats, sync)
            t_base = best(lambda n=n, g=gen, d=device: torch.randn(n, 9, generator=g, device=d),
                          args.repeats, sync)
            print(f"| {device} | {n:.0e} | {m.chunk_rows} | {t_gen:.3f} | {n / t_gen:,.0f} | "
                  f"{t_base:.4f} | {t_gen / t_base:,.0f} | {t_gen * 1e6 / n:.1f} |")


if __name__ == "__main__":
    main()
