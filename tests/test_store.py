"""The Zarr star catalog: write, open lazily, and refuse broken catalogs with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from galmock.errors import InputError
from galmock.particles import DTYPES, read_particle_store, write_particle_store
from galmock.store import (
    STAR_COLUMNS,
    STARS_FORMAT,
    create_catalog,
    mark_complete,
    open_catalog,
    write_rows,
    write_star_catalog,
)


def star_columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.normal(size=n) * 5).astype(spec.dtype) for name, spec in STAR_COLUMNS.items()
    }


def test_roundtrip_is_lazy_chunked_and_documented(tmp_path):
    cols = star_columns(1000)
    path = write_star_catalog(tmp_path / "stars.zarr", cols, chunk_rows=300, attrs={"seed": 7})
    cat = open_catalog(path)
    assert len(cat) == 1000 and cat.chunk_rows == 300 and cat.format == STARS_FORMAT
    assert cat.attrs["complete"] is True and cat.attrs["seed"] == 7
    assert list(cat.chunks()) == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    assert cat.spec("vx").unit == "km / s" and cat.spec("x").dtype == np.float64
    lazy = cat.to_dask(["x", "mass"])
    assert lazy["x"].chunks == ((300, 300, 300, 100),)
    np.testing.assert_array_equal(lazy["mass"].compute(), cols["mass"])
    np.testing.assert_array_equal(cat.read(250, 350, ["region"])["region"], cols["region"][250:350])
    # No temporary directory is left next to the catalog.
    assert [p.name for p in tmp_path.iterdir()] == ["stars.zarr"]


def test_parallel_style_writes_need_whole_chunks(tmp_path):
    path = create_catalog(tmp_path / "s.zarr", STAR_COLUMNS, n_rows=10, chunk_rows=4)
    cols = star_columns(10)
    with pytest.raises(ValueError, match="not whole chunks"):
        write_rows(path, 2, {"x": cols["x"][2:6]})
    for start in (8, 0, 4):  # any order, as independent processes would
        write_rows(path, start, {k: v[start : start + 4] for k, v in cols.items()})
    with pytest.raises(InputError, match="still being written"):
        open_catalog(path)
    mark_complete(path)
    np.testing.assert_array_equal(open_catalog(path).read()["feh"], cols["feh"])


def test_refuses_incomplete_missing_short_and_mistyped(tmp_path):
    path = write_star_catalog(tmp_path / "stars.zarr", star_columns(100), chunk_rows=40)
    group = zarr.open_group(path, mode="r+")

    group.attrs["complete"] = False
    with pytest.raises(InputError, match=r"stars.zarr: attribute complete = False: .*still being"):
        open_catalog(path)
    group.attrs["complete"] = True

    group.attrs["n_rows"] = 101
    message = r"column 'x' has shape \(100,\), but attribute n_rows = 101"
    with pytest.raises(InputError, match=message):
        open_catalog(path)
    group.attrs["n_rows"] = 100

    del group["mass"]
    with pytest.raises(InputError, match=r"missing column.* mass"):
        open_catalog(path)

    group.create_array("mass", shape=(100,), dtype="float64", chunks=(40,))
    with pytest.raises(InputError, match="column 'mass' has dtype float64, expected float32"):
        open_catalog(path)


def test_refuses_what_is_not_a_catalog(tmp_path):
    with pytest.raises(InputError, match=r"stars\.zarr: catalog not found .*galmock upsample"):
        open_catalog(tmp_path / "stars.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["format"] = "something/2"
    with pytest.raises(InputError, match="attribute format = 'something/2'"):
        open_catalog(tmp_path / "other.zarr")


def test_a_damaged_chunk_is_an_error_naming_it(tmp_path):
    """Missing, truncated or altered chunks are refused, never read as zeros or garbage: every
    chunk is stored (even all zeros) and carries a CRC32C that Zarr checks on read."""
    cols = {c: np.zeros(10, s.dtype) for c, s in STAR_COLUMNS.items()}  # all-zero chunks too
    path = write_star_catalog(tmp_path / "stars.zarr", cols, chunk_rows=4)
    assert sorted((path / "mass" / "c").iterdir()) == [path / "mass" / "c" / k for k in "012"]
    assert open_catalog(path).read()["mass"].tolist() == [0.0] * 10
    truncated = path / "feh" / "c" / "1"
    truncated.write_bytes(truncated.read_bytes()[:-3])
    with pytest.raises(InputError, match=r"stars\.zarr/feh: a chunk in rows 0:10 .* is damaged"):
        open_catalog(path).read(columns=["feh"])
    (path / "age" / "c" / "0").unlink()
    with pytest.raises(InputError, match=r"stars\.zarr/age: 1 of 3 chunk\(s\) missing "
                                         r"\(chunk 0\): the catalog is damaged"):
        open_catalog(path)


def test_a_damaged_particle_store_is_an_error_naming_it(tmp_path):
    """particles.zarr carries the same per-chunk CRC32C and stores every chunk."""
    n = 10
    columns = {f: np.zeros(n, dt) for f, dt in DTYPES.items()}
    columns["id"] = np.arange(n, dtype=DTYPES["id"])
    columns["mass"] = np.ones(n)
    path = write_particle_store(tmp_path / "particles.zarr", columns, {}, chunk_rows=4)
    assert read_particle_store(path).load(["vx"])["vx"].tolist() == [0.0] * n  # zeros stored
    chunk = path / "vx" / "c" / "2"
    flipped = bytearray(chunk.read_bytes())
    flipped[0] ^= 0x10
    chunk.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"particles\.zarr/vx: a chunk in rows 0:10 .* damaged"):
        read_particle_store(path).velocities()
    (path / "age" / "c" / "1").unlink()
    with pytest.raises(InputError, match=r"particles\.zarr/age: 1 of 3 chunk\(s\) missing"):
        read_particle_store(path)
