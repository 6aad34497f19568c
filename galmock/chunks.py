"""Checked Zarr chunk I/O shared by every galmock store (particles, stars, catalogs).

Every chunk is stored, even one of all zeros (Zarr skips those by default), and ends in a
CRC32C of its stored bytes (:data:`CHECKSUM`, Zarr's ``crc32c`` codec, which Zarr checks on each
read). A missing chunk is then damage, not zeros (:func:`missing_chunks`), and a chunk whose
bytes changed or were cut is an :class:`~galmock.errors.InputError` naming it
(:func:`read_column`), never garbage read as data.

Example:
    >>> group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    >>> _ = group.create_array("x", shape=(10,), dtype="f8", chunks=(4,), fill_value=0,
    ...                        compressors=[CHECKSUM])
    >>> open_for_writing(tmp_path / "s.zarr" / "x")[:] = np.zeros(10)
    >>> missing_chunks(tmp_path / "s.zarr" / "x", 3)  # all three stored, zeros too
    []
    >>> (tmp_path / "s.zarr" / "x" / "c" / "1").write_bytes(b"cut")
    3
    >>> read_column(group, tmp_path / "s.zarr", "x")
    Traceback (most recent call last):
    ...
    galmock.errors.InputError: .../s.zarr/x: a chunk in rows 0:10 (chunks 0..2) is damaged: ...
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from galmock.errors import InputError

#: The last bytes codec of every galmock array: a CRC32C of the stored chunk.
CHECKSUM = Crc32cCodec()


def open_for_writing(array_path: str | Path) -> zarr.Array:
    """An array opened to write chunks that are all stored, even all zeros (Zarr skips those by
    default, and a missing chunk must mean damage: :func:`missing_chunks`)."""
    return zarr.open_array(array_path, mode="r+").with_config({"write_empty_chunks": True})


def read_column(
    group: zarr.Group, path: Path, name: str, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Rows ``start:stop`` of column ``name``; a chunk that fails its checksum or cannot be
    decoded is an :class:`InputError` naming it."""
    arr = group[name]
    try:
        return arr[start:stop]  # type: ignore[index, return-value]
    except (ValueError, RuntimeError, OSError) as err:
        chunk = int(arr.chunks[0])  # type: ignore[union-attr]
        stop = arr.shape[0] if stop is None else stop  # type: ignore[union-attr]
        raise InputError(
            f"{path / name}: a chunk in rows {start}:{stop} (chunks {start // chunk}.."
            f"{max(stop - 1, start) // chunk}) is damaged: {err}; rerun the stage that wrote "
            f"{path.name}"
        ) from None


def create_column(group: zarr.Group, name: str, n: int, dtype: str, chunk_rows: int) -> zarr.Array:
    """A 1-D column of ``n`` rows for a galmock store written in one go (particles, training
    sets): zstd level 0 (fast; floats barely compress) then :data:`CHECKSUM`, every chunk
    stored, even all zeros (a missing chunk must mean damage)."""
    return group.create_array(
        name, shape=(n,), dtype=dtype, chunks=(max(1, min(chunk_rows, n)),),
        compressors=[ZstdCodec(level=0), CHECKSUM], fill_value=0,
        config={"write_empty_chunks": True},
    )


def require_chunks(array_dir: Path, n_rows: int, chunk_rows: int, damage: str) -> None:
    """Refuse a 1-D array missing any of its chunks: an :class:`InputError` naming the array,
    how many are missing and which, then ``damage`` (what is damaged and what to rerun)."""
    n_chunks = -(-n_rows // chunk_rows) if n_rows else 0
    absent = missing_chunks(array_dir, n_chunks)
    if absent:
        shown = ", ".join(str(k) for k in absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise InputError(f"{array_dir}: {len(absent)} of {n_chunks} chunk(s) missing (chunk "
                         f"{shown}): {damage}")


def missing_chunks(array_dir: Path, n_chunks: int) -> list[int]:
    """Chunk indices of a 1-D array with no stored object (Zarr v3's default keys c/<k>)."""
    try:
        stored = {int(k) for k in os.listdir(array_dir / "c") if k.isdigit()}
    except FileNotFoundError:
        stored = set()
    return [k for k in range(n_chunks) if k not in stored]
