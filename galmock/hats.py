r"""HATS output: HEALPix-partitioned Parquet written from sorted runs, at disk speed.

A HATS catalog (what ``lsdb.open_catalog`` reads) is Parquet files, one per sky pixel of an
adaptive HEALPix order, rows sorted by the ``_healpix_29`` spatial index, plus hats' metadata
(``hats.properties``, ``partition_info.csv``, ``dataset/_common_metadata`` and ``_metadata``,
``point_map.fits``, ``skymap.fits``). galmock writes it in three steps, each a bulk numpy /
pyarrow operation (no per-row Python, no dictionary-encoded intermediates), using hats' own
helpers for the layout, the Parquet settings and the metadata:

1. **Runs** (:func:`write_run`, one per Zarr chunk, inside the task that computed the chunk):
   the chunk's rows sorted by ``(_healpix_29, star_id)`` into one uncompressed Arrow IPC file
   (read back memory-mapped, so a partition's slice of it is never copied twice), for each
   output the sorted positions it keeps (``None``: every row; a selection keeps fewer) and its
   sparse histogram at the finest partition order.
2. **Plan** (:func:`plan_partitions`, on the client): the histograms summed and aligned into
   destination pixels exactly as hats-import does (:func:`partition_orders`: hats'
   ``generate_alignment`` with ``drop_empty_siblings``), but on the sparse histogram: the
   dense one hats builds has 12·4^k bins (3 s at order 10 whatever the catalog's size).
3. **Partitions** (:func:`write_partition`, one task per destination pixel): from each run
   that holds rows of the pixel, the contiguous slice of its sorted rows in the pixel's
   ``_healpix_29`` range; the slices are merged by ``(_healpix_29, star_id)`` (runs are in
   star_id order and each slice is sorted, so a stable sort of the concatenation does it) and
   written with ``hats.io.file_io.get_parquet_write_table_kwargs`` (byte-stream-split floats,
   delta-coded spatial index, no dictionary, the job's codec). Then :func:`finish_catalog`
   writes the metadata with hats' writers.

Every row carries ``star_id``, its row in stars.zarr (= in catalog.zarr). Partition content
depends neither on the number of workers nor on the order tasks finish in. Each column carries
``unit`` and ``description`` in its Arrow field metadata; the schema carries the provenance as
JSON under the key ``galmock``.

Example:
    Three chunks of a tiny catalog, each sorted into a run, then partitioned (no Dask client:
    tasks run in this process):

    >>> rng = np.random.default_rng(1)
    >>> schema = catalog_schema({"ra": ("float64", "deg", "right ascension"),
    ...                          "dec": ("float64", "deg", "declination")})
    >>> schema.names
    ['_healpix_29', 'star_id', 'ra', 'dec']
    >>> ra, dec = rng.uniform(0, 360, 300), np.degrees(np.arcsin(rng.uniform(-1, 1, 300)))
    >>> runs = [write_run(tmp_path / f"run{a}.arrow", {"ra": ra[a:a + 100], "dec": dec[a:a + 100]},
    ...                   schema, first_star_id=a, outputs=[None, dec[a:a + 100] > 30],
    ...                   highest_order=3)
    ...         for a in (0, 100, 200)]
    >>> parts = plan_partitions(runs, 0, pixel_histogram(runs, 0, 3), partition_rows=20)
    >>> sum(p.rows for p in parts), sorted({p.order for p in parts})
    (300, [0, 1])
    >>> path = write_hats(None, runs, 0, tmp_path / "demo", "demo", schema=schema,
    ...                   highest_order=3, partition_rows=20)
    >>> sorted(p.name for p in path.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['dataset', 'hats.properties', 'partition_info.csv', 'point_map.fits', 'properties',
     'skymap.fits']
    >>> import lsdb
    >>> stars = lsdb.open_catalog(path).compute()
    >>> sorted(stars["star_id"]) == list(range(300))
    True
    >>> north = write_hats(None, runs, 1, tmp_path / "north", "north", schema=schema,
    ...                    highest_order=3, partition_rows=20, skymap=False)
    >>> (lsdb.open_catalog(north).compute()["dec"] > 30).all()
    True
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from distributed import wait
from hats.catalog import PartitionInfo, TableProperties
from hats.io import file_io, paths
from hats.io.file_io import get_parquet_write_table_kwargs
from hats.io.parquet_metadata import write_parquet_metadata
from hats.pixel_math import HealpixPixel
from hats.pixel_math.healpix_shim import npix2order
from hats.pixel_math.spatial_index import (
    SPATIAL_INDEX_COLUMN,
    SPATIAL_INDEX_ORDER,
    compute_spatial_index,
)

from galmock.errors import InputError
from galmock.parallel.dask import track
from galmock.version import __version__

__all__ = [
    "SPATIAL_INDEX_COLUMN",
    "STAR_ID",
    "Partition",
    "RunOutput",
    "SortedRun",
    "catalog_schema",
    "destination_pixels",
    "finish_catalog",
    "partition_orders",
    "pixel_histogram",
    "plan_partitions",
    "verify_catalog",
    "write_hats",
    "write_partition",
    "write_run",
    "write_sky_maps",
]

#: Row number in stars.zarr: the key that links every output row back to its star.
STAR_ID = "star_id"
_DESCRIPTIONS = {
    SPATIAL_INDEX_COLUMN: "HEALPix nested pixel of (ra, dec) at order 29 (hats' spatial index)",
    STAR_ID: "row number of the star in stars.zarr and catalog.zarr",
}
_ORDERING = [(SPATIAL_INDEX_COLUMN, "ascending"), (STAR_ID, "ascending")]


@dataclass(frozen=True)
class RunOutput:
    """What one output (a catalog or a selection) takes from one run.

    ``positions``: ``.npy`` file of the sorted-run rows it keeps (``None``: every row);
    ``pixels``: the distinct pixels of those rows at the finest partition order, ascending;
    ``counts``: its rows per pixel.
    """

    positions: str | None
    pixels: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class SortedRun:
    """One chunk's rows sorted by ``(_healpix_29, star_id)`` in the Arrow IPC file ``path``."""

    path: str
    rows: int
    outputs: tuple[RunOutput, ...]


