"""Upsampling throughput: stars/s per rank, the speed-up of 2 ranks over 1, peak memory per rank,
and the catalog writer's bytes/s against a raw ``numpy.tofile`` of the same stars.

The run is the demo job (``jobs/demo.yaml``: whole galaxy, 4 regions, the demo's CNF
architecture), trained once for ``--train-epochs`` epochs per phase (the sampling cost depends on
the architecture, not on how long it trained) and cached in ``--workdir``. Each rank count then
upsamples a fresh copy with one torch thread per rank: ``galmock upsample`` for 1 rank,
``mpiexec -n 2 galmock upsample`` for 2. Stage times are the ranks' own (from their log lines:
sampling, parent matching, writing, edge chunks; not Python start-up); wall times include
start-up. The writer benchmark re-writes the 1-rank catalog's rows, region by region through
:class:`galmock.store.BlockWriter` exactly as the stage does, in the same process as the
``tofile`` baseline.

Example:
    .venv/bin/python benchmarks/bench_upsample.py --workdir /tmp/bench-upsample
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _process import timed_run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RANK_LINE = re.compile(
    r"rank (\d+)/(\d+): (\d+) region\(s\), (\d+) stars in ([\d.]+) s \(\d+ stars/s\), "
    r"cpu ([\d.]+) s, peak memory (\d+) MiB"
)


def galmock(ranks: int, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "galmock", *args]
    if ranks > 1:
        cmd = [str(shutil.which("mpiexec", path=str(BIN)) or "mpiexec"), "-n", str(ranks), *cmd]
    return timed_run(cmd, " ".join(cmd))


def prepare(job: Path, base: Path, sets: list[str], epochs: int) -> None:
    """Ingest, plan and train once (kept in ``base`` for later runs)."""
    if (base / "models").is_dir() and (base / "plan.json").is_file():
        return
    shutil.rmtree(base, ignore_errors=True)
    galmock(1, "run", str(job), "--until", "plan", "--output", str(base), *sets)
    t0 = time.perf_counter()
    galmock(1, "train", str(job), "--output", str(base), *sets,
            "--set", f"flows.training.max_epochs={epochs}")  # fmt: skip
    print(f"# trained in {time.perf_counter() - t0:.0f} s (cached in {base})", file=sys.stderr)


def upsample(job: Path, base: Path, run: Path, ranks: int, sets: list[str]) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for name in ("particles.zarr", "training.zarr", "models"):
        shutil.copytree(base / name, run / name)
    shutil.copy(base / "plan.json", run / "plan.json")
    result, wall = galmock(ranks, "upsample", str(job), "--output", str(run), *sets)
    per_rank = [
        {"rank": int(m[1]), "regions": int(m[3]), "stars": int(m[4]), "seconds": float(m[5]),
         "cpu": float(m[6]), "peak_mib": int(m[7])}
        for m in RANK_LINE.finditer(result.stderr)
    ]  # fmt: skip
    assert len(per_rank) == ranks, result.stderr[-3000:]
    stars = sum(r["stars"] for r in per_rank)
    stage = max(r["seconds"] for r in per_rank)
    return {"ranks": ranks, "stars": stars, "stage_s": stage, "wall_s": wall,
            "per_rank": per_rank}  # fmt: skip


def writer_benchmark(catalog: Path, scratch: Path, fsync: bool) -> dict:
    """Bytes/s of the stage's writer (BlockWriter, same layout, chunks and codec) vs tofile."""
    from galmock.store import STAR_COLUMNS, BlockCatalog, RowLayout, open_catalog

    cat = open_catalog(catalog)
    data = cat.read()
    counts = [b["rows"] for b in cat.attrs["blocks"]]
    compressor = cat.attrs["upsample"]["compressor"]
    batch = int(cat.attrs["upsample"]["batch_rows"])
    nbytes = sum(v.nbytes for v in data.values())

    def sync() -> None:
        if fsync:
            os.sync()

    raw = scratch / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    t0 = time.perf_counter()
    for c, v in data.items():
        v.tofile(raw / c)
    sync()
    t_raw = time.perf_counter() - t0

    target = scratch / "stars.zarr"
    shutil.rmtree(target, ignore_errors=True)
    t0 = time.perf_counter()
    layout = RowLayout(tuple(counts), cat.chunk_rows)
    out = BlockCatalog.prepare(target, layout, STAR_COLUMNS, "bench", compressor=compressor)
    for i in range(len(counts)):
        a, b = layout.block(i)
        with out.writer(i) as w:
            for s in range(a, b, batch // 2):  # about the owned stars per batch
                w.append({c: v[s : min(s + batch // 2, b)] for c, v in data.items()})
        out.record(w.record)
    for k in layout.edge_chunks():
        out.assemble(k)
    out.finalize()
    sync()
    t_zarr = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    shutil.rmtree(scratch, ignore_errors=True)
    return {"bytes": nbytes, "disk": disk, "raw_s": t_raw, "zarr_s": t_zarr,
            "compressor": compressor, "chunk_rows": cat.chunk_rows, "regions": len(counts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "demo.yaml"))
    ap.add_argument("--workdir", default="/tmp/galmock-bench-upsample")
    ap.add_argument("--train-epochs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="extra job override, e.g. upsample.sampling_fraction=4e-5")
    args = ap.parse_args()
    work = Path(args.workdir)
    job = Path(args.job).resolve()
    sets = [x for s in [*args.sets, "flows.threads=1"] for x in ("--set", s)]
    prepare(job, work / "base", sets, args.train_epochs)

    trials: dict[int, list[dict]] = {1: [], 2: []}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeat):  # interleaved, so both rank counts see the same host load
        for n in (1, 2):
            trials[n].append(upsample(job, work / "base", work / f"ranks-{n}", n, sets))
            load.append(os.getloadavg()[0])
    runs = [min(trials[n], key=lambda r: r["stage_s"]) for n in (1, 2)]
    one, two = runs
    from galmock.store import open_catalog

    a = open_catalog(work / "ranks-1" / "stars.zarr").read(columns=["x", "vx", "parent_id"])
    b = open_catalog(work / "ranks-2" / "stars.zarr").read(columns=["x", "vx", "parent_id"])
    identical = all(np.array_equal(a[c], b[c]) for c in a)
    writes = [writer_benchmark(work / "ranks-1" / "stars.zarr", work / "writer", f)
              for f in (False, True)]  # fmt: skip

    print(f"# upsample: {job.name}, {one['stars']:,} stars, {platform.machine()}, "
          f"{os.cpu_count()} cpus, python {platform.python_version()}; best of {args.repeat} "
          f"interleaved trials; 1-min load average {min(load):.1f}-{max(load):.1f}")
    print("\n| ranks | stage s | stars/s (all ranks) | stars/s per rank | speed-up | cpu/wall per "
          "rank | wall s | peak MiB per rank |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
    for r in runs:
        rate = r["stars"] / r["stage_s"]
        per = ", ".join(f"{p['stars'] / p['seconds']:.0f}" for p in r["per_rank"])
        eff = ", ".join(f"{p['cpu'] / p['seconds']:.2f}" for p in r["per_rank"])
        mem = ", ".join(str(p["peak_mib"]) for p in r["per_rank"])
        print(f"| {r['ranks']} | {r['stage_s']:.1f} | {rate:.0f} | {per} | "
              f"{one['stage_s'] / r['stage_s']:.2f} | {eff} | {r['wall_s']:.1f} | {mem} |")
    for n in (1, 2):
        times = ", ".join(f"{r['stage_s']:.1f}" for r in trials[n])
        print(f"\nall stage times, {n} rank(s): {times} s")
    print(f"\nwall-clock speed-up (incl. start-up), best trials: "
          f"{one['wall_s'] / two['wall_s']:.2f}; 1- and 2-rank catalogs identical: {identical}")
    print("\n| writer | fsync | MB/s | vs tofile | on disk / raw |")
    print("| --- | --- | ---: | ---: | ---: |")
    for w, fsync in zip(writes, (False, True)):
        mb = w["bytes"] / 1e6
        print(f"| numpy.tofile | {fsync} | {mb / w['raw_s']:.0f} | 1.00 | 1.00 |")
        print(f"| BlockWriter {w['compressor']}, {w['regions']} regions, chunk "
              f"{w['chunk_rows']:,} | {fsync} | {mb / w['zarr_s']:.0f} | "
              f"{w['raw_s'] / w['zarr_s']:.2f} | {w['disk'] / w['bytes']:.2f} |")


if __name__ == "__main__":
    main()
