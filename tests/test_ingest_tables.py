"""Particle tables (Parquet, CSV, .npz, astropy formats) through the reader and ``ingest``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import yaml
from astropy.table import QTable, Table

from galmock.config import UnitsConfig, load_job
from galmock.errors import ConfigError, InputError
from galmock.ingest.tables import read_table
from galmock.particles import read_particle_store
from galmock.stages.ingest import run as ingest

FIELDS = ("x", "y", "z", "vx", "vy", "vz", "mass", "age", "feh", "ofe", "id")
IDENTITY = {f: f for f in FIELDS}
NO_UNITS = UnitsConfig(length=None, velocity=None, mass=None, age=None)


def make_columns(n: int = 200, seed: int = 3) -> dict[str, np.ndarray]:
    """Physical particles in galmock units."""
    rng = np.random.default_rng(seed)
    return {
        **{c: rng.normal(0, 6.0, n) for c in ("x", "y", "z")},
        **{c: rng.normal(0, 100.0, n) for c in ("vx", "vy", "vz")},
        "mass": 10 ** rng.uniform(4, 6, n),
        "age": rng.uniform(0.1, 13.0, n),
        "feh": rng.normal(-0.3, 0.3, n),
        "ofe": rng.normal(0.1, 0.1, n),
        "id": rng.choice(10**9, n, replace=False).astype(np.int64),
    }


def table_job(tmp_path: Path, path: Path, name: str = "job", **galaxy: Any) -> Path:
    spec = {
        "name": name,
        "galaxy": {
            "source": "table",
            "path": str(path),
            "centre": [0.0, 0.0, 0.0],
            "centre_velocity": [0.0, 0.0, 0.0],
            "align_disk": False,
            **galaxy,
        },
    }
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


def assert_fails_cleanly(tmp_path: Path, path: Path, *needles: str, **galaxy: Any) -> None:
    """Ingesting ``path`` raises InputError naming every needle and leaves no store behind."""
    run_dir = tmp_path / "run-bad"
    with pytest.raises(InputError) as info:
        ingest(load_job(table_job(tmp_path, path, "bad", **galaxy), output=run_dir))
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {info.value!s}"
    assert not (run_dir / "particles.zarr").exists()
    if run_dir.exists():
        assert not list(run_dir.glob(".particles.zarr.tmp-*"))


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float = 1e-12):
    for field, values in want.items():
        np.testing.assert_allclose(got[field], values, rtol=rtol, atol=0, err_msg=field)


# --- formats --------------------------------------------------------------------------------


def test_parquet_through_ingest(tmp_path: Path) -> None:
    cols = make_columns()
    path = tmp_path / "stars.parquet"
    pq.write_table(pa.table(cols), path)
    job = load_job(table_job(tmp_path, path), output=tmp_path / "run")
    store = read_particle_store(ingest(job))
    assert_same(store.load(), cols)
    assert store["id"].dtype == np.int64
    meta = store.attrs["source_meta"]
    assert meta["format"] == "parquet" and not meta["ids_generated"]
    assert meta["units"]["x"] == "kpc (default)"
    assert json.loads(json.dumps(read_table(path, IDENTITY, NO_UNITS).meta))


@pytest.mark.parametrize("fmt", ["csv", "npz", "ecsv", "fits", "hdf5", "votable"])
def test_formats_agree(tmp_path: Path, fmt: str) -> None:
    cols = make_columns()
    path = tmp_path / f"stars.{'xml' if fmt == 'votable' else fmt}"
    if fmt == "csv":
        pyarrow.csv.write_csv(pa.table(cols), path)
    elif fmt == "npz":
        np.savez(path, **cols)
    else:
        kwargs = {"path": "stars"} if fmt == "hdf5" else {}
        Table(cols).write(path, format=fmt, **kwargs)
    parts = read_table(path, IDENTITY, NO_UNITS)
    assert_same(parts.columns, cols)
    assert parts.labels["vx"] == "vx" and parts.path == str(path)


@pytest.mark.filterwarnings("ignore:The unit 'dex' could not be saved")
def test_column_units_from_the_file(tmp_path: Path) -> None:
    cols = make_columns()
    table = QTable(
        {
            "x": cols["x"] * 1000 * u.pc,
            "y": cols["y"] * u.kpc,
            "z": cols["z"] * 3.0856775814913673e16 * u.km,
            "vx": cols["vx"] * 1000 * u.m / u.s,
            "vy": cols["vy"] * u.km / u.s,
            "vz": cols["vz"] * (u.km / u.s).to(u.pc / u.Myr) * u.pc / u.Myr,
            "mass": cols["mass"] * u.Msun.to(u.kg) * u.kg,
            "age": cols["age"] * 1000 * u.Myr,
            "feh": cols["feh"] * u.dex,
            "ofe": cols["ofe"],
            "id": cols["id"],
        }
    )
    for fmt in ("ecsv", "fits", "parquet"):
        path = tmp_path / f"stars.{fmt}"
        table.write(path)
        parts = read_table(path, IDENTITY, NO_UNITS)
        assert_same(parts.columns, cols, rtol=1e-12)
        assert parts.meta["units"]["x"] == "pc (file)"


def test_job_units_override_and_renamed_columns(tmp_path: Path) -> None:
    cols = make_columns()
    names = {"x": "X_pc", "y": "Y_pc", "z": "Z_pc", "vx": "U", "vy": "V", "vz": "W"}
    names.update({"mass": "M", "age": "tau", "id": "source_id"})
    raw = {names.get(f, f): v for f, v in cols.items()}
    for f in ("x", "y", "z"):
        raw[names[f]] = cols[f] * 1000
    raw["tau"] = cols["age"] * 1000
    path = tmp_path / "stars.csv"
    pyarrow.csv.write_csv(pa.table(raw), path)
    units = UnitsConfig(length="pc", velocity=None, mass=None, age="Myr")
    parts = read_table(path, {**IDENTITY, **names}, units)
    assert_same(parts.columns, cols)
    assert parts.labels["x"] == "X_pc" and parts.meta["units"]["x"] == "pc (galaxy.units.length)"
    # Through a job too: the YAML spelling of the same settings.
    job = table_job(
        tmp_path, path, columns=names, units={"length": "pc", "age": "Myr"}, select_radius_kpc=9
    )
    store = read_particle_store(ingest(load_job(job, output=tmp_path / "run")))
    keep = cols["x"] ** 2 + cols["y"] ** 2 + cols["z"] ** 2 < 81
    np.testing.assert_allclose(store["x"][:], cols["x"][keep], rtol=1e-12)


def test_optional_columns_absent_and_ids_generated(tmp_path: Path) -> None:
    cols = make_columns(50)
    path = tmp_path / "stars.npz"
    np.savez(path, **{f: cols[f] for f in ("x", "y", "z", "vx", "vy", "vz", "mass")})
    store = read_particle_store(
        ingest(load_job(table_job(tmp_path, path), output=tmp_path / "run"))
    )
    assert set(store.fields) == {"x", "y", "z", "vx", "vy", "vz", "mass", "id"}
    np.testing.assert_array_equal(store["id"][:], np.arange(50))
    assert store.attrs["source_meta"]["ids_generated"]


def test_optional_columns_can_be_left_unmapped(tmp_path: Path) -> None:
    cols = make_columns(50)
    path = tmp_path / "stars.npz"
    np.savez(path, **cols)
    job = table_job(tmp_path, path, columns={"age": None, "id": None})
    store = read_particle_store(ingest(load_job(job, output=tmp_path / "run")))
    assert "age" not in store.fields and "feh" in store.fields
    np.testing.assert_array_equal(store["id"][:], np.arange(50))
    with pytest.raises(ConfigError, match=r"required field\(s\) mass cannot be unmapped"):
        load_job(table_job(tmp_path, path, name="bad", columns={"mass": None}))


def test_integral_float_ids_are_accepted(tmp_path: Path) -> None:
    cols = make_columns(20)
    cols["id"] = cols["id"].astype(np.float64)
    path = tmp_path / "stars.npz"
    np.savez(path, **cols)
    parts = read_table(path, IDENTITY, NO_UNITS)
    assert parts.columns["id"].dtype == np.int64


def test_parquet_and_csv_ingest_to_the_same_store(tmp_path: Path) -> None:
    cols = make_columns()
    pq.write_table(pa.table(cols), tmp_path / "a.parquet")
    pyarrow.csv.write_csv(pa.table(cols), tmp_path / "b.csv")
    stores = [
        read_particle_store(
            ingest(load_job(table_job(tmp_path, tmp_path / f, f[0]), output=tmp_path / f[0]))
        ).load()
        for f in ("a.parquet", "b.csv")
    ]
    assert_same(stores[0], stores[1])


# --- bad input ------------------------------------------------------------------------------


def _parquet(tmp_path: Path, cols: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "stars.parquet"
    pq.write_table(pa.table(cols), path)
    return path


def test_missing_required_column(tmp_path: Path) -> None:
    cols = make_columns()
    del cols["vy"]
    path = _parquet(tmp_path, cols)
    assert_fails_cleanly(tmp_path, path, str(path), "'vy'", "missing")
    # A mapped name that is not there is named as the user spelled it.
    assert_fails_cleanly(tmp_path, path, str(path), "'MASS'", columns={"mass": "MASS"})


@pytest.mark.parametrize(
    ("field", "row", "value", "needles"),
    [
        ("x", 4, np.nan, ["field x", "row 4", "nan"]),
        ("vz", 9, np.inf, ["field vz", "row 9", "inf"]),
        ("age", 2, -np.inf, ["field age", "-inf"]),
        ("mass", 11, 0.0, ["field mass", "non-positive", "row 11", "0.0"]),
        ("mass", 12, -5.0, ["field mass", "non-positive", "-5.0"]),
    ],
)
def test_bad_values(tmp_path: Path, field: str, row: int, value: float, needles: list) -> None:
    cols = make_columns()
    cols[field][row] = value
    path = _parquet(tmp_path, cols)
    assert_fails_cleanly(tmp_path, path, str(path), *needles)


def test_bad_values_name_the_users_column(tmp_path: Path) -> None:
    cols = make_columns()
    cols["mass"][3] = -1.0
    cols["M_star"] = cols.pop("mass")
    path = _parquet(tmp_path, cols)
    assert_fails_cleanly(tmp_path, path, "mass (M_star)", "-1.0", columns={"mass": "M_star"})


def test_duplicate_ids(tmp_path: Path) -> None:
    cols = make_columns()
    cols["id"][7] = cols["id"][1]
    path = _parquet(tmp_path, cols)
    assert_fails_cleanly(tmp_path, path, str(path), "field id", "duplicated", str(cols["id"][1]))


def test_mismatched_lengths(tmp_path: Path) -> None:
    cols = make_columns()
    cols["vx"] = cols["vx"][:-1]
    path = tmp_path / "stars.npz"
    np.savez(path, **cols)
    assert_fails_cleanly(tmp_path, path, str(path), "different lengths", "vx has 199", "x has 200")


def test_empty_selection(tmp_path: Path) -> None:
    path = _parquet(tmp_path, make_columns())
    assert_fails_cleanly(
        tmp_path, path, str(path), "select_radius_kpc = 0.001", "empty", select_radius_kpc=1e-3
    )


def test_empty_table(tmp_path: Path) -> None:
    path = _parquet(tmp_path, {k: v[:0] for k, v in make_columns().items()})
    assert_fails_cleanly(tmp_path, path, str(path), "no particles")


@pytest.mark.parametrize(
    ("column", "unit", "kind"),
    [("vx", u.kpc, "velocity"), ("x", u.km / u.s, "length"), ("mass", u.Gyr, "mass")],
)
def test_column_unit_of_the_wrong_kind(tmp_path: Path, column: str, unit: Any, kind: str) -> None:
    table = Table(make_columns())
    table[column].unit = unit
    path = tmp_path / "stars.ecsv"
    table.write(path)
    assert_fails_cleanly(tmp_path, path, str(path), f"column {column!r}", str(unit), kind)


def test_unrecognised_column_unit(tmp_path: Path) -> None:
    path = tmp_path / "stars.ecsv"
    Table(make_columns()).write(path)
    text = path.read_text().replace(
        "name: x, datatype: float64", "name: x, unit: furlong, datatype: float64"
    )
    path.write_text(text)
    assert_fails_cleanly(tmp_path, path, str(path), "column 'x'", "furlong")


def test_dex_column_with_a_physical_unit(tmp_path: Path) -> None:
    table = Table(make_columns())
    table["feh"].unit = u.kpc
    path = tmp_path / "stars.fits"
    table.write(path)
    with pytest.raises(InputError, match=r"column 'feh' \(feh\) has unit kpc, not dex"):
        read_table(path, IDENTITY, NO_UNITS)


def test_non_numeric_and_non_integer_columns(tmp_path: Path) -> None:
    cols: dict[str, Any] = make_columns(10)
    cols["age"] = np.array(["old"] * 10)
    path = tmp_path / "stars.npz"
    np.savez(path, **cols)
    with pytest.raises(InputError, match=rf"{path}: column 'age' \(age\) has dtype <U3"):
        read_table(path, IDENTITY, NO_UNITS)
    cols = make_columns(10)
    cols["id"] = cols["id"] + 0.5
    np.savez(path, **cols)
    with pytest.raises(InputError, match=r"column 'id' \(id\) has non-integer value"):
        read_table(path, IDENTITY, NO_UNITS)
    cols = make_columns(10)
    cols["id"] = cols["id"].astype(np.uint64)
    cols["id"][3] = 2**63 + 1
    np.savez(path, **cols)
    with pytest.raises(InputError, match=str(2**63 + 1)):
        read_table(path, IDENTITY, NO_UNITS)


@pytest.mark.parametrize("name", ["stars.parquet", "stars.csv", "stars.npz", "stars.fits"])
def test_corrupt_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\xff" + np.random.default_rng(1).bytes(2000))
    assert_fails_cleanly(tmp_path, path, str(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.parquet"
    assert_fails_cleanly(tmp_path, path, str(path), "not found")
