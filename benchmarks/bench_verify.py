"""What verifying a star catalog costs: the CRC32C read check and ``galmock verify``'s hashes.

Every chunk of ``stars.zarr``/``catalog.zarr`` carries a CRC32C that Zarr checks on each read
(:mod:`galmock.store`, format /2). The baseline is the same catalog read in the same process
from arrays written without the checksum (the /1 layout), so the ratio is the read overhead
every consumer (convert, validate, users) pays. ``galmock verify`` also hashes each region block
against the sha256 upsample recorded: its time is reported against the plain read too. Warm page
cache (no root to drop it); times are best of ``--repeat``.

Example:
    .venv/bin/python benchmarks/bench_verify.py --rows 5000000 --repeat 3
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from galmock.store import STAR_COLUMNS, columns_sha256, open_catalog, write_star_catalog


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cols = {c: (rng.normal(size=args.rows) * 5).astype(s.dtype) for c, s in STAR_COLUMNS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        checked = write_star_catalog(Path(tmp) / "stars.zarr", cols, args.chunk_rows)
        plain = zarr.open_group(Path(tmp) / "plain.zarr", mode="w", zarr_format=3)
        for name, values in cols.items():
            arr = plain.create_array(name, shape=values.shape, dtype=values.dtype,
                                     chunks=(args.chunk_rows,), fill_value=0,
                                     compressors=[BloscCodec(cname="lz4", clevel=5,
                                                             shuffle="shuffle")])
            arr[:] = values
        catalog = open_catalog(checked)

        def read_plain() -> None:
            for name in cols:
                plain[name][:]  # type: ignore[index]

        def read_checked() -> None:
            catalog.read()

        def verify_blocks() -> None:
            columns_sha256(catalog.read())

        read_plain(), read_checked()  # warm the page cache and Zarr's metadata for both
        t_plain = best(read_plain, args.repeat)
        t_checked = best(read_checked, args.repeat)
        t_verify = best(verify_blocks, args.repeat)
    mb = sum(v.nbytes for v in cols.values()) / 1e6
    print(f"# verify: {args.rows:,} rows ({mb:.0f} MB), chunks of {args.chunk_rows:,}, "
          f"{platform.node()} ({platform.processor() or platform.machine()})")
    print("| read | seconds | MB/s | / plain read |")
    print("| --- | --- | --- | --- |")
    for label, t in (("plain (no checksum, the /1 layout)", t_plain),
                     ("CRC32C checked (format /2)", t_checked),
                     ("verify: checked read + sha256 of the rows", t_verify)):
        print(f"| {label} | {t:.3f} | {mb / t:.0f} | {t / t_plain:.2f} |")


if __name__ == "__main__":
    main()
