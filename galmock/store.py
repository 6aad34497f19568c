"""Columnar Zarr catalogs: the star catalog (``<run>/stars.zarr``) and the observer's catalog.

Layout (Zarr v3): a group with one dense 1-D array per column, all of the same length and
chunked along rows with the same chunk length; each array has attributes ``unit`` and
``description``. Group attributes::

    format      "galmock.stars/2" (upsample output) or "galmock.catalog/3" (convert output)
    complete    false while the catalog is being written; readers refuse it until true
    n_rows      rows in every array
    chunk_rows  chunk length of every array
    columns     column names, in their canonical order
    ...         provenance (job, frame, software versions, ...)

Writing in parallel needs no locks: :func:`create_catalog` allocates the arrays (no chunk
written, ``complete: false``), any number of processes then call :func:`write_rows` for
disjoint whole chunks (each chunk is its own object in the store), and one process calls
:func:`mark_complete` at the end. :func:`write_star_catalog` does all three in one process
under a temporary name and renames, which is what tests and a final consolidation need.

Rows that arrive in blocks of known length (upsample: one block per region, lengths fixed by
the seeded star counts) go through :class:`BlockCatalog`: a block's whole chunks are written
by its own writer, the few chunks two blocks share are assembled from side pieces at the end,
finished blocks are recorded (rows, sha256) so a rerun skips them, and the catalog is renamed
into place only when complete (group attribute ``blocks``: the records). The result is an
ordinary dense catalog: no padding rows, nothing for readers to hide.

Example:
    >>> rng = np.random.default_rng(0)
    >>> columns = {c: rng.normal(size=200).astype(s.dtype) for c, s in STAR_COLUMNS.items()}
    >>> path = write_star_catalog(tmp_path / "stars.zarr", columns, chunk_rows=50)
    >>> cat = open_catalog(path)
    >>> len(cat), cat.attrs["format"]
    (200, 'galmock.stars/2')
    >>> cat.to_dask()["x"]  # a lazy dask array, one task per chunk
    dask.array<from-zarr, shape=(200,), dtype=float64, chunksize=(50,), chunktype=numpy.ndarray>
    >>> cat.to_dataframe(["x", "mass"]).npartitions  # a lazy dask DataFrame
    4
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from galmock.atomic import atomic_directory, atomic_write_text, remove_leftovers, replace_path
from galmock.chunks import CHECKSUM, open_for_writing, read_column, require_chunks
from galmock.errors import InputError

__all__ = [
    "BLOCKS_FORMAT",
    "CATALOG_FORMAT",
    "OPEN_BLOCKS_FORMAT",
    "STARS_FORMAT",
    "STAR_COLUMNS",
    "BlockCatalog",
    "BlockWriter",
    "ColumnSpec",
    "OpenBlockCatalog",
    "OpenBlockWriter",
    "RowLayout",
    "StarCatalog",
    "column_spec",
    "columns_sha256",
    "create_catalog",
    "is_current",
    "mark_complete",
    "open_catalog",
    "write_rows",
    "write_star_catalog",
]

log = logging.getLogger(__name__)

# /2: every chunk is written and ends in a CRC32C checksum (Zarr's crc32c codec), so a missing,
# truncated or altered chunk is an error naming it instead of zeros or garbage read as stars.
STARS_FORMAT = "galmock.stars/2"
# catalog /3: Gaia DR3 dtypes (radial_velocity float32) and any subset of columns holding ra, dec.
CATALOG_FORMAT = "galmock.catalog/3"
DEFAULT_CHUNK_ROWS = 1_000_000


@dataclass(frozen=True)
class ColumnSpec:
    """dtype, unit (an astropy unit string) and description of one column."""

    dtype: np.dtype
    unit: str
    description: str


def column_spec(dtype: str, unit: str, description: str) -> ColumnSpec:
    """A :class:`ColumnSpec` from a dtype name."""
    return ColumnSpec(np.dtype(dtype), unit, description)


#: The star catalog contract: every ``galmock.stars/2`` catalog has these columns and dtypes.
#: Positions stay float64: float32 galactocentric kpc are ~1 pc coarse near the Sun.
STAR_COLUMNS: dict[str, ColumnSpec] = {
    "x": column_spec("float64", "kpc", "galactocentric x (astropy Galactocentric; Sun at x < 0)"),
    "y": column_spec("float64", "kpc", "galactocentric y (direction of disk rotation at the Sun)"),
    "z": column_spec("float64", "kpc", "galactocentric z (towards the north Galactic pole)"),
    "vx": column_spec("float32", "km / s", "galactocentric velocity along x"),
    "vy": column_spec("float32", "km / s", "galactocentric velocity along y"),
    "vz": column_spec("float32", "km / s", "galactocentric velocity along z"),
    "mass": column_spec("float32", "solMass", "stellar mass"),
    "age": column_spec("float32", "Gyr", "stellar age"),
    "feh": column_spec("float32", "dex", "[Fe/H] relative to solar"),
    "parent_id": column_spec("int64", "",
                             "id of the simulation particle the star was sampled from"),
    "region": column_spec("int32", "", "plan region the star was sampled in"),
}

_REQUIRED = {STARS_FORMAT: tuple(STAR_COLUMNS), CATALOG_FORMAT: ("ra", "dec")}


def _codecs(compressor: str) -> list[Any]:
    """The bytes codecs of every column: the compressor (the job's upsample.compressor names),
    then a CRC32C of the stored bytes, which Zarr checks on every read."""
    if compressor == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), CHECKSUM]
    if compressor == "zstd":
        return [ZstdCodec(level=3), CHECKSUM]
    if compressor == "none":
        return [CHECKSUM]
    raise ValueError(f"unknown compressor {compressor!r}; use blosc-lz4, zstd or none")


def create_catalog(
    path: str | Path,
    columns: Mapping[str, ColumnSpec],
    n_rows: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    attrs: Mapping[str, Any] | None = None,
    *,
    format: str = STARS_FORMAT,
    compressor: str = "blosc-lz4",
) -> Path:
    """Allocate an empty catalog at ``path`` (``complete: false``); no chunk is written.

    Example:
        >>> path = create_catalog(tmp_path / "stars.zarr", STAR_COLUMNS, n_rows=10, chunk_rows=4)
        >>> zarr.open_group(path).attrs["complete"]
        False
        >>> open_catalog(path)
        Traceback (most recent call last):
        ...
        galmock.errors.InputError: .../stars.zarr: attribute complete = False: the catalog is ...
    """
    path = Path(path)
    if n_rows < 0 or chunk_rows <= 0:
        raise ValueError(f"need n_rows >= 0 and chunk_rows > 0, got {n_rows}, {chunk_rows}")
    group = zarr.open_group(path, mode="w", zarr_format=3)
    for name, spec in columns.items():
        # A zero-length array still needs a positive chunk length.
        arr = group.create_array(
            name,
            shape=(n_rows,),
            dtype=spec.dtype,
            chunks=(chunk_rows,),
            compressors=_codecs(compressor),
            fill_value=0,
        )
        arr.attrs.update({"unit": spec.unit, "description": spec.description})
    group.attrs.update(
        {
            **dict(attrs or {}),
            "format": format,
            "complete": False,
            "n_rows": int(n_rows),
            "chunk_rows": int(chunk_rows),
            "columns": list(columns),
        }
    )
    return path


def write_rows(path: str | Path, start: int, columns: Mapping[str, np.ndarray]) -> None:
    """Write rows ``start:start + len`` of the given columns; whole chunks only.

    Safe to call from many processes at once for different chunks: each chunk is a separate
    object in the store and no metadata is touched.
    """
    path = Path(path)
    for name, values in columns.items():
        arr = open_for_writing(path / name)
        n, chunk = arr.shape[0], arr.chunks[0]
        stop = start + len(values)
        # Unaligned writes would read-modify-write a chunk another process may be writing.
        if start % chunk or (stop % chunk and stop != n) or stop > n:
            raise ValueError(
                f"{path}/{name}: rows {start}:{stop} are not whole chunks of {chunk} (of {n} rows)"
            )
        arr[start:stop] = np.asarray(values, dtype=arr.dtype)


def mark_complete(path: str | Path, attrs: Mapping[str, Any] | None = None) -> None:
    """Set ``complete: true`` (plus ``attrs``) once every chunk is written; one process only."""
    group = zarr.open_group(Path(path), mode="r+")
    group.attrs.update({**dict(attrs or {}), "complete": True})


def write_star_catalog(
    path: str | Path,
    columns: Mapping[str, np.ndarray],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    attrs: Mapping[str, Any] | None = None,
    *,
    compressor: str = "blosc-lz4",
) -> Path:
    """Write a whole ``galmock.stars/2`` catalog atomically (temporary name, then rename).

    ``columns`` must hold every column of :data:`STAR_COLUMNS` (cast to the contract dtypes);
    extra columns are stored too, with an empty unit.

    Example:
        >>> cols = {c: np.zeros(10, s.dtype) for c, s in STAR_COLUMNS.items()}
        >>> write_star_catalog(tmp_path / "stars.zarr", cols, 4, {"job": "demo"}).name
        'stars.zarr'
        >>> open_catalog(tmp_path / "stars.zarr").attrs["job"]
        'demo'
    """
    missing = [c for c in STAR_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"star catalog columns missing: {', '.join(missing)}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"star catalog columns differ in length: {lengths}")
    n = next(iter(lengths.values()))
    specs = {
        name: STAR_COLUMNS.get(name) or ColumnSpec(np.asarray(values).dtype, "", "")
        for name, values in columns.items()
    }
    path = Path(path)
    with atomic_directory(path) as tmp:
        create_catalog(tmp, specs, n, chunk_rows, attrs, compressor=compressor)
        for start in range(0, n, chunk_rows):
            write_rows(tmp, start, {k: v[start : start + chunk_rows] for k, v in columns.items()})
        mark_complete(tmp)
    return path


@dataclass
class StarCatalog:
    """A checked, complete catalog opened for reading; columns are read lazily.

    Example:
        >>> cols = {c: np.arange(10).astype(s.dtype) for c, s in STAR_COLUMNS.items()}
        >>> cat = open_catalog(write_star_catalog(tmp_path / "stars.zarr", cols, chunk_rows=4))
        >>> cat.read(0, 3, ["x", "y"])  # numpy arrays
        {'x': array([0., 1., 2.]), 'y': array([0., 1., 2.])}
        >>> list(cat.chunks())
        [(0, 4), (4, 8), (8, 10)]
    """

    path: Path
    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def format(self) -> str:
        return str(self.group.attrs["format"])

    @property
    def columns(self) -> list[str]:
        return list(self.group.attrs["columns"])

    @property
    def chunk_rows(self) -> int:
        return int(self.group.attrs["chunk_rows"])

    def __len__(self) -> int:
        return int(self.group.attrs["n_rows"])

    def array(self, name: str) -> zarr.Array:
        return self.group[name]  # type: ignore[return-value]

    def spec(self, name: str) -> ColumnSpec:
        arr = self.array(name)
        return ColumnSpec(np.dtype(arr.dtype), arr.attrs["unit"], arr.attrs["description"])

    def chunks(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of every chunk, in order."""
        n, step = len(self), self.chunk_rows
        for start in range(0, n, step):
            yield start, min(start + step, n)

    def read(
        self, start: int = 0, stop: int | None = None, columns: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of ``columns`` (all by default) as numpy arrays."""
        names = list(columns) if columns is not None else self.columns
        return {c: read_column(self.group, self.path, c, start, stop) for c in names}

    def to_dask(self, columns: Iterable[str] | None = None) -> dict[str, Any]:
        """Lazy dask arrays, one per column, chunked like the store."""
        # Dask stays in galmock.parallel; this is only a convenience for notebooks.
        names = list(columns) if columns is not None else self.columns
        return {c: da.from_zarr(self.array(c)) for c in names}

    def to_dataframe(self, columns: Iterable[str] | None = None) -> Any:
        """A lazy dask DataFrame, one partition per chunk, indexed by row number.

        Example:
            >>> cols = {c: np.ones(10, s.dtype) for c, s in STAR_COLUMNS.items()}
            >>> path = write_star_catalog(tmp_path / "stars.zarr", cols, chunk_rows=4)
            >>> df = open_catalog(path).to_dataframe(["x", "mass"])
            >>> df.npartitions
            3
            >>> df.groupby(df.index // 5)["mass"].sum().compute().tolist()
            [5.0, 5.0]
        """
        names = list(columns) if columns is not None else self.columns
        meta = pd.DataFrame({c: np.empty(0, dtype=self.array(c).dtype) for c in names})
        ranges = list(self.chunks())
        if not ranges:
            return dd.from_pandas(meta, npartitions=1)
        divisions = [a for a, _ in ranges] + [ranges[-1][1] - 1]
        return dd.from_map(
            _read_frame, ranges, path=str(self.path), columns=names, meta=meta,
            divisions=divisions, enforce_metadata=False,
        )  # fmt: skip


def _read_frame(rows: tuple[int, int], path: str, columns: list[str]) -> pd.DataFrame:
    start, stop = rows
    group = zarr.open_group(path, mode="r")
    data = {c: read_column(group, Path(path), c, start, stop) for c in columns}
    return pd.DataFrame(data, index=pd.RangeIndex(start, stop))



def open_catalog(path: str | Path, format: str | None = None) -> StarCatalog:
    """Open and check a galmock catalog (``format``: require this one; default: any known).

    Refuses, with an :class:`InputError` naming the path, the field and the value: a missing or
    non-Zarr path, an unknown format, a catalog still being written (``complete: false``),
    missing columns, wrong dtypes, and arrays whose length or chunking disagrees with
    ``n_rows`` / ``chunk_rows``.

    Example:
        >>> cols = {c: np.zeros(3, s.dtype) for c, s in STAR_COLUMNS.items()}
        >>> path = write_star_catalog(tmp_path / "stars.zarr", cols)
        >>> open_catalog(path, format=STARS_FORMAT).columns[:3]
        ['x', 'y', 'z']
        >>> open_catalog(path, format=CATALOG_FORMAT)
        Traceback (most recent call last):
        ...
        galmock.errors.InputError: .../stars.zarr: attribute format = 'galmock.stars/2', expect...
    """
    path = Path(path)
    if not path.exists():
        hint = " (run `galmock upsample` first)" if path.name == "stars.zarr" else ""
        raise InputError(f"{path}: catalog not found{hint}")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:  # zarr raises several types for a non-store directory
        raise InputError(f"{path}: not a Zarr catalog: {err}") from err
    attrs = dict(group.attrs)
    found = attrs.get("format")
    if found not in _REQUIRED or (format is not None and found != format):
        wanted = format or " or ".join(_REQUIRED)
        raise InputError(f"{path}: attribute format = {found!r}, expected {wanted!r}")
    if attrs.get("complete") is not True:
        raise InputError(
            f"{path}: attribute complete = {attrs.get('complete')!r}: the catalog is still being "
            "written (or its writer died); wait for it, or rerun the stage that writes it"
        )
    for key in ("n_rows", "chunk_rows", "columns"):
        if key not in attrs:
            raise InputError(f"{path}: attribute {key} is missing")
    n, chunk = attrs["n_rows"], attrs["chunk_rows"]
    present = set(group.array_keys())
    missing = [c for c in (*_REQUIRED[found], *attrs["columns"]) if c not in present]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(dict.fromkeys(missing))} "
            f"(format {found} needs {', '.join(_REQUIRED[found])})"
        )
    for name in attrs["columns"]:
        arr = group[name]
        if arr.shape != (n,):
            raise InputError(
                f"{path}: column {name!r} has shape {arr.shape}, but attribute n_rows = {n}"
            )
        if arr.chunks != (chunk,):
            raise InputError(
                f"{path}: column {name!r} has chunks {arr.chunks}, but attribute "
                f"chunk_rows = {chunk}"
            )
        want = STAR_COLUMNS.get(name)
        if want is not None and np.dtype(arr.dtype) != want.dtype:
            raise InputError(
                f"{path}: column {name!r} has dtype {np.dtype(arr.dtype)}, expected {want.dtype}"
            )
        require_chunks(path / name, n, chunk,
                       f"the catalog is damaged; rerun the stage that wrote {path.name}")
    return StarCatalog(path=path, group=group)




# -- catalogs written in blocks by many processes ---------------------------------------------

BLOCKS_FORMAT = "galmock.blocks/1"
_LAYOUT = "layout.json"


@dataclass(frozen=True)
class RowLayout:
    """Consecutive blocks of known length (one per region) in a dense catalog of ``chunk_rows``.

    Block i holds rows ``offsets[i]:offsets[i + 1]``. A chunk inside one block is written by that
    block's writer alone; a chunk that a block boundary cuts (an *edge chunk*) is assembled from
    the blocks' pieces once they are written. So no two writers ever touch the same chunk and
    the catalog has no padding rows.

    Example:
        >>> layout = RowLayout((5, 0, 7), chunk_rows=4)
        >>> layout.offsets.tolist(), layout.edge_chunks()
        ([0, 5, 5, 12], [1])
        >>> layout.segments(2)  # (start, stop, is_piece): rows 5:8 share chunk 1 with block 0
        [(5, 8, True), (8, 12, False)]
    """

    counts: tuple[int, ...]
    chunk_rows: int

    def __post_init__(self) -> None:
        if self.chunk_rows <= 0 or any(int(c) < 0 for c in self.counts):
            raise ValueError(f"need chunk_rows > 0 and counts >= 0, got {self.chunk_rows}")
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))

    @property
    def offsets(self) -> np.ndarray:
        """Block starts, then the total: ``len(counts) + 1`` int64 values."""
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int64)

    @property
    def n_rows(self) -> int:
        return int(sum(self.counts))

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def block(self, i: int) -> tuple[int, int]:
        """Rows ``(start, stop)`` of block ``i``."""
        offsets = self.offsets
        return int(offsets[i]), int(offsets[i + 1])

    def chunk(self, k: int) -> tuple[int, int]:
        """Rows ``(start, stop)`` of chunk ``k`` (the last one may be short)."""
        return k * self.chunk_rows, min((k + 1) * self.chunk_rows, self.n_rows)

    def edge_chunks(self) -> list[int]:
        """Chunks cut by a block boundary, in order."""
        inner = self.offsets[1:-1]
        inner = inner[(inner % self.chunk_rows != 0) & (inner < self.n_rows)]
        return [int(k) for k in np.unique(inner // self.chunk_rows)]

    def segments(self, i: int) -> list[tuple[int, int, bool]]:
        """Block ``i`` cut at chunk boundaries: ``(start, stop, is_piece)``, in row order.

        A piece is a block's share of an edge chunk; every other segment is a whole chunk.
        """
        start, stop = self.block(i)
        edges = set(self.edge_chunks())
        out = []
        a = start
        while a < stop:
            k = a // self.chunk_rows
            b = min((k + 1) * self.chunk_rows, stop)
            out.append((a, b, k in edges))
            a = b
        return out

    def pieces(self, k: int) -> list[tuple[int, int]]:
        """Row ranges of the pieces that make up edge chunk ``k``, in row order."""
        c0, c1 = self.chunk(k)
        offsets = self.offsets
        return [
            (max(int(offsets[i]), c0), min(int(offsets[i + 1]), c1))
            for i in range(len(self.counts))
            if self.counts[i] and offsets[i] < c1 and offsets[i + 1] > c0
        ]


def columns_sha256(columns: Mapping[str, np.ndarray]) -> str:
    """Checksum of whole columns (their little-endian bytes), in the mapping's order.

    Example:
        >>> columns_sha256({"x": np.zeros(3)}) == columns_sha256({"x": np.zeros(3)})
        True
    """
    hashers = {name: hashlib.sha256() for name in columns}
    for name, values in columns.items():
        hashers[name].update(_le_view(np.asarray(values)))
    return _combine(hashers)


def _le_view(values: np.ndarray) -> memoryview:
    """The array's little-endian bytes, without a copy when it already is contiguous LE."""
    le = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return memoryview(le.reshape(-1).view(np.uint8))


def _combine(hashers: Mapping[str, Any]) -> str:
    text = "".join(f"{name}:{h.hexdigest()}\n" for name, h in hashers.items())
    return hashlib.sha256(text.encode()).hexdigest()


def zarr_attrs(path: str | Path) -> dict[str, Any] | None:
    """A Zarr group's attributes read straight from its ``zarr.json`` (None if unreadable).

    Cheap and lock-free: for progress reports on products that may be half-written.
    """
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return dict(meta.get("attributes", {}))


def is_current(path: str | Path, fingerprint: str) -> bool:
    """Whether ``path`` is a complete catalog built for ``fingerprint`` (then nothing to redo)."""
    try:
        attrs = dict(zarr.open_group(Path(path), mode="r").attrs)
    except Exception:  # missing or not a Zarr group: not current
        return False
    return attrs.get("complete") is True and attrs.get("fingerprint") == fingerprint


class _StagedCatalog:
    """What :class:`BlockCatalog` and :class:`OpenBlockCatalog` share: the staging directory
    beside ``target``, block records and checkpoints in it, and the final swap."""

    target: Path

    @staticmethod
    def staging_dir(target: str | Path) -> Path:
        target = Path(target)
        return target.with_name(f".{target.name}.partial")

    @property
    def staging(self) -> Path:
        return self.staging_dir(self.target)

    @property
    def store(self) -> Path:
        """The Zarr catalog being written."""
        return self.staging / self.target.name

    def progress_path(self, block: int) -> Path:
        """Where block ``block``'s last checkpoint is kept until the block is recorded."""
        return self.staging / "progress" / f"block-{block:06d}"

    def _write_record(self, record: Mapping[str, Any]) -> None:
        """A finished block's record, atomic (a kill cannot leave half); its checkpoint goes."""
        block = int(record["block"])
        atomic_write_text(
            self.staging / "done" / f"block-{block:06d}.json", json.dumps(dict(record)) + "\n"
        )
        shutil.rmtree(self.progress_path(block), ignore_errors=True)  # superseded

    def _publish(self, attrs: Mapping[str, Any] | None, records: list[Any]) -> Path:
        """Mark the catalog complete (``records`` in attribute ``blocks``) and rename it over
        ``target``; the staging directory goes."""
        mark_complete(self.store, {**dict(attrs or {}), "blocks": records})
        replace_path(self.store, self.target)
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.target


class BlockCatalog(_StagedCatalog):
    """A catalog written in blocks by any number of processes, resumable after a crash or kill.

    The catalog at ``target`` is built in a staging directory beside it,
    ``.<target name>.partial/``::

        layout.json     what is being built: fingerprint, block counts, chunk_rows, columns
        <target name>/  the Zarr catalog (``complete: false``)
        done/           one JSON record per finished block: start, rows, sha256
        pieces/         edge-chunk pieces, a directory of ``.npy`` columns per piece, named by
                        its first row
        progress/       per unfinished block, its last checkpoint (:meth:`BlockWriter.checkpoint`):
                        rows stored so far, the buffered tail (``.npy``), the caller's state

    One process calls :meth:`prepare` (which resumes a staging area built for the same
    fingerprint, else starts afresh); then any process :meth:`open`\\ s it, streams blocks
    through :meth:`writer` and :meth:`record`\\ s them, and :meth:`assemble`\\ s edge chunks once
    every block is done; finally one process calls :meth:`finalize`, which marks the catalog
    complete and renames it over ``target``. ``target`` is therefore always either the previous
    complete catalog or the new complete one.

    Example:
        >>> layout = RowLayout((5, 7), chunk_rows=4)
        >>> cat = BlockCatalog.prepare(tmp_path / "stars.zarr", layout, STAR_COLUMNS, "fp")
        >>> for block in (0, 1):  # any process, any order
        ...     with cat.writer(block) as w:
        ...         n = layout.counts[block]
        ...         w.append({c: np.full(n, block, s.dtype) for c, s in STAR_COLUMNS.items()})
        ...     cat.record(w.record)
        >>> BlockCatalog.progress(cat.staging)  # blocks done, blocks, rows written, rows
        (2, 2, 12, 12)
        >>> for k in layout.edge_chunks():  # chunk 1 holds rows 4:8, cut at row 5
        ...     cat.assemble(k)
        >>> cat.finalize().name
        'stars.zarr'
        >>> open_catalog(tmp_path / "stars.zarr").read(columns=["region"])["region"].tolist()
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
        >>> is_current(tmp_path / "stars.zarr", "fp")
        True
    """

    def __init__(
        self, target: Path, layout: RowLayout, columns: list[str], fingerprint: str
    ) -> None:
        self.target = Path(target)
        self.layout = layout
        self.columns = columns
        self.fingerprint = fingerprint

    @staticmethod
    def progress(staging: str | Path) -> tuple[int, int, int, int] | None:
        """(blocks done, blocks, rows written, rows) of a staging area, None if there is none.

        Reads only finished records, so it is safe while writers are running.
        """
        staging = Path(staging)
        layout = _read_layout_file(staging)
        if layout is None:
            return None
        counts = [int(c) for c in layout["counts"]]
        records = []
        for path in (staging / "done").glob("block-*.json"):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # being replaced right now
        rows = sum(int(r["rows"]) for r in records)
        return len(records), len(counts), rows, sum(counts)

    @classmethod
    def prepare(
        cls,
        target: str | Path,
        layout: RowLayout,
        columns: Mapping[str, ColumnSpec],
        fingerprint: str,
        attrs: Mapping[str, Any] | None = None,
        *,
        compressor: str = "blosc-lz4",
        array_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> BlockCatalog:
        """Resume the staging area if it was built for ``fingerprint`` and ``layout``, else
        create it afresh (one process only). Leftovers of killed writers are removed."""
        target = Path(target)
        staging = cls.staging_dir(target)
        remove_leftovers(target)  # a swap killed half-way: the old catalog put back or removed
        found = _read_layout_file(staging)
        wanted = {
            "format": BLOCKS_FORMAT,
            "fingerprint": fingerprint,
            "counts": list(layout.counts),
            "chunk_rows": layout.chunk_rows,
            "columns": list(columns),
        }
        if found == wanted and (staging / target.name / "zarr.json").is_file():
            for tmp in (staging / "pieces").glob(".*"):
                shutil.rmtree(tmp, ignore_errors=True)  # half-written pieces
            # Zarr writes each chunk to <key>.<uuid>.partial and renames it: a writer killed in
            # between leaves that file, which would otherwise end up in the finished catalog.
            for tmp in (staging / target.name).rglob("*.partial"):
                tmp.unlink(missing_ok=True)
            return cls(target, layout, list(columns), fingerprint)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        store = staging / target.name
        create_catalog(
            store, columns, layout.n_rows, layout.chunk_rows,
            {**dict(attrs or {}), "fingerprint": fingerprint}, compressor=compressor,
        )  # fmt: skip
        for name, extra in (array_attrs or {}).items():
            zarr.open_array(store / name, mode="r+").attrs.update(dict(extra))
        (staging / "done").mkdir()
        (staging / "pieces").mkdir()
        (staging / "progress").mkdir()
        # Written last: a staging area without it is incomplete and is started afresh.
        atomic_write_text(staging / _LAYOUT, json.dumps(wanted, indent=1) + "\n")
        return cls(target, layout, list(columns), fingerprint)

    @classmethod
    def open(cls, target: str | Path) -> BlockCatalog:
        """The staging area :meth:`prepare` made (any process)."""
        target = Path(target)
        found = _read_layout_file(cls.staging_dir(target))
        if found is None:
            raise InputError(f"{cls.staging_dir(target)}: no block catalog is being written here")
        layout = RowLayout(tuple(found["counts"]), int(found["chunk_rows"]))
        return cls(target, layout, list(found["columns"]), str(found["fingerprint"]))

    def done(self) -> dict[int, dict[str, Any]]:
        """Records of the finished blocks, by block index."""
        out = {}
        for path in sorted((self.staging / "done").glob("block-*.json")):
            record = json.loads(path.read_text())
            block = int(record["block"])
            if record.get("rows") == self.layout.counts[block]:
                out[block] = record
        return out

    def writer(self, block: int) -> BlockWriter:
        """A streaming writer for block ``block`` (use one writer per block at a time)."""
        return BlockWriter(self, block)

    def record(self, record: Mapping[str, Any]) -> None:
        """Mark a block finished (after its writer closed); atomic, so a kill cannot leave half."""
        block = int(record["block"])
        if record.get("rows") != self.layout.counts[block]:
            raise ValueError(f"block {block}: {record.get('rows')} rows written, expected "
                             f"{self.layout.counts[block]}")
        self._write_record(record)

    def piece_path(self, start: int) -> Path:
        return self.staging / "pieces" / f"{start:015d}"

    def assemble(self, k: int) -> None:
        """Write edge chunk ``k`` from its pieces (after every block overlapping it is done)."""
        parts = []
        for start, stop in self.layout.pieces(k):
            path = self.piece_path(start)
            try:
                part = {c: np.load(path / f"{c}.npy") for c in self.columns}
            except (OSError, ValueError) as err:
                problem = f"piece of chunk {k} missing or unreadable: {err}"
                raise InputError(f"{path}: {problem}") from None
            if any(len(v) != stop - start for v in part.values()):
                raise InputError(f"{path}: piece has the wrong length (expected {stop - start})")
            parts.append(part)
        cols = {c: np.concatenate([p[c] for p in parts]) for c in self.columns}
        c0, c1 = self.layout.chunk(k)
        arrays = {c: open_for_writing(self.store / c) for c in self.columns}
        _write_columns(arrays, c0, c1, cols)

    def finalize(self, attrs: Mapping[str, Any] | None = None) -> Path:
        """Mark the catalog complete (block records go to attribute ``blocks``) and move it to
        ``target``, replacing what was there; one process, after every block and edge chunk."""
        done = self.done()
        missing = [i for i in range(len(self.layout.counts)) if i not in done]
        if missing:
            raise InputError(f"{self.store}: block(s) {missing[:10]} are not written yet")
        return self._publish(attrs, [done[i] for i in sorted(done)])


def _writer_threads(columns: int) -> int:
    # Compression, hashing and file writes release the GIL, and a chunk per column leaves zarr
    # nothing to overlap, so columns go in parallel threads.
    return max(1, min(columns, len(os.sched_getaffinity(0))))


def _write_columns(
    arrays: Mapping[str, zarr.Array], start: int, stop: int, cols: Mapping[str, np.ndarray]
) -> None:
    """Rows ``start:stop`` of every column, the columns in parallel threads."""
    with ThreadPoolExecutor(max_workers=_writer_threads(len(arrays))) as pool:
        done = [pool.submit(arr.__setitem__, slice(start, stop), cols[c])
                for c, arr in arrays.items()]  # fmt: skip
        for future in done:
            future.result()


def _read_layout_file(staging: Path, format: str = BLOCKS_FORMAT) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(staging) / _LAYOUT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == format else None


class BlockWriter:
    """Streams one block's rows, in order, into a :class:`BlockCatalog`.

    Whole chunks go straight into the Zarr store as soon as they are filled; the block's
    share of an edge chunk (at most two pieces) goes to a side file. Memory: at most one
    chunk plus the last appended batch. The checksum covers every column in catalog order.

    Example:
        >>> layout = RowLayout((5, 7), chunk_rows=4)
        >>> catalog = BlockCatalog.prepare(tmp_path / "s.zarr", layout, STAR_COLUMNS, "fp")
        >>> batches = [{c: np.zeros(n, s.dtype) for c, s in STAR_COLUMNS.items()} for n in (3, 4)]
        >>> with catalog.writer(1) as w:  # block 1: rows 5:12, pieces 5:8, whole chunk 8:12
        ...     for batch in batches:
        ...         w.append(batch)
        >>> {k: w.record[k] for k in ("block", "start", "rows")}
        {'block': 1, 'start': 5, 'rows': 7}
        >>> len(w.record["sha256"])
        64
    """

    def __init__(self, catalog: BlockCatalog, block: int) -> None:
        self.catalog = catalog
        self.block = block
        self.start, self.stop = catalog.layout.block(block)
        self._segments = list(catalog.layout.segments(block))
        self._n_segments = len(self._segments)
        self._arrays = {
            c: open_for_writing(catalog.store / c) for c in catalog.columns
        }
        self._dtypes = {c: np.dtype(a.dtype) for c, a in self._arrays.items()}
        self._hashers = {c: hashlib.sha256() for c in catalog.columns}
        self._pool = ThreadPoolExecutor(max_workers=_writer_threads(len(catalog.columns)))
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self.rows = 0
        self.record: dict[str, Any] | None = None

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.close()

    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append rows (every catalog column, equal lengths; cast to the catalog dtypes)."""
        if set(columns) != set(self._arrays):
            raise ValueError(f"block {self.block}: columns {sorted(columns)} differ from the "
                             f"catalog's {sorted(self._arrays)}")
        cols = {c: np.asarray(columns[c]).astype(self._dtypes[c], copy=False) for c in self._arrays}
        n = len(next(iter(cols.values())))
        if any(len(v) != n for v in cols.values()):
            raise ValueError(f"block {self.block}: columns differ in length")
        if self.rows + n > self.stop - self.start:
            raise ValueError(f"block {self.block}: {self.rows + n} rows appended, the block has "
                             f"{self.stop - self.start}")
        self._buffer.append(cols)
        self._buffered += n
        self.rows += n
        self._flush()

    def _flush(self) -> None:
        while self._segments and self._buffered >= self._segments[0][1] - self._segments[0][0]:
            a, b, is_piece = self._segments.pop(0)
            cols = {c: np.concatenate([part[c] for part in self._buffer]) for c in self._arrays}
            head = {c: v[: b - a] for c, v in cols.items()}
            rest = {c: v[b - a :] for c, v in cols.items()}
            self._buffer = [rest] if len(next(iter(rest.values()))) else []
            self._buffered -= b - a
            piece = tmp = None
            if is_piece:
                piece = self.catalog.piece_path(a)
                tmp = piece.with_name(f".{piece.name}.{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            jobs = [self._pool.submit(self._write, c, a, b, head[c], tmp) for c in self._arrays]
            for job in jobs:
                job.result()
            if piece is not None and tmp is not None:
                shutil.rmtree(piece, ignore_errors=True)  # from a killed earlier attempt
                os.replace(tmp, piece)

    def _write(self, column: str, a: int, b: int, values: np.ndarray, piece: Path | None) -> None:
        """Rows ``a:b`` of one column: into the store, or into the piece directory."""
        # Rows reach a column in order, so hashing here covers the block in order.
        self._hashers[column].update(_le_view(values))
        if piece is None:
            self._arrays[column][a:b] = values
        else:
            np.save(piece / f"{column}.npy", values)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Save how far the block got, so a rerun continues from here (:meth:`resume`): the
        rows already stored (whole chunks and pieces), the buffered tail, and the caller's
        JSON-ready ``state`` (e.g. its next batch). Atomic: a kill keeps the previous one."""
        tail = self._tail()
        progress = {
            "block": self.block,
            "rows": self.rows,
            "segments_done": self._n_segments - len(self._segments),
            "tail_rows": self._buffered,
            "state": dict(state),
        }
        with atomic_directory(self.catalog.progress_path(self.block)) as tmp:
            for c, values in tail.items():
                np.save(tmp / f"{c}.npy", values)
            (tmp / "progress.json").write_text(json.dumps(progress) + "\n")

    def resume(self) -> dict[str, Any] | None:
        """Continue from the block's last :meth:`checkpoint`: restores the rows, the buffered
        tail and the checksum of what is stored (read back, which also checks every chunk's
        CRC32C); returns the caller's state, or None when there is no usable checkpoint (the
        block then starts over, which rewrites the same rows)."""
        path = self.catalog.progress_path(self.block)
        try:
            progress = json.loads((path / "progress.json").read_text())
            done = int(progress["segments_done"])
            tail = {c: np.load(path / f"{c}.npy") for c in self._arrays}
            segments = self._segments[:done]
            stored = [self._stored(a, b, is_piece) for a, b, is_piece in segments]
        except (OSError, ValueError, KeyError, TypeError, InputError) as err:
            if path.exists():
                log.warning("block %d: checkpoint %s unusable (%s); starting the block over",
                            self.block, path, err)
            return None
        n_tail = len(tail[self.catalog.columns[0]])
        rows = sum(b - a for a, b, _ in segments) + n_tail
        if n_tail != progress["tail_rows"] or rows != progress["rows"]:
            log.warning("block %d: checkpoint %s inconsistent; starting the block over",
                        self.block, path)
            return None
        for values in stored:
            for c in self.catalog.columns:
                self._hashers[c].update(_le_view(values[c]))
        self._segments = self._segments[done:]
        self._buffer = [tail] if n_tail else []
        self._buffered = n_tail
        self.rows = rows
        return dict(progress["state"])

    def _stored(self, a: int, b: int, is_piece: bool) -> dict[str, np.ndarray]:
        """Rows ``a:b`` as written: from the piece files or from the store."""
        if is_piece:
            piece = self.catalog.piece_path(a)
            return {c: np.load(piece / f"{c}.npy") for c in self.catalog.columns}
        group = zarr.open_group(self.catalog.store, mode="r")
        return {c: read_column(group, self.catalog.store, c, a, b) for c in self.catalog.columns}

    def _tail(self) -> dict[str, np.ndarray]:
        """The buffered rows not yet stored, one array per column."""
        if not self._buffer:
            return {c: np.empty(0, self._dtypes[c]) for c in self.catalog.columns}
        return {c: np.concatenate([part[c] for part in self._buffer])
                for c in self.catalog.columns}

    def close(self) -> dict[str, Any]:
        """Check that the whole block was written; returns (and keeps) the block's record."""
        if self.rows != self.stop - self.start or self._segments:
            raise ValueError(f"block {self.block}: {self.rows} rows appended, the block has "
                             f"{self.stop - self.start}")
        self._pool.shutdown()
        self.record = {
            "block": self.block,
            "start": self.start,
            "rows": self.rows,
            "sha256": _combine(self._hashers),
        }
        return self.record


OPEN_BLOCKS_FORMAT = "galmock.open-blocks/1"


class OpenBlockCatalog(_StagedCatalog):
    r"""A :class:`BlockCatalog` whose blocks' lengths are known only once they are written:
    magnitude-limited upsampling keeps a random share of each region's draws.

    A block's rows go to its own pieces of ``chunk_rows`` rows (the last shorter) in the staging
    directory; once every block is done, :meth:`allocate` creates the catalog with the total,
    any process :meth:`assemble`\ s its chunks from the pieces (every chunk, where a
    :class:`BlockCatalog` assembles only the few its blocks share), and :meth:`finalize` renames
    it into place. Checkpoints, resumption, records and the final swap work as there::

        layout.json                         what is being built: fingerprint, blocks, columns...
        blocks/block-NNNNNN/piece-NNNNNN/   a piece: one ``.npy`` per column
        done/block-NNNNNN.json              a finished block: rows, pieces, sha256
        progress/block-NNNNNN/              an unfinished block's last checkpoint
        <target name>/                      the catalog, once allocated

    Example:
        >>> cat = OpenBlockCatalog.prepare(tmp_path / "stars.zarr", 2, STAR_COLUMNS, "fp",
        ...                                chunk_rows=4)
        >>> for block, n in ((0, 5), (1, 2)):  # lengths found while writing
        ...     with cat.writer(block) as w:
        ...         w.append({c: np.full(n, block, s.dtype) for c, s in STAR_COLUMNS.items()})
        ...     cat.record(w.record)
        >>> OpenBlockCatalog.progress(cat.staging)  # blocks done, blocks, rows, rows in all
        (2, 2, 7, None)
        >>> for k in range(cat.allocate()):  # 7 rows: chunks 0:4 and 4:7
        ...     cat.assemble(k)
        >>> cat.finalize().name
        'stars.zarr'
        >>> open_catalog(tmp_path / "stars.zarr").read(columns=["region"])["region"].tolist()
        [0, 0, 0, 0, 0, 1, 1]
    """

    def __init__(self, target: Path, meta: Mapping[str, Any]) -> None:
        self.target = Path(target)
        self.meta = dict(meta)
        self.blocks = int(meta["blocks"])
        self.chunk_rows = int(meta["chunk_rows"])
        self.columns = list(meta["columns"])
        self.dtypes = {c: np.dtype(d) for c, d in zip(self.columns, meta["dtypes"])}
        self.fingerprint = str(meta["fingerprint"])
        self._known_offsets: np.ndarray | None = None

    @classmethod
    def prepare(
        cls,
        target: str | Path,
        blocks: int,
        columns: Mapping[str, ColumnSpec],
        fingerprint: str,
        attrs: Mapping[str, Any] | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        compressor: str = "blosc-lz4",
        array_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> OpenBlockCatalog:
        """Resume the staging area if it was built for ``fingerprint``, else start it afresh
        (one process only); leftovers of killed writers are removed."""
        target = Path(target)
        staging = cls.staging_dir(target)
        remove_leftovers(target)
        wanted = {
            "format": OPEN_BLOCKS_FORMAT,
            "fingerprint": fingerprint,
            "blocks": int(blocks),
            "chunk_rows": int(chunk_rows),
            "columns": list(columns),
            "dtypes": [columns[c].dtype.str for c in columns],
            "units": [columns[c].unit for c in columns],
            "descriptions": [columns[c].description for c in columns],
            "compressor": compressor,
            "attrs": {**dict(attrs or {}), "fingerprint": fingerprint},
            "array_attrs": {k: dict(v) for k, v in (array_attrs or {}).items()},
        }
        found = _read_layout_file(staging, OPEN_BLOCKS_FORMAT)
        # What the finished blocks' rows depend on (provenance attrs may change on a rerun).
        same = ("fingerprint", "blocks", "chunk_rows", "columns", "dtypes")
        if found is not None and all(found.get(k) == json.loads(json.dumps(wanted[k]))
                                     for k in same):
            found.update(json.loads(json.dumps(wanted)))  # the new provenance, units, codec
            atomic_write_text(staging / _LAYOUT, json.dumps(found, indent=1) + "\n")
            for tmp in (staging / "blocks").glob("*/.*"):
                shutil.rmtree(tmp, ignore_errors=True)  # half-written pieces
            shutil.rmtree(staging / target.name, ignore_errors=True)  # reallocated at the end
            return cls(target, found)
        shutil.rmtree(staging, ignore_errors=True)
        for sub in ("blocks", "done", "progress"):
            (staging / sub).mkdir(parents=True)
        atomic_write_text(staging / _LAYOUT, json.dumps(wanted, indent=1) + "\n")
        return cls(target, json.loads(json.dumps(wanted)))

    @classmethod
    def open(cls, target: str | Path) -> OpenBlockCatalog:
        """The staging area :meth:`prepare` made (any process)."""
        found = _read_layout_file(cls.staging_dir(target), OPEN_BLOCKS_FORMAT)
        if found is None:
            raise InputError(f"{cls.staging_dir(target)}: no open block catalog is being "
                             "written here")
        return cls(Path(target), found)

    @staticmethod
    def progress(staging: str | Path) -> tuple[int, int, int, None] | None:
        """(blocks done, blocks, rows written, None: the total is not known before the end)."""
        staging = Path(staging)
        layout = _read_layout_file(staging, OPEN_BLOCKS_FORMAT)
        if layout is None:
            return None
        rows = done = 0
        for path in (staging / "done").glob("block-*.json"):
            try:
                rows += int(json.loads(path.read_text())["rows"])
                done += 1
            except (OSError, ValueError, KeyError):
                continue
        return done, int(layout["blocks"]), rows, None

    def done(self) -> dict[int, dict[str, Any]]:
        """Records of the finished blocks, by block index."""
        out = {}
        for path in sorted((self.staging / "done").glob("block-*.json")):
            record = json.loads(path.read_text())
            out[int(record["block"])] = record
        return out

    def writer(self, block: int) -> OpenBlockWriter:
        return OpenBlockWriter(self, block)

    def record(self, record: Mapping[str, Any]) -> None:
        """Mark a block finished (after its writer closed); atomic."""
        self._write_record(record)

    def piece_path(self, block: int, piece: int) -> Path:
        return self.staging / "blocks" / f"block-{block:06d}" / f"piece-{piece:06d}"

    def _offsets(self) -> np.ndarray:
        """Block starts and the total, once every block is recorded (read once per process:
        assembling every chunk would otherwise read every record again)."""
        if self._known_offsets is not None:
            return self._known_offsets
        done = self.done()
        missing = [i for i in range(self.blocks) if i not in done]
        if missing:
            raise InputError(f"{self.staging}: block(s) {missing[:10]} are not written yet")
        rows = [int(done[i]["rows"]) for i in range(self.blocks)]
        self._known_offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
        return self._known_offsets

    def allocate(self) -> int:
        """Create the (empty) catalog for the rows every block wrote; returns its number of
        chunks. One process, after every block is recorded."""
        n_rows = int(self._offsets()[-1])
        specs = {c: ColumnSpec(self.dtypes[c], u, d) for c, u, d in
                 zip(self.columns, self.meta["units"], self.meta["descriptions"])}
        shutil.rmtree(self.store, ignore_errors=True)
        create_catalog(self.store, specs, n_rows, self.chunk_rows, self.meta["attrs"],
                       compressor=self.meta["compressor"])
        for name, extra in self.meta["array_attrs"].items():
            zarr.open_array(self.store / name, mode="r+").attrs.update(dict(extra))
        return -(-n_rows // self.chunk_rows)

    def assemble(self, k: int) -> None:
        """Write chunk ``k`` of the allocated catalog from the blocks' pieces."""
        offsets = self._offsets()
        c0, c1 = k * self.chunk_rows, min((k + 1) * self.chunk_rows, int(offsets[-1]))
        parts = []
        for block in range(self.blocks):
            a, b = max(c0, int(offsets[block])), min(c1, int(offsets[block + 1]))
            local = a - int(offsets[block])
            while a < b:
                piece, within = divmod(local, self.chunk_rows)
                take = min(b - a, self.chunk_rows - within)
                path = self.piece_path(block, piece)
                try:
                    part = {c: np.load(path / f"{c}.npy", mmap_mode="r")[within:within + take]
                            for c in self.columns}
                except (OSError, ValueError) as err:
                    raise InputError(f"{path}: piece missing or unreadable: {err}") from None
                if any(len(v) != take for v in part.values()):
                    raise InputError(f"{path}: piece is shorter than its block's record says")
                parts.append(part)
                a, local = a + take, local + take
        cols = {c: np.concatenate([p[c] for p in parts]) for c in self.columns}
        arrays = {c: open_for_writing(self.store / c) for c in self.columns}
        _write_columns(arrays, c0, c1, cols)

    def finalize(self, attrs: Mapping[str, Any] | None = None) -> Path:
        """Mark the assembled catalog complete (block records in attribute ``blocks``) and move
        it to ``target``; one process, after every chunk is assembled."""
        done = self.done()
        offsets = self._offsets()
        return self._publish(attrs, [{**done[i], "start": int(offsets[i])} for i in sorted(done)])


class OpenBlockWriter:
    """Streams one block of an :class:`OpenBlockCatalog` into pieces of ``chunk_rows`` rows;
    the interface of :class:`BlockWriter` (append, checkpoint, resume, close, record)."""

    def __init__(self, catalog: OpenBlockCatalog, block: int) -> None:
        self.catalog, self.block = catalog, block
        self._hashers = {c: hashlib.sha256() for c in catalog.columns}
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self.rows = 0
        self.pieces = 0
        self.record: dict[str, Any] | None = None

    def __enter__(self) -> OpenBlockWriter:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.close()

    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append rows (every catalog column, equal lengths; cast to the catalog dtypes)."""
        if set(columns) != set(self.catalog.columns):
            raise ValueError(f"block {self.block}: columns {sorted(columns)} differ from the "
                             f"catalog's {sorted(self.catalog.columns)}")
        cols = {c: np.asarray(columns[c]).astype(self.catalog.dtypes[c], copy=False)
                for c in self.catalog.columns}
        n = len(next(iter(cols.values())))
        if any(len(v) != n for v in cols.values()):
            raise ValueError(f"block {self.block}: columns differ in length")
        self._buffer.append(cols)
        self._buffered += n
        self.rows += n
        while self._buffered >= self.catalog.chunk_rows:
            self._write_piece(self.catalog.chunk_rows)

    def _tail(self) -> dict[str, np.ndarray]:
        if not self._buffer:
            return {c: np.empty(0, d) for c, d in self.catalog.dtypes.items()}
        return {c: np.concatenate([part[c] for part in self._buffer])
                for c in self.catalog.columns}

    def _write_piece(self, n: int) -> None:
        cols = self._tail()
        head = {c: v[:n] for c, v in cols.items()}
        rest = {c: v[n:] for c, v in cols.items()}
        self._buffer = [rest] if len(next(iter(rest.values()))) else []
        self._buffered -= n
        with atomic_directory(self.catalog.piece_path(self.block, self.pieces)) as tmp:
            for c, values in head.items():
                np.save(tmp / f"{c}.npy", values)
                self._hashers[c].update(_le_view(values))
        self.pieces += 1

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Save how far the block got (pieces, buffered tail, the caller's ``state``); atomic."""
        progress = {"block": self.block, "rows": self.rows, "pieces": self.pieces,
                    "tail_rows": self._buffered, "state": dict(state)}
        with atomic_directory(self.catalog.progress_path(self.block)) as tmp:
            for c, values in self._tail().items():
                np.save(tmp / f"{c}.npy", values)
            (tmp / "progress.json").write_text(json.dumps(progress) + "\n")

    def resume(self) -> dict[str, Any] | None:
        """Continue from the last :meth:`checkpoint` (pieces read back and hashed again);
        the caller's state, or None without a usable one (the block then starts over)."""
        path = self.catalog.progress_path(self.block)
        try:
            progress = json.loads((path / "progress.json").read_text())
            tail = {c: np.load(path / f"{c}.npy") for c in self.catalog.columns}
            stored = [{c: np.load(self.catalog.piece_path(self.block, k) / f"{c}.npy")
                       for c in self.catalog.columns} for k in range(int(progress["pieces"]))]
        except (OSError, ValueError, KeyError, TypeError) as err:
            if path.exists():
                log.warning("block %d: checkpoint %s unusable (%s); starting the block over",
                            self.block, path, err)
            return None
        n_tail = len(tail[self.catalog.columns[0]])
        rows = sum(len(p[self.catalog.columns[0]]) for p in stored) + n_tail
        if n_tail != progress["tail_rows"] or rows != progress["rows"]:
            log.warning("block %d: checkpoint %s inconsistent; starting the block over",
                        self.block, path)
            return None
        for piece in stored:
            for c in self.catalog.columns:
                self._hashers[c].update(_le_view(piece[c]))
        self.pieces = len(stored)
        self._buffer = [tail] if n_tail else []
        self._buffered, self.rows = n_tail, rows
        return dict(progress["state"])

    def close(self) -> dict[str, Any]:
        """Write the last (short) piece; returns (and keeps) the block's record."""
        if self._buffered:
            self._write_piece(self._buffered)
        self.record = {"block": self.block, "start": None, "rows": self.rows,
                       "pieces": self.pieces, "sha256": _combine(self._hashers)}
        return self.record
