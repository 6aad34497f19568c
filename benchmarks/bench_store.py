"""Star catalog store: write/read throughput and size per compressor, against raw numpy.tofile.

The catalog is star-like data (demo galaxy phase space, Kroupa masses, parent properties, region
blocks; 52 bytes per row) written the way ``galmock upsample`` writes it: a
:class:`galmock.store.BlockCatalog` with a few regions streamed through
:class:`galmock.store.BlockWriter` (whole chunks straight into Zarr, edge pieces assembled at the
end), then finalised. The baseline writes the same arrays with ``numpy.tofile`` in the same
process. Times are best of ``--repeat``; the page cache is not dropped (no root), so "read"
is a warm read and "write" excludes the disk flush unless ``--fsync``.

Example:
    .venv/bin/python benchmarks/bench_store.py --rows 5000000 --repeat 3
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

from galmock.demo import demo_particles
from galmock.imf import kroupa2001
from galmock.store import STAR_COLUMNS, BlockCatalog, RowLayout, open_catalog

COMPRESSORS = ("blosc-lz4", "zstd", "none")


def star_like(n: int, regions: int, seed: int = 0) -> tuple[dict[str, np.ndarray], list[int]]:
    """Columns with the catalog's dtypes and realistic value distributions, region-blocked."""
    src = demo_particles(n, seed).columns
    rng = np.random.default_rng(seed)
    owner = np.minimum((np.arctan2(src["y"], src["x"]) + np.pi) / (2 * np.pi) * regions,
                       regions - 1).astype(np.int32)  # azimuthal wedges as "regions"
    order = np.argsort(owner, kind="stable")
    cols = {
        "x": src["x"], "y": src["y"], "z": src["z"],
        "vx": src["vx"], "vy": src["vy"], "vz": src["vz"],
        "mass": kroupa2001().sample(n, rng),
        "age": src["age"], "feh": src["feh"],
        "parent_id": rng.integers(0, n // 500 + 1, n),
        "region": owner,
    }  # fmt: skip
    cols = {c: np.ascontiguousarray(v[order], STAR_COLUMNS[c].dtype) for c, v in cols.items()}
    counts = np.bincount(owner, minlength=regions).tolist()
    return cols, counts


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_blocks(path: Path, cols, counts, chunk_rows: int, compressor: str, batch: int) -> None:
    layout = RowLayout(tuple(counts), chunk_rows)
    cat = BlockCatalog.prepare(path, layout, STAR_COLUMNS, "bench", compressor=compressor)
    for i in range(len(counts)):
        a, b = layout.block(i)
        with cat.writer(i) as w:
            for s in range(a, b, batch):
                w.append({c: v[s : min(s + batch, b)] for c, v in cols.items()})
        cat.record(w.record)
    for k in layout.edge_chunks():
        cat.assemble(k)
    cat.finalize()


def timed(fn, repeat: int, fsync: bool) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if fsync:
            os.sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--regions", type=int, default=8)
    ap.add_argument("--chunk-rows", type=int, default=1_000_000)
    ap.add_argument("--batch-rows", type=int, default=400_000, help="rows per append")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fsync", action="store_true", help="include os.sync() in write times")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()

    cols, counts = star_like(args.rows, args.regions)
    raw_bytes = sum(v.nbytes for v in cols.values())
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    print(f"# {args.rows:,} rows x {len(cols)} columns = {raw_bytes / 1e6:.0f} MB; "
          f"chunk_rows {args.chunk_rows:,}; {args.regions} regions; best of {args.repeat}; "
          f"fsync {args.fsync}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus")
    try:
        raw_dir = root / "raw"

        def raw() -> None:
            shutil.rmtree(raw_dir, ignore_errors=True)
            raw_dir.mkdir()
            for c, v in cols.items():
                v.tofile(raw_dir / c)

        t_raw = timed(raw, args.repeat, args.fsync)
        print("| method | write MB/s | vs tofile | size MB | ratio | read MB/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        print(f"| numpy.tofile | {raw_bytes / t_raw / 1e6:.0f} | 1.00 | {du(raw_dir) / 1e6:.0f} "
              f"| 1.00 | - |")
        for comp in COMPRESSORS:
            path = root / f"{comp}.zarr"

            def write(path: Path = path, comp: str = comp) -> None:
                shutil.rmtree(path, ignore_errors=True)
                write_blocks(path, cols, counts, args.chunk_rows, comp, args.batch_rows)

            t_w = timed(write, args.repeat, args.fsync)
            size = du(path)
            t_r = timed(lambda path=path: open_catalog(path).read(), args.repeat, False)
            check = open_catalog(path).read(0, 1000, ["x"])["x"]
            assert np.array_equal(check, cols["x"][:1000])
            print(f"| zarr {comp} | {raw_bytes / t_w / 1e6:.0f} | {t_raw / t_w:.2f} | "
                  f"{size / 1e6:.0f} | {size / raw_bytes:.2f} | {raw_bytes / t_r / 1e6:.0f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
