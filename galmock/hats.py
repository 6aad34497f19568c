"""HATS output: a galmock Zarr catalog → HEALPix-partitioned Parquet, built by hats-import.

hats-import does the layout (``hats.properties``, ``partition_info.csv``,
``dataset/Norder=k/Dir=d/Npix=n.parquet``, ``_common_metadata``, ``_metadata``, the
``_healpix_29`` column, adaptive partition orders under ``pixel_threshold``) and the map /
split / reduce over the Dask client it is given. galmock adds only an ``InputReader`` that
reads the Zarr catalog chunk by chunk, optionally keeping the stars a selection picks:

- every row gets ``star_id``, its row number in ``stars.zarr`` (= in ``catalog.zarr``);
- rows are sorted by ``(_healpix_29, star_id)``, so the partitions' content does not depend on
  the number of workers or the order tasks finish in;
- each column carries ``unit`` and ``description`` in its Arrow field metadata, and the schema
  carries the provenance under the key ``galmock`` (JSON), next to ``hats.properties`` keys;
- no column is dictionary-encoded (for floats it makes files bigger and writes ~3× slower);
  floats get hats' byte-stream-split encoding, the codec is ``compression`` (zstd 3).

Example:
    >>> from galmock.selection import load_catalog_spec
    >>> from galmock.store import STAR_COLUMNS, write_star_catalog
    >>> cols = {c: np.zeros(6, s.dtype) for c, s in STAR_COLUMNS.items()}
    >>> cols.update(ra=np.array([167.0, 10.0, 170.0, 167.5, 300.0, 160.0]),
    ...             dec=np.array([-4.0, 0.0, -5.0, -3.0, 20.0, 0.0]),
    ...             distance=np.array([1.0, 1.0, 2.0, 9.0, 1.0, 3.0]))
    >>> zarr_path = write_star_catalog(tmp_path / "catalog.zarr", cols, chunk_rows=4)
    >>> inputs = chunk_inputs(zarr_path)  # one hats-import input per chunk
    >>> [i.rpartition("#")[2] for i in inputs]
    ['rows=0:4', 'rows=4:6']
    >>> window = load_catalog_spec("galaxyflow-window").selection
    >>> reader = ZarrCatalogReader(("star_id", "ra", "dec"), window)
    >>> [t.column("star_id").to_pylist() for i in inputs for t in reader.read(i)]
    [[0, 2], [5]]
    >>> from distributed import Client
    >>> with Client(processes=False) as client:  # a Dask cluster, ~3 s  # doctest: +SKIP
    ...     path = write_hats(client, zarr_path, tmp_path / "build", "demo",
    ...                       columns=("star_id", "ra", "dec"), partition_rows=1_000_000)
    >>> sorted(p.name for p in path.iterdir() if p.is_file())  # doctest: +SKIP
    ['hats.properties', 'partition_info.csv', 'point_map.fits', 'properties', 'skymap.fits']
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from hats_import.catalog.arguments import ImportArguments
from hats_import.catalog.file_readers import InputReader
from hats_import.pipeline import pipeline_with_client

from galmock.selection import SelectionSpec, selection_mask
from galmock.store import open_catalog

__all__ = ["STAR_ID", "ZarrCatalogReader", "chunk_inputs", "write_hats"]

#: Row number in stars.zarr: the key that links every output row back to its star.
STAR_ID = "star_id"
_STAR_ID_DESCRIPTION = "row number of the star in stars.zarr and catalog.zarr"
_INPUT_SEPARATOR = "#rows="


def chunk_inputs(zarr_path: str | Path) -> list[str]:
    """One hats-import "input file" per Zarr chunk: ``<path>#rows=<start>:<stop>``."""
    catalog = open_catalog(zarr_path)
    return [f"{catalog.path}{_INPUT_SEPARATOR}{a}:{b}" for a, b in catalog.chunks()]


