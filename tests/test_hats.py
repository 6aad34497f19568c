"""The HATS writer (galmock.hats): hats' own partitioning, merge order, metadata, damage."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import lsdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from hats.io.validation import is_valid_catalog
from hats.pixel_math.partition_stats import generate_alignment

from galmock.errors import InputError
from galmock.hats import (
    catalog_schema,
    destination_pixels,
    partition_orders,
    pixel_histogram,
    plan_partitions,
    verify_catalog,
    write_hats,
    write_partition,
    write_run,
)

SCHEMA = catalog_schema(
    {
        "ra": ("float64", "deg", "right ascension"),
        "dec": ("float64", "deg", "declination"),
        "mass": ("float32", "solMass", "initial mass"),
    },
    {"test": 1},
)


def sky(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A clumpy sky (a uniform part, a dense clump, a thin band) with exact duplicates, so
    that rows tie on _healpix_29 within and across runs."""
    rng = np.random.default_rng(seed)
    ra = np.concatenate([rng.uniform(0, 360, n // 2), rng.normal(266, 2, n // 4),
                         rng.uniform(0, 360, n - n // 2 - n // 4)])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, n // 2))),
                          rng.normal(-29, 2, n // 4), rng.normal(0, 1, n - n // 2 - n // 4)])
    twins = rng.choice(n, n // 20, replace=False)
    ra[twins[1::2]], dec[twins[1::2]] = ra[twins[::2]][: len(twins[1::2])], dec[twins[::2]][
        : len(twins[1::2])
    ]
    return {"ra": ra % 360, "dec": np.clip(dec, -90, 90), "mass": rng.random(n).astype("f4")}


def runs_of(cols: dict[str, np.ndarray], bounds: list[int], where: Path, order: int,
            outputs=lambda c: [None, c["dec"] > 0]):
    where.mkdir(parents=True)
    return [
        write_run(where / f"{a:09d}.arrow", {k: v[a:b] for k, v in cols.items()}, SCHEMA,
                  first_star_id=a, outputs=outputs({k: v[a:b] for k, v in cols.items()}),
                  highest_order=order)
        for a, b in itertools.pairwise(bounds)
    ]


def test_partition_orders_are_hats_alignment():
    """Same destination pixels as hats' generate_alignment(drop_empty_siblings=True), the
    alignment hats-import uses, on sparse, dense and clustered histograms."""
    distinct_orders = []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        order = int(rng.integers(1, 5))
        npix = 12 * 4**order
        histogram = np.zeros(npix, np.int64)
        if seed % 2:
            cells = rng.choice(npix, int(rng.integers(1, npix)), replace=False)
        else:
            cells = np.clip(rng.normal(npix / 2, npix / 30, 500).astype(int), 0, npix - 1)
        np.add.at(histogram, cells, rng.integers(1, 60, len(cells)))
        threshold = int(max(histogram.max(), histogram.sum() // rng.integers(2, 20)))
        alignment = generate_alignment(histogram, order, 0, threshold, drop_empty_siblings=True)
        pixels = np.flatnonzero(histogram)
        orders = partition_orders(histogram, threshold)[pixels]
        assert [tuple(alignment[p][:2]) for p in pixels] == [
            (o, p >> 2 * (order - o)) for o, p in zip(orders, pixels)
        ], seed
        want = sorted({tuple(int(v) for v in alignment[p]) for p in pixels})
        assert sorted(zip(*(a.tolist() for a in destination_pixels(histogram, threshold)))) == want
        distinct_orders.append(len(set(orders)))
    assert max(distinct_orders) >= 3 and np.mean(np.array(distinct_orders) > 1) > 0.5


def test_partition_orders_refuse_an_overfull_pixel():
    with pytest.raises(ValueError, match="single pixel row count 12 exceeds threshold 10"):
        partition_orders(np.bincount([3] * 12 + [7], minlength=192), 10)


def test_partitions_do_not_depend_on_how_rows_are_chunked(tmp_path):
    """One run or seven uneven ones: the same partitions, rows in (_healpix_29, star_id)
    order, ties included; each row once."""
    n = 30_000
    cols = sky(n)
    tables = []
    for name, bounds in (("one", [0, n]), ("seven", [0, 10, 4000, 4001, 9000, 17000, 29000, n])):
        runs = runs_of(cols, bounds, tmp_path / name / "runs", order=6)
        path = write_hats(None, runs, 0, tmp_path / name / "cat", name, schema=SCHEMA,
                          partition_rows=2000, highest_order=6)
        parts = sorted(p.relative_to(path) for p in (path / "dataset").rglob("Npix=*"))
        tables.append({p: pq.read_table(path / p) for p in parts})
    assert tables[0].keys() == tables[1].keys() and len(tables[0]) > 5
    for part, table in tables[0].items():
        assert table.equals(tables[1][part]), part
        assert table.schema.field("ra").metadata[b"unit"] == b"deg"
        keys = np.column_stack([table["_healpix_29"].to_numpy(), table["star_id"].to_numpy()])
        assert (np.lexsort(keys.T[::-1]) == np.arange(len(keys))).all()
    ids = np.concatenate([t["star_id"].to_numpy() for t in tables[0].values()])
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    rows = {i: (r, d) for i, r, d in zip(ids, *(np.concatenate(
        [t[c].to_numpy() for t in tables[0].values()]) for c in ("ra", "dec")))}
    assert all(rows[i] == (cols["ra"][i], cols["dec"][i]) for i in range(0, n, 97))


def test_catalog_is_valid_hats_and_selection_keeps_its_rows(tmp_path):
    cols = sky(20_000, seed=3)
    runs = runs_of(cols, [0, 6000, 13000, 20_000], tmp_path / "runs", order=6)
    path = write_hats(None, runs, 0, tmp_path / "cat", "cat", schema=SCHEMA,
                      partition_rows=3000, highest_order=6, properties={"galmock_x": {"a": 1}})
    assert is_valid_catalog(path, strict=True)
    props = (path / "hats.properties").read_text()
    for line in ("hats_nrows=20000", "hats_max_rows=3000", "hats_skymap_order=6",
                 'galmock_x={"a": 1}', "hats_col_healpix=_healpix_29", "hats_cols_sort=star_id"):
        assert line in props.splitlines(), line
    histogram = pixel_histogram(runs, 0, 6)
    assert histogram.sum() == 20_000 and (path / "point_map.fits").read_bytes() == (
        path / "skymap.fits").read_bytes()
    catalog = lsdb.open_catalog(path)
    found = catalog.cone_search(266, -29, 7200).compute()
    ra, dec = np.radians(cols["ra"]), np.radians(cols["dec"])
    cos = np.sin(dec) * np.sin(np.radians(-29)) + np.cos(dec) * np.cos(np.radians(-29)) * np.cos(
        ra - np.radians(266))
    inside = np.flatnonzero(cos > np.cos(np.radians(2)))
    assert len(inside) > 1000
    np.testing.assert_array_equal(np.sort(found["star_id"].to_numpy()), inside)

    north = write_hats(None, runs, 1, tmp_path / "north", "north", schema=SCHEMA,
                       partition_rows=3000, highest_order=6, skymap=False)
    kept = lsdb.open_catalog(north).compute()["star_id"].to_numpy()
    np.testing.assert_array_equal(np.sort(kept), np.flatnonzero(cols["dec"] > 0))
    assert not (north / "point_map.fits").exists()


def test_a_run_that_lost_rows_is_an_error(tmp_path):
    cols = sky(5000, seed=4)
    runs = runs_of(cols, [0, 2500, 5000], tmp_path / "runs", order=4)
    parts = plan_partitions(runs, 0, pixel_histogram(runs, 0, 4), 1000)
    short = {k: v[:2400] for k, v in cols.items()}  # rows 0:2500 rewritten, 100 short
    write_run(runs[0].path, short, SCHEMA, first_star_id=0, outputs=[None, None],
              highest_order=4)
    with pytest.raises(ValueError, match=r"HATS pixel \(order \d+, pixel \d+\): the runs hold "
                                         r"\d+ rows, \d+ planned"):
        for part in parts:
            write_partition(part, tmp_path / "cat", {})


def test_verify_catalog_finds_damage(tmp_path):
    cols = sky(8000, seed=5)
    runs = runs_of(cols, [0, 4000, 8000], tmp_path / "runs", order=5)
    path = write_hats(None, runs, 0, tmp_path / "cat", "cat", schema=SCHEMA,
                      partition_rows=1500, highest_order=5)
    assert verify_catalog(path) == 8000
    parts = sorted((path / "dataset").rglob("Npix=*"))
    assert len(parts) > 4

    # One flipped bit in a data page: the page checksum catches it.
    work = tmp_path / "flipped"
    shutil.copytree(path, work)
    target = work / parts[2].relative_to(path)
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x04
    target.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{target.name}: damaged"):
        verify_catalog(work)

    # A partition gone, or one nobody listed.
    for name, damage in (("gone", lambda p: p.unlink()),
                         ("extra", lambda p: shutil.copy(p, p.with_name("Npix=99999.parquet")))):
        work = tmp_path / name
        shutil.copytree(path, work)
        damage(work / parts[1].relative_to(path))
        message = "missing .partition_info.csv" if name == "gone" else "does not list"
        with pytest.raises(InputError, match=message):
            verify_catalog(work)

    # A partition swapped for another's rows: rows outside its pixel.
    work = tmp_path / "swapped"
    shutil.copytree(path, work)
    shutil.copy(work / parts[0].relative_to(path), work / parts[3].relative_to(path))
    with pytest.raises(InputError, match="rows outside HEALPix pixel"):
        verify_catalog(work)