@dataclass(frozen=True)
class Partition:
    """One destination pixel of one output and the runs that hold rows of it."""

    order: int
    pixel: int
    rows: int
    sources: tuple[tuple[str, str | None], ...]  # (run path, positions file)

    @property
    def index_range(self) -> tuple[int, int]:
        """The ``_healpix_29`` values of the pixel: ``[start, stop)``."""
        shift = 2 * (SPATIAL_INDEX_ORDER - self.order)
        return self.pixel << shift, (self.pixel + 1) << shift


def catalog_schema(
    columns: Mapping[str, tuple[str, str, str]], metadata: Mapping[str, Any] | None = None
) -> pa.Schema:
    """The Arrow schema of a catalog: ``_healpix_29``, ``star_id``, then ``columns``.

    ``columns`` maps name → (numpy dtype, unit, description); ``metadata`` is stored as JSON
    under the schema key ``galmock``.
    """
    fields = [
        _field(SPATIAL_INDEX_COLUMN, pa.int64(), "", _DESCRIPTIONS[SPATIAL_INDEX_COLUMN]),
        _field(STAR_ID, pa.int64(), "", _DESCRIPTIONS[STAR_ID]),
    ]
    for name, (dtype, unit, description) in columns.items():
        fields.append(_field(name, pa.from_numpy_dtype(np.dtype(dtype)), unit, description))
    return pa.schema(fields, metadata={"galmock": json.dumps(dict(metadata or {}), sort_keys=True)})


def _field(name: str, dtype: pa.DataType, unit: str, description: str) -> pa.Field:
    return pa.field(
        name, dtype, nullable=False, metadata={"unit": unit, "description": description}
    )