class ZarrCatalogReader(InputReader):
    """hats-import reader of one chunk of a galmock Zarr catalog per input "file".

    ``columns`` are the output columns in order (``star_id`` is made from row numbers);
    ``selection`` keeps only the rows it picks; ``metadata`` goes into the schema metadata.
    """

    def __init__(
        self,
        columns: Sequence[str],
        selection: SelectionSpec | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.columns = tuple(columns)
        self.selection = selection
        self.metadata = dict(metadata or {})

    def read(
        self, input_file: Any, read_columns: Sequence[str] | None = None
    ) -> Iterator[pa.Table]:
        path, _, rows = str(input_file).partition(_INPUT_SEPARATOR)
        start, stop = (int(v) for v in rows.split(":"))
        catalog = open_catalog(path)
        wanted = list(read_columns) if read_columns else list(self.columns)
        stored = [c for c in wanted if c != STAR_ID]
        extra = [c for c in (self.selection.columns if self.selection else ()) if c not in stored]
        data = catalog.read(start, stop, stored + extra)
        ids = np.arange(start, stop, dtype=np.int64)
        if self.selection is not None:
            keep = selection_mask(self.selection, data)
            data = {c: v[keep] for c, v in data.items()}
            ids = ids[keep]
        fields, arrays = [], []
        for name in wanted:
            if name == STAR_ID:
                fields.append(_field(STAR_ID, pa.int64(), "", _STAR_ID_DESCRIPTION))
                arrays.append(pa.array(ids))
            else:
                spec = catalog.spec(name)
                fields.append(
                    _field(name, pa.from_numpy_dtype(spec.dtype), spec.unit, spec.description)
                )
                arrays.append(pa.array(data[name]))
        yield pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=self.metadata))


def _field(name: str, dtype: pa.DataType, unit: str, description: str) -> pa.Field:
    return pa.field(
        name, dtype, nullable=False, metadata={"unit": unit, "description": description}
    )


def write_hats(
    client: Any,
    zarr_path: str | Path,
    build_dir: str | Path,
    name: str,
    *,
    columns: Sequence[str],
    partition_rows: int,
    highest_order: int = 10,
    selection: SelectionSpec | None = None,
    expected_rows: int | None = None,
    compression: str = "zstd",
    compression_level: int | None = 3,
    properties: Mapping[str, Any] | None = None,
    schema_metadata: Mapping[str, Any] | None = None,
    skymap: bool = True,
) -> Path:
    """Build the HATS catalog ``<build_dir>/<name>`` from the Zarr catalog; returns its path.

    ``properties`` become extra ``hats.properties`` keys (values JSON-encoded unless strings);
    ``schema_metadata`` is stored as JSON under the Parquet schema key ``galmock``.
    """
    build_dir = Path(build_dir)
    write_kwargs: dict[str, Any] = {"use_dictionary": False, "compression": compression}
    if compression == "zstd" and compression_level is not None:
        write_kwargs["compression_level"] = compression_level
    metadata = {"galmock": json.dumps(dict(schema_metadata or {}), sort_keys=True)}
    args = ImportArguments(
        output_path=build_dir,
        output_artifact_name=name,
        input_file_list=chunk_inputs(zarr_path),
        file_reader=ZarrCatalogReader(columns, selection, metadata),
        ra_column="ra",
        dec_column="dec",
        sort_columns=STAR_ID,
        pixel_threshold=partition_rows,
        highest_healpix_order=highest_order,
        expected_total_rows=expected_rows or 0,
        write_table_kwargs=write_kwargs,
        addl_hats_properties={k: _property(v) for k, v in (properties or {}).items()},
        should_write_skymap=skymap,
        tmp_dir=build_dir / "intermediate",
        resume=False,
        progress_bar=True,
        simple_progress_bar=True,
    )
    pipeline_with_client(args, client)
    return build_dir / name


def _property(value: Any) -> str:
    # hats.properties is a Java properties file: one line per key.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
