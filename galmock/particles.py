"""The normalised particle set and its on-disk store (``<run>/particles.zarr``).

Every source (snapshot, table, demo) becomes the same columns in the same units: positions in
galactocentric kpc (float64, they feed astrometry), velocities in km/s, masses in Msun, ages in
Gyr, [Fe/H] and [O/Fe] in dex, and an int64 particle id.

Example:
    >>> raw_columns = {f: np.ones(3, np.float32) for f in ("x", "y", "z", "vx", "vy", "vz")}
    >>> raw_columns.update(mass=[1e4, 2e4, 3e4], id=np.array([7, 8, 9]))
    >>> cols = check_particles(raw_columns, source="snap_127.hdf5")
    >>> cols["x"].dtype, cols["mass"].tolist()
    (dtype('float64'), [10000.0, 20000.0, 30000.0])
    >>> path = write_particle_store(tmp_path / "particles.zarr", cols, attrs={})
    >>> store = read_particle_store(path)
    >>> len(store), store.fields
    (3, ['x', 'y', 'z', 'vx', 'vy', 'vz', 'mass', 'id'])
    >>> store.positions().shape
    (3, 3)
    >>> check_particles({**raw_columns, "id": np.array([7, 7, 9])}, source="snap_127.hdf5")
    Traceback (most recent call last):
    ...
    galmock.errors.InputError: snap_127.hdf5: field id has 1 duplicated value(s) (e.g. 7)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from galmock.atomic import atomic_directory
from galmock.chunks import create_column, read_column, require_chunks
from galmock.errors import InputError

REQUIRED_FIELDS = ("x", "y", "z", "vx", "vy", "vz", "mass", "id")
OPTIONAL_FIELDS = ("age", "feh", "ofe", "component")
UNITS = {
    "x": "kpc",
    "y": "kpc",
    "z": "kpc",
    "vx": "km / s",
    "vy": "km / s",
    "vz": "km / s",
    "mass": "solMass",
    "age": "Gyr",
    "feh": "dex",
    "ofe": "dex",
    "id": "",
    "component": "",
}
DTYPES = {name: np.dtype("float64") for name in UNITS}
DTYPES["id"] = np.dtype("int64")
DTYPES["component"] = np.dtype("int8")
DESCRIPTIONS = {
    "x": "galactocentric x (Sun at x < 0)",
    "y": "galactocentric y (direction of disk rotation at the Sun)",
    "z": "galactocentric z (towards the north Galactic pole)",
    "vx": "galactocentric velocity along x",
    "vy": "galactocentric velocity along y",
    "vz": "galactocentric velocity along z",
    "mass": "particle mass at the snapshot time",
    "age": "stellar age at the snapshot time",
    "feh": "[Fe/H] relative to solar (Asplund et al. 2009)",
    "ofe": "[O/Fe] (or [alpha/Fe]) relative to solar",
    "id": "particle id, unique within the store",
    "component": "demo galaxy component index (see attribute 'components')",
}


@dataclass
class SourceParticles:
    """What a reader returns: columns in galmock units, their source labels and provenance.

    ``labels`` maps each field to where it came from (``"PartType4/Masses"``, a table column
    name) so validation errors can point at the user's data; ``path`` names the file.
    """

    columns: dict[str, np.ndarray]
    path: str
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def check_particles(
    columns: Mapping[str, np.ndarray],
    source: str,
    labels: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Validate and cast particle columns; raise :class:`InputError` naming source and field.

    Checks: required fields present, equal lengths, at least one particle, finite values,
    positive masses, unique ids. Returns new arrays in galmock dtypes.
    """
    labels = dict(labels or {})

    def name(f: str) -> str:
        return f"{f} ({labels[f]})" if f in labels and labels[f] != f else f

    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise InputError(f"{source}: required field(s) missing: {', '.join(map(name, missing))}")
    unknown = [f for f in columns if f not in UNITS]
    if unknown:
        raise InputError(f"{source}: unknown particle field(s): {', '.join(unknown)}")
    lengths = {f: len(np.asarray(v)) for f, v in columns.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name(f)} has {n}" for f, n in lengths.items())
        raise InputError(f"{source}: fields have different lengths: {detail}")
    n = lengths["x"]
    if n == 0:
        raise InputError(f"{source}: no particles selected (empty selection)")
    out: dict[str, np.ndarray] = {}
    for f, values in columns.items():
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise InputError(f"{source}: field {name(f)} must be 1-D, has shape {arr.shape}")
        if f in ("id", "component"):
            if not np.issubdtype(arr.dtype, np.integer):
                raise InputError(f"{source}: field {name(f)} must be integer, is {arr.dtype}")
        else:
            try:
                arr = arr.astype(np.float64, copy=False)
            except (TypeError, ValueError) as err:
                raise InputError(f"{source}: field {name(f)} is not numeric ({arr.dtype})") from err
            bad = ~np.isfinite(arr)
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(
                    f"{source}: field {name(f)} has {int(bad.sum())} non-finite value(s) "
                    f"(first at row {i}: {arr[i]})"
                )
        out[f] = arr.astype(DTYPES[f], copy=False)
    bad = out["mass"] <= 0
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"{source}: field {name('mass')} has {int(bad.sum())} non-positive value(s) "
            f"(first at row {i}: {out['mass'][i]})"
        )
    ids = out["id"]
    if len(np.unique(ids)) != n:
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        raise InputError(
            f"{source}: field {name('id')} has {len(dup)} duplicated value(s) (e.g. {dup[0]})"
        )
    return out


