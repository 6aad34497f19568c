"""Convert-stage throughput: LocalCluster 1 vs 2 workers; HATS Parquet vs a raw pyarrow write.

Run with ``.venv/bin/python benchmarks/bench_convert.py [--n 2000000] [--chunk 250000]
[--repeats 2] [--write PATH]``. For each worker count (a fresh LocalCluster, workers warmed up by
importing galmock first, so process start-up is not timed) it times ``galmock.convert.convert``,
best of ``--repeats``, with the job defaults otherwise: ``hats: false`` (catalog.zarr alone) and
``hats: true`` (plus catalog.hats); the difference is the HATS step. Its MB/s counts the Arrow
size of the table it writes (the catalog plus star_id) per second, against
``pyarrow.parquet.write_table`` of that same table, in memory, in this process, with the same
codec (zstd level 3, no dictionary) and with pyarrow's defaults (snappy, dictionary on).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client

from galmock.config import JobConfig, default_config, validate_job
from galmock.hats import SPATIAL_INDEX_COLUMN, parquet_kwargs
from galmock.parallel.dask import local_cluster
from galmock.stages.convert import run as convert
from galmock.store import STAR_COLUMNS, open_catalog, write_star_catalog

MB = 1e6


def make_stars(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """60% of the stars within 6 kpc of the Sun, 40% in an exponential disk."""
    rng = np.random.default_rng(seed)
    sun = np.array([-8.122, 0.0, 0.0208])
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    local = sun + rng.uniform(0.02, 6.0, n)[:, None] * direction
    radius, phi = rng.exponential(3.0, n), rng.uniform(0, 2 * np.pi, n)
    disk = np.column_stack([radius * np.cos(phi), radius * np.sin(phi), rng.normal(0, 0.3, n)])
    pos = np.where((rng.random(n) < 0.6)[:, None], local, disk)
    cols = {"x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2]}
    cols |= {v: rng.normal(0, 40, n) for v in ("vx", "vy", "vz")}
    cols |= {"mass": rng.uniform(0.08, 3, n), "age": rng.uniform(0, 13, n)}
    cols |= {"feh": rng.normal(-0.2, 0.3, n), "parent_id": rng.integers(0, 10**6, n)}
    cols["region"] = rng.integers(0, 64, n)
    return {k: np.asarray(v).astype(STAR_COLUMNS[k].dtype) for k, v in cols.items()}


def job_for(run: Path, workers: int, hats: bool) -> JobConfig:
    data = default_config()
    data["output"] = str(run)
    data["convert"].update({"n_workers": workers, "hats": hats})
    return validate_job(data)


def _warm() -> None:
    # Module imports (torch, astropy, zarr, hats, numba) take seconds per process.
    import galmock.hats  # noqa: F401
    from galmock.frames import galactocentric_to_icrs

    galactocentric_to_icrs([1.0], [0.0], [0.0], [0.0], [0.0], [0.0])  # reads the frame off astropy


def timed_pair(a: JobConfig, b: JobConfig, client: Client, repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` conversions of each job, alternated so that a slow spell of the
    shared host hits both (single runs move by 10-40% here)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for job, kept in zip((a, b), times):
            start = time.perf_counter()
            convert(job, client=client)
            kept.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def catalog_table(run: Path) -> pa.Table:
    """catalog.zarr plus star_id: the table the HATS step writes (less _healpix_29)."""
    cat = open_catalog(run / "catalog.zarr")
    cols = {"star_id": np.arange(len(cat), dtype=np.int64), **cat.read()}
    return pa.table(cols)


def raw_write(table: pa.Table, path: Path, repeats: int = 2, **kwargs: object) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pq.write_table(table, path, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000, help="stars (default 2e6)")
    parser.add_argument("--chunk", type=int, default=250_000, help="rows per chunk")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    parser.add_argument("--write", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.dir))
    try:
        run = scratch / "run"
        write_star_catalog(run / "stars.zarr", make_stars(args.n), chunk_rows=args.chunk)
        rows, hats_bytes = [], 0
        for workers in (1, 2):
            zarr_only, full = job_for(run, workers, hats=False), job_for(run, workers, hats=True)
            # galmock's own cluster (its worker malloc settings are part of what is measured).
            with local_cluster(full.convert) as cluster, Client(cluster) as client:
                client.run(_warm)
                t_zarr, t_full = timed_pair(zarr_only, full, client, args.repeats)
            rows.append((workers, t_zarr, t_full))
            hats_bytes = du(run / "catalog.hats" / "dataset")
        table = catalog_table(run)
        table_mb = table.nbytes / MB
        raw = scratch / "raw.parquet"
        t_raw = raw_write(table, raw, compression="zstd", compression_level=3, use_dictionary=False)
        raw_bytes = raw.stat().st_size
        hats_table = table.add_column(0, SPATIAL_INDEX_COLUMN, pa.array(np.zeros(len(table), "i8")))
        t_same = raw_write(hats_table, raw, **parquet_kwargs(hats_table.schema))
        same_bytes = raw.stat().st_size
        t_default = raw_write(table, raw)
        default_bytes = raw.stat().st_size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    n = args.n
    lines = [
        f"n = {n:,} stars in {-(-n // args.chunk)} chunks of {args.chunk:,}; job defaults "
        "(hats_partition_rows 1e6, hats_highest_order 10, zstd 3); LocalCluster, 1 thread per "
        f"worker; best of {args.repeats}; times exclude cluster start-up",
        "",
        "| workers | catalog.zarr only: s | stars/s | zarr + HATS: s | stars/s | HATS step: s "
        "| HATS MB/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workers, t_zarr, t_full in rows:
        t_hats = t_full - t_zarr
        lines.append(
            f"| {workers} | {t_zarr:.2f} | {n / t_zarr:,.0f} | {t_full:.2f} | {n / t_full:,.0f} "
            f"| {t_hats:.2f} | {table_mb / t_hats:.0f} |"
        )
    speedup = (rows[0][2] / rows[1][2], rows[0][1] / rows[1][1])
    t_hats2 = rows[1][2] - rows[1][1]
    lines += [
        "",
        f"2 vs 1 workers: {speedup[0]:.2f}× (zarr + HATS), {speedup[1]:.2f}× (catalog.zarr only)",
        "",
        f"HATS step (2 workers) / raw write, in MB/s: {t_raw / t_hats2:.2f} (zstd 3, no "
        f"dictionary), {t_same / t_hats2:.2f} (the partitions' settings)",
        "",
        f"Parquet, same table ({table.num_columns} columns, {table_mb:.0f} MB in Arrow):",
        "",
        "| writer | s | MB/s | on disk, MB |",
        "| --- | ---: | ---: | ---: |",
        f"| galmock HATS step, 2 workers (map, split, reduce, metadata) | {t_hats2:.2f} | "
        f"{table_mb / t_hats2:.0f} | {hats_bytes / MB:.0f} |",
        f"| pyarrow write_table, zstd 3, use_dictionary=False | {t_raw:.2f} | "
        f"{table_mb / t_raw:.0f} | {raw_bytes / MB:.0f} |",
        f"| pyarrow write_table, the partitions' settings (+ _healpix_29; byte-stream-split "
        f"floats, delta-coded index) | {t_same:.2f} | {table_mb / t_same:.0f} | "
        f"{same_bytes / MB:.0f} |",
        f"| pyarrow write_table, defaults (snappy, dictionary) | {t_default:.2f} | "
        f"{table_mb / t_default:.0f} | {default_bytes / MB:.0f} |",
        "",
        f"python {platform.python_version()}, numpy {np.__version__}, pyarrow {pa.__version__}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs visible",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")


if __name__ == "__main__":
    main()
