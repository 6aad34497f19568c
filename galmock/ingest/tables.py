"""Read a particle table (Parquet, CSV, ``.npz``, or any astropy table format) into galmock units.

``galaxy.columns`` maps each galmock field to a column name. Units come from the job
(``galaxy.units``), else from the column's own unit (ECSV, FITS, VOTable, astropy-written
Parquet and HDF5), else kpc, km/s, Msun and Gyr.

Example:
    >>> import pyarrow as pa, pyarrow.parquet as pq
    >>> data = {c: [1.0, 2.0] for c in ("X", "Y", "Z", "VX", "VY", "VZ")} | {"M": [1e4, 2e4]}
    >>> pq.write_table(pa.table(data), tmp_path / "stars.parquet")
    >>> job = load_job("jobs/demo.yaml", overrides=["galaxy.units.length=pc"])
    >>> cols = {"x": "X", "y": "Y", "z": "Z", "vx": "VX", "vy": "VY", "vz": "VZ", "mass": "M"}
    >>> parts = read_table(Path(tmp_path / "stars.parquet"), cols, job.galaxy.units)
    >>> parts.columns["x"], parts.meta["units"]["x"], parts.meta["units"]["mass"]
    (array([0.001, 0.002]), 'pc (galaxy.units.length)', 'solMass (default)')
    >>> parts.columns["id"], parts.labels["id"]  # no id column mapped
    (array([0, 1]), 'generated 0..N-1')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pyarrow.csv
from astropy.table import Table

from galmock.config import UnitsConfig
from galmock.errors import InputError
from galmock.particles import OPTIONAL_FIELDS, REQUIRED_FIELDS, SourceParticles

log = logging.getLogger(__name__)

# The physical kind of each field: its galmock unit and the galaxy.units key that overrides it.
FIELD_UNITS: dict[str, tuple[u.UnitBase, str]] = {
    "x": (u.kpc, "length"),
    "y": (u.kpc, "length"),
    "z": (u.kpc, "length"),
    "vx": (u.km / u.s, "velocity"),
    "vy": (u.km / u.s, "velocity"),
    "vz": (u.km / u.s, "velocity"),
    "mass": (u.Msun, "mass"),
    "age": (u.Gyr, "age"),
}
DEX_FIELDS = ("feh", "ofe")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2")
PARQUET_SUFFIXES = (".parquet", ".pq")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*CSV_SUFFIXES, *PARQUET_SUFFIXES, ".npz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def load_columns(path: Path) -> tuple[dict[str, tuple[np.ndarray, Any]], str]:
    """All columns of a table file as ``name -> (values, astropy unit or None)``, and its format."""
    suffix = _suffix(path)
    try:
        if suffix in CSV_SUFFIXES:
            table = pyarrow.csv.read_csv(path)
            cols = {n: (table[n].to_numpy(), None) for n in table.column_names}
            return cols, "csv"
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {n: (data[n], None) for n in data.files}, "npz"
        fmt = "parquet" if suffix in PARQUET_SUFFIXES else None
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as err:  # each reader raises its own types for a corrupt or foreign file
        # First line only: astropy appends its whole format registry to some errors.
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise InputError(
            f"{path}: cannot read as a table: {type(err).__name__}: {reason}"
        ) from None
    cols = {}
    for name in table.colnames:
        col = table[name]
        values = np.ma.getdata(col)
        if np.ma.is_masked(col):
            # Masked (missing) values become NaN so validation reports them as non-finite.
            values = np.ma.filled(col.astype(np.float64), np.nan)
        cols[name] = (np.asarray(values), col.unit)
    return cols, fmt or (suffix.lstrip(".") or "astropy")


def _factor(
    path: Path, field: str, column: str, file_unit: Any, units: UnitsConfig
) -> tuple[float, str]:
    """Multiplier to the galmock unit of ``field`` and a note on where the unit came from."""
    if field in DEX_FIELDS:
        if file_unit is None or file_unit == u.dimensionless_unscaled or file_unit == u.dex:
            return 1.0, "dex"
        raise InputError(f"{path}: column {column!r} ({field}) has unit {file_unit!s}, not dex")
    target, kind = FIELD_UNITS[field]
    override = getattr(units, kind)
    if override is not None:
        if file_unit is not None and file_unit != u.Unit(override):
            log.warning(
                "%s: column %r declares unit %s; using galaxy.units.%s = %s instead",
                path,
                column,
                file_unit,
                kind,
                override,
            )
        return float(u.Unit(override).to(target)), f"{override} (galaxy.units.{kind})"
    if file_unit is None:
        return 1.0, f"{target} (default)"
    try:
        return float(u.Unit(file_unit).to(target)), f"{file_unit} (file)"
    except (u.UnitsError, ValueError, TypeError):
        raise InputError(
            f"{path}: column {column!r} ({field}) has unit {file_unit!s}, which is not a "
            f"{kind} unit (expected something convertible to {target})"
        ) from None


def _ids(path: Path, column: str, values: np.ndarray) -> np.ndarray:
    if np.issubdtype(values.dtype, np.unsignedinteger) and len(values) and values.max() >= 2**63:
        row = int(np.argmax(values >= 2**63))
        raise InputError(
            f"{path}: column {column!r} (id) has value {values[row]} at row {row}, "
            f"which does not fit in int64"
        )
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        # CSV/npz writers often store integer ids as floats; accept them only when exact.
        exact = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**53)
        if exact.all():
            return values.astype(np.int64)
        row = int(np.argmin(exact))
        raise InputError(
            f"{path}: column {column!r} (id) has non-integer value {values[row]} at row {row}"
        )
    raise InputError(f"{path}: column {column!r} (id) has dtype {values.dtype}, not integer")


def read_table(
    path: Path, columns: Mapping[str, str | None], units: UnitsConfig
) -> SourceParticles:
    """Read the mapped columns of a table file and convert them to galmock units.

    A field mapped to ``None`` is not read (ids are then generated).
    """
    path = Path(path)
    columns = {f: name for f, name in columns.items() if name is not None}
    if not path.is_file():
        raise InputError(f"{path}: table file not found")
    table, fmt = load_columns(path)
    fields = [f for f in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS) if f in columns]
    missing = [
        f"{columns.get(f, f)!r} (for {f})"
        for f in REQUIRED_FIELDS
        if f != "id" and columns.get(f, f) not in table
    ]
    if missing:
        have = ", ".join(map(repr, list(table)[:20])) + (", ..." if len(table) > 20 else "")
        raise InputError(
            f"{path}: required column(s) missing: {', '.join(missing)}; the table has "
            f"{have or 'no columns'} (map them with galaxy.columns)"
        )
    out: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    used_units: dict[str, str] = {}
    for f in fields:
        name = columns[f]
        if name not in table:
            continue  # an optional field the table does not have
        values, file_unit = table[name]
        labels[f] = name
        if f == "id":
            out[f] = _ids(path, name, values)
            continue
        if not np.issubdtype(values.dtype, np.number) or values.dtype.kind == "c":
            raise InputError(f"{path}: column {name!r} ({f}) has dtype {values.dtype}, not numeric")
        factor, note = _factor(path, f, name, file_unit, units)
        out[f] = values.astype(np.float64) * factor if factor != 1.0 else values
        used_units[f] = note
    ids_generated = "id" not in out
    if ids_generated:
        out["id"] = np.arange(len(out["x"]), dtype=np.int64)
        labels["id"] = "generated 0..N-1"
    meta = {
        "format": fmt,
        "columns": labels,
        "units": used_units,
        "ids_generated": ids_generated,
        "n_rows": len(out["x"]),
    }
    return SourceParticles(columns=out, path=str(path), labels=labels, meta=meta)