def write_run(
    path: str | Path,
    columns: Mapping[str, np.ndarray],
    schema: pa.Schema,
    *,
    first_star_id: int,
    outputs: Sequence[np.ndarray | None],
    highest_order: int,
) -> SortedRun:
    """Sort one chunk's rows by ``(_healpix_29, star_id)`` into the Arrow IPC file ``path``;
    per output with a mask, ``<path>.<k>.npy`` holds the positions it keeps.

    ``columns`` hold the chunk's rows (at least ``ra`` and ``dec`` in degrees and every column
    of ``schema`` but the two it makes); their star ids start at ``first_star_id``. Each entry
    of ``outputs`` is a row mask of the chunk (``None``: every row) for one output catalog.
    Sorted on disk, a partition's rows are one contiguous slice of the run: a partition task
    touches only the pages it needs.
    """
    index = compute_spatial_index(columns["ra"], columns["dec"])
    order = np.argsort(index)  # introsort: 5x faster than a stable sort...
    sorted_index = index[order]
    if np.any(sorted_index[1:] == sorted_index[:-1]):  # ...which only ties need (rare)
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
    arrays = []
    for field in schema:
        if field.name == SPATIAL_INDEX_COLUMN:
            arrays.append(pa.array(index))
        elif field.name == STAR_ID:
            arrays.append(pa.array(np.arange(len(index), dtype=np.int64) + first_star_id))
        else:
            arrays.append(pa.array(np.asarray(columns[field.name]), type=field.type))
    # Arrow's take: its allocator reuses memory where numpy's buffers fault in afresh.
    table = pa.Table.from_arrays(arrays, schema=schema).take(order)
    path = Path(path)
    with ipc.new_file(path, schema) as writer:
        writer.write_table(table)  # one record batch: columns map back as contiguous arrays
    shift = 2 * (SPATIAL_INDEX_ORDER - highest_order)
    runs = []
    for k, mask in enumerate(outputs):
        positions_file, kept = None, sorted_index
        if mask is not None:
            positions = np.flatnonzero(np.asarray(mask)[order])
            positions_file = f"{path}.{k}.npy"
            np.save(positions_file, positions)
            kept = sorted_index[positions]
        pixels, counts = _run_lengths(kept >> shift)
        runs.append(RunOutput(positions_file, pixels, counts))
    return SortedRun(str(path), len(table), tuple(runs))