def write_particle_store(
    path: str | Path,
    columns: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    chunk_rows: int = 1_000_000,
) -> Path:
    """Write checked columns as a Zarr v3 group, atomically (temporary name, then rename)."""
    path = Path(path)
    n = len(columns["x"])
    with atomic_directory(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({**dict(attrs), "n_particles": n, "fields": list(columns)})
        for f, values in columns.items():
            arr = create_column(group, f, n, DTYPES[f], chunk_rows)
            arr[:] = values
            arr.attrs.update({"unit": UNITS[f], "description": DESCRIPTIONS[f]})
    return path


@dataclass
class ParticleStore:
    """A particle store opened for reading: lazy Zarr arrays plus the group attributes."""

    path: Path
    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def fields(self) -> list[str]:
        return list(self.group.attrs["fields"])

    def __len__(self) -> int:
        return int(self.group.attrs["n_particles"])

    def __getitem__(self, name: str) -> zarr.Array:
        return self.group[name]  # type: ignore[return-value]

    def load(self, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Read whole columns into memory (all fields by default)."""
        return {f: read_column(self.group, self.path, f) for f in (fields or self.fields)}

    def positions(self) -> np.ndarray:
        """(N, 3) float64 kpc."""
        return np.column_stack([read_column(self.group, self.path, f) for f in ("x", "y", "z")])

    def velocities(self) -> np.ndarray:
        """(N, 3) float64 km/s."""
        return np.column_stack([read_column(self.group, self.path, f)
                                for f in ("vx", "vy", "vz")])  # fmt: skip


def read_particle_store(path: str | Path) -> ParticleStore:
    """Open ``particles.zarr``; a missing or foreign directory is a clear error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: particle store not found (run `galmock ingest` first)")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:  # zarr raises several types for a non-store directory
        raise InputError(f"{path}: not a Zarr particle store: {err}") from err
    if "fields" not in group.attrs or "n_particles" not in group.attrs:
        raise InputError(f"{path}: not a galmock particle store (attributes missing)")
    for name in group.attrs["fields"]:  # type: ignore[union-attr]
        arr = group.get(name)
        if arr is None:
            raise InputError(f"{path}: field {name!r} is listed but has no array")
        require_chunks(path / name, int(arr.shape[0]), int(arr.chunks[0]),  # type: ignore[union-attr]
                       "the store is damaged; run `galmock ingest` again")
    return ParticleStore(path=path, group=group)