def _run_lengths(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs."""
    if not len(values):
        return values[:0].astype(np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[starts].astype(np.int64), np.diff(np.r_[starts, len(values)]).astype(np.int64)


def partition_orders(histogram: np.ndarray, threshold: int) -> np.ndarray:
    """The order of the destination pixel of every pixel of ``histogram`` (rows per pixel at
    the finest order), the alignment of hats' ``generate_alignment(histogram, order, 0,
    threshold, drop_empty_siblings=True)`` (hats-import's default).

    A pixel takes the lowest order at which one of its ancestors holds at most ``threshold``
    rows in more than one of its four children; with no such ancestor it keeps the finest
    order. Vectorised order by order (hats loops over pixels in Python: 3 s at order 10).

    Raises:
        ValueError: a single pixel holds more than ``threshold`` rows (hats' message).

    Example:
        >>> histogram = np.zeros(12 * 4**2, np.int64)
        >>> histogram[[0, 1, 40, 47]] = [5, 5, 2, 1]
        >>> partition_orders(histogram, 10)[[0, 1, 40, 47]]
        array([1, 1, 0, 0], dtype=int8)
        >>> partition_orders(histogram, 9)[[0, 1, 40, 47]]  # 0 and 1 no longer merge
        array([2, 2, 0, 0], dtype=int8)
    """
    return _alignment(histogram, threshold)[-1][1]


def destination_pixels(
    histogram: np.ndarray, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-empty destination pixels of :func:`partition_orders`: their orders, pixel
    numbers and rows, in the order of the sky they cover (nested index).

    Example:
        >>> histogram = np.zeros(12 * 4**2, np.int64)
        >>> histogram[[0, 1, 40, 47]] = [5, 5, 2, 1]
        >>> destination_pixels(histogram, 9)
        (array([2, 2, 0]), array([0, 1, 2]), array([5, 5, 3]))
    """
    levels = _alignment(histogram, threshold)
    finest = len(levels) - 1
    found = []
    for order, (rows, orders) in enumerate(levels):
        pixels = np.flatnonzero((orders == order) & (rows > 0))
        found.append((np.full(len(pixels), order), pixels, rows[pixels]))
    orders, pixels, rows = (np.concatenate(parts) for parts in zip(*found))
    by_sky = np.argsort(pixels << 2 * (finest - orders), kind="stable")
    return orders[by_sky], pixels[by_sky], rows[by_sky]


def _alignment(histogram: np.ndarray, threshold: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per order, coarsest first: the rows of every cell and the order of its destination."""
    finest = int(npix2order(len(histogram)))
    cells = np.asarray(histogram, np.int64)
    if len(cells) and cells.max() > threshold:
        raise ValueError(f"single pixel row count {cells.max()} exceeds threshold {threshold}")
    # Bottom-up: each order's rows and merge test (a cell merges if it holds at most
    # threshold rows in more than one of its four children)...
    sums, merges = [cells], []
    for _ in range(finest):
        children = cells.reshape(-1, 4)
        cells = children.sum(axis=1)
        sums.append(cells)
        merges.append((cells != children.max(axis=1)) & (cells <= threshold))
    sums.reverse()
    merges.reverse()
    # ...then top-down, the coarsest merging ancestor of every cell.
    orders = np.full(len(sums[0]), finest, np.int8)
    levels = []
    for order, merge in enumerate(merges):
        orders = np.where(merge & (orders > order), order, orders).astype(np.int8)
        levels.append((sums[order], orders))
        orders = np.repeat(orders, 4)
    levels.append((sums[finest], orders))
    return levels


def pixel_histogram(
    runs: Sequence[SortedRun], output: int, highest_order: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Rows of output ``output`` of ``runs`` per pixel at ``highest_order`` (12·4^order bins),
    added to ``out`` when given (to sum runs as they come in)."""
    histogram = np.zeros(12 * 4**highest_order, np.int64) if out is None else out
    for run in runs:
        piece = run.outputs[output]
        histogram[piece.pixels] += piece.counts  # a run's pixels are distinct
    return histogram


def plan_partitions(
    runs: Sequence[SortedRun], output: int, histogram: np.ndarray, partition_rows: int
) -> list[Partition]:
    """The destination pixels of output ``output`` of ``runs``, in (order, pixel) order.

    ``histogram`` is their :func:`pixel_histogram`; its size sets the finest order.
    """
    highest_order = int(npix2order(len(histogram)))
    orders, destinations, dest_rows = destination_pixels(histogram, partition_rows)
    sources: list[list[tuple[str, str | None]]] = [[] for _ in orders]
    # Destinations are disjoint ranges of fine pixels, in sky order: their first pixels bound
    # them.
    bounds = np.r_[destinations << 2 * (highest_order - orders), np.iinfo(np.int64).max]
    for run in runs:
        piece = run.outputs[output]
        # Destination d holds the run's pixels in [bounds[d], bounds[d + 1]).
        for d in np.flatnonzero(np.diff(np.searchsorted(piece.pixels, bounds))):
            sources[d].append((run.path, piece.positions))
    parts = [
        Partition(int(order), int(pixel), int(rows), tuple(src))
        for order, pixel, rows, src in zip(orders, destinations, dest_rows, sources)
    ]
    return sorted(parts, key=lambda p: (p.order, p.pixel))


def write_partition(
    partition: Partition,
    catalog_dir: str | Path,
    write_kwargs: Mapping[str, Any],
    schema: pa.Schema | None = None,
) -> int:
    """Write one destination pixel's Parquet file; returns its rows.

    ``write_kwargs`` come from :func:`parquet_kwargs`; ``schema``, when given, supplies the
    file's schema metadata (a selection's provenance differs from the runs'). Raises
    ``ValueError`` when the runs do not hold the planned number of rows (a damaged or foreign
    run).
    """
    start, stop = partition.index_range
    pieces = []
    for run_path, positions_path in partition.sources:
        table = ipc.open_file(pa.memory_map(run_path)).read_all()
        index = table.column(SPATIAL_INDEX_COLUMN).chunk(0).to_numpy()
        a, b = np.searchsorted(index, [start, stop])
        if positions_path is None:
            pieces.append(table.slice(a, b - a))
        else:
            positions = np.load(positions_path, mmap_mode="r")
            i, j = np.searchsorted(positions, [a, b])
            pieces.append(table.take(np.asarray(positions[i:j])))
    table = pa.concat_tables(pieces)
    if len(table) != partition.rows:
        raise ValueError(
            f"HATS pixel (order {partition.order}, pixel {partition.pixel}): the runs hold "
            f"{len(table)} rows, {partition.rows} planned"
        )
    # Each slice is in (_healpix_29, star_id) order and the runs are in star_id order: a
    # stable sort of the concatenation merges them.
    index = np.concatenate([p.column(SPATIAL_INDEX_COLUMN).to_numpy() for p in pieces])
    if len(pieces) > 1 and np.any(index[1:] < index[:-1]):
        table = table.take(np.argsort(index, kind="stable"))
    path = paths.pixel_catalog_file(catalog_dir, HealpixPixel(partition.order, partition.pixel))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if schema is not None:
        table = table.replace_schema_metadata(schema.metadata)
    pq.write_table(table.combine_chunks(), str(path), **write_kwargs)
    return len(table)


def parquet_kwargs(
    schema: pa.Schema, compression: str = "zstd", compression_level: int | None = 3
) -> dict[str, Any]:
    """``pyarrow.parquet.write_table`` settings of a partition: hats' defaults (byte-stream-split
    floats, delta-coded sort keys, no dictionary) with the codec given, one row group per file
    as hats-import writes it, and page checksums."""
    kwargs: dict[str, Any] = {
        "compression": compression,
        "use_dictionary": False,
        "sorting_columns": pq.SortingColumn.from_ordering(schema, _ORDERING),
        # A CRC32 per page: verify_catalog (galmock verify) finds a damaged file.
        "write_page_checksum": True,
    }
    if compression_level is not None:
        kwargs["compression_level"] = compression_level
    kwargs = get_parquet_write_table_kwargs(schema, write_table_kwargs=kwargs)
    if compression_level is None:
        kwargs.pop("compression_level", None)
    kwargs.pop("row_group_size", None)
    return kwargs


def write_sky_maps(catalog_dir: str | Path, histogram: np.ndarray) -> None:
    """hats' ``point_map.fits`` and ``skymap.fits``: rows per pixel at the finest order."""
    point_map = paths.get_point_map_file_pointer(catalog_dir)
    file_io.write_fits_image(histogram, point_map)
    # hats.io.skymap.write_skymap would encode the same image again (0.1 s at order 10).
    shutil.copyfile(point_map, paths.get_skymap_file_pointer(catalog_dir))


def finish_catalog(
    catalog_dir: str | Path,
    name: str,
    partitions: Sequence[Partition],
    *,
    partition_rows: int,
    properties: Mapping[str, Any] | None = None,
    skymap_order: int | None = None,
) -> None:
    """hats' metadata for the partitions written: ``partition_info.csv``, the dataset's
    ``_common_metadata`` and ``_metadata``, ``hats.properties`` (with ``skymap_order`` when
    :func:`write_sky_maps` wrote the maps).

    ``properties`` become extra ``hats.properties`` keys (values JSON-encoded unless strings).
    """
    catalog_dir = Path(catalog_dir)
    info = PartitionInfo.from_healpix([HealpixPixel(p.order, p.pixel) for p in partitions])
    info.write_to_file(paths.get_partition_info_pointer(catalog_dir))
    rows = write_parquet_metadata(catalog_dir)
    expected = sum(p.rows for p in partitions)
    if rows != expected:
        raise ValueError(f"{catalog_dir}: the partitions hold {rows} rows, {expected} planned")
    extra = {k: _property(v) for k, v in (properties or {}).items()}
    table_properties = {
        **TableProperties.new_provenance_dict(catalog_dir, builder=_builder(), **extra),
        "catalog_name": name,
        "catalog_type": "object",
        "total_rows": rows,
        "ra_column": "ra",
        "dec_column": "dec",
        "healpix_column": SPATIAL_INDEX_COLUMN,
        "healpix_order": SPATIAL_INDEX_ORDER,
        "hats_cols_sort": STAR_ID,
        "hats_max_rows": partition_rows,
        "hats_order": info.get_highest_order(),
        "moc_sky_fraction": f"{info.calculate_fractional_coverage():0.5f}",
    }
    if skymap_order is not None:
        table_properties["skymap_order"] = skymap_order
    TableProperties(**table_properties).to_properties_file(catalog_dir)


def verify_catalog(catalog_dir: str | Path) -> int:
    """Check a HATS catalog galmock wrote; returns its rows.

    Every partition ``partition_info.csv`` lists exists (and no other), every page's checksum
    holds (every row is read), every row's ``_healpix_29`` lies in its partition's pixel, and
    the rows add up to ``hats.properties``' ``hats_nrows``.

    Raises:
        InputError: naming the file and what is wrong with it.
    """
    catalog_dir = Path(catalog_dir)
    try:
        properties = TableProperties.read_from_dir(catalog_dir)
        info = PartitionInfo.read_from_dir(catalog_dir)
    except Exception as err:  # hats raises several types for a missing or malformed file
        raise InputError(f"{catalog_dir}: not a readable HATS catalog: {err}") from err
    pixels = info.get_healpix_pixels()
    listed = {Path(paths.pixel_catalog_file(catalog_dir, pixel)) for pixel in pixels}
    present = set((catalog_dir / "dataset").rglob("Npix=*"))
    for path in sorted(listed - present):
        raise InputError(f"{path}: missing (partition_info.csv lists it)")
    for path in sorted(present - listed):
        raise InputError(f"{path}: a partition partition_info.csv does not list")
    rows = 0
    for pixel in pixels:
        path = Path(paths.pixel_catalog_file(catalog_dir, pixel))
        try:
            table = pq.ParquetFile(path, page_checksum_verification=True).read()  # every page
        except Exception as err:  # pyarrow: OSError for a bad checksum, others for garbage
            raise InputError(f"{path}: damaged: {err}") from err
        index = table[SPATIAL_INDEX_COLUMN].to_numpy()
        start, stop = Partition(pixel.order, pixel.pixel, 0, ()).index_range
        if len(index) and (index.min() < start or index.max() >= stop):
            raise InputError(f"{path}: rows outside HEALPix pixel {pixel}")
        rows += len(index)
    if rows != properties.total_rows:
        raise InputError(
            f"{catalog_dir}: the partitions hold {rows} rows, hats.properties says "
            f"{properties.total_rows}"
        )
    return rows


def _builder() -> str:
    return f"galmock v{__version__}"


def _property(value: Any) -> str:
    # hats.properties is a Java properties file: one line per key.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def write_hats(
    client: Any,
    runs: Sequence[SortedRun],
    output: int,
    catalog_dir: str | Path,
    name: str,
    *,
    schema: pa.Schema,
    partition_rows: int,
    highest_order: int = 10,
    compression: str = "zstd",
    compression_level: int | None = 3,
    properties: Mapping[str, Any] | None = None,
    skymap: bool = True,
    histogram: np.ndarray | None = None,
) -> Path:
    """Build the HATS catalog ``catalog_dir`` of output ``output`` of ``runs``; returns its path.

    ``client`` (a ``distributed.Client``) runs one task per partition; ``None`` runs them here.
    ``highest_order`` must be the one the runs were written with; ``histogram``, their
    :func:`pixel_histogram` when already summed (e.g. while the runs were written).
    """
    catalog_dir = Path(catalog_dir)
    if histogram is None:
        histogram = pixel_histogram(runs, output, highest_order)
    partitions = plan_partitions(runs, output, histogram, partition_rows)
    os.makedirs(catalog_dir, exist_ok=True)
    kwargs = parquet_kwargs(schema, compression, compression_level)
    # The sky maps are written here while the workers write the partitions.
    maps = ThreadPoolExecutor(1)
    pending = maps.submit(write_sky_maps, catalog_dir, histogram) if skymap else None
    try:
        # Biggest first: the last task to start is then a small one (less idle time at the end).
        by_size = sorted(partitions, key=lambda p: -p.rows)
        _map(client, write_partition, by_size, catalog_dir=str(catalog_dir), write_kwargs=kwargs,
         schema=schema)
    finally:
        maps.shutdown()
    if pending is not None:
        pending.result()
    finish_catalog(
        catalog_dir,
        name,
        partitions,
        partition_rows=partition_rows,
        properties=properties,
        skymap_order=highest_order if skymap else None,
    )
    return catalog_dir


def _map(client: Any, fn: Callable[..., Any], items: Sequence[Any], **kwargs: Any) -> None:
    """``fn`` over ``items`` on ``client`` (or here); every task has ended when it returns."""
    if client is None:
        for item in items:
            fn(item, **kwargs)
        return
    futures = client.map(fn, items, pure=False, **kwargs)
    try:
        for future in track(futures, "hats"):
            future.result()
    except BaseException:
        wait(futures)  # nothing may still write once the caller cleans up
        raise
