"""The convert stage: Zarr + HATS outputs, lsdb, determinism, bad inputs, crashes, Slurm, MPI.

One 200,000-star catalog in 4 chunks is converted once on a shared 2-worker LocalCluster (the
reference); the other tests compare their conversions with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import lsdb
import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import yaml
import zarr
from distributed import Client, LocalCluster, get_worker

from galmock.config import JobConfig, default_config, validate_job
from galmock.errors import ConfigError, InputError
from galmock.frames import COLUMN_UNITS, GAIA_COLUMNS, galactocentric_frame, galactocentric_to_icrs
from galmock.gaia_errors import gaia_uncertainties
from galmock.hats import verify_catalog
from galmock.observables import OBSERVABLE_COLUMNS, PHASE_BELOW_GRID, PHASE_REMNANT
from galmock.parallel.dask import WORKER_MALLOC, local_cluster, slurm_cluster, track
from galmock.selection import cone_mask, load_catalog_spec
from galmock.stages.convert import run as convert
from galmock.stages.validate import _observable_figures, _read_observables
from galmock.store import CATALOG_FORMAT, STAR_COLUMNS, open_catalog, write_star_catalog

pytestmark = pytest.mark.slow

N_STARS = 200_000
CHUNK = 50_000
PARTITION_ROWS = 20_000
WINDOW = "galaxyflow-window"
CONVERT = {
    "hats_partition_rows": PARTITION_ROWS,
    "hats_highest_order": 7,  # order 10 (the default) spends ~4 s planning per HATS catalog
    "selections": [WINDOW],
}


def make_stars(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Stars around the Sun (out to 6 kpc) plus a thin disk, so the sky is far from uniform."""
    rng = np.random.default_rng(seed)
    local = rng.random(n) < 0.6
    sun = np.array([-8.121973, 0.0, 0.0208])
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    pos = sun + rng.uniform(0.02, 6.0, n)[:, None] * direction
    radius, phi = rng.exponential(3.0, n), rng.uniform(0, 2 * np.pi, n)
    disk = np.column_stack([radius * np.cos(phi), radius * np.sin(phi), rng.normal(0, 0.3, n)])
    pos = np.where(local[:, None], pos, disk)
    cols = {"x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2]}
    cols |= {v: rng.normal(0, 40, n) for v in ("vx", "vy", "vz")}
    cols["vy"] += 220
    cols |= {
        "mass": rng.uniform(0.08, 3, n),
        "age": rng.uniform(0, 13, n),
        "feh": rng.normal(-0.2, 0.3, n),
        "parent_id": rng.integers(0, 5000, n),
        "region": rng.integers(0, 16, n),
    }
    return {k: np.asarray(v).astype(STAR_COLUMNS[k].dtype) for k, v in cols.items()}


def make_job(run: Path, **convert_keys) -> JobConfig:
    data = default_config()
    data["name"] = "convert-test"
    data["output"] = str(run)
    data["convert"].update({**CONVERT, **convert_keys})
    return validate_job(data)


def new_run(tmp_path: Path, stars: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "stars.zarr").symlink_to(stars)
    return run


@pytest.fixture(scope="module")
def stars(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stars") / "stars.zarr"
    return write_star_catalog(path, make_stars(N_STARS), chunk_rows=CHUNK, attrs={"test": 1})


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def reference(tmp_path_factory, stars, client) -> Path:
    run = new_run(tmp_path_factory.mktemp("reference"), stars)
    convert(make_job(run), client=client)
    return run


def hats_partitions(catalog: Path) -> list[Path]:
    return sorted(p.relative_to(catalog) for p in (catalog / "dataset").rglob("Npix=*"))


def assert_same_outputs(a: Path, b: Path) -> None:
    """Byte-identical Zarr column data and identical Parquet rows in every partition."""
    chunks = sorted(p.relative_to(a) for p in (a / "catalog.zarr").rglob("c/*"))
    assert len(chunks) == (20 + len(OBSERVABLE_COLUMNS)) * (N_STARS // CHUNK)
    assert chunks == sorted(p.relative_to(b) for p in (b / "catalog.zarr").rglob("c/*"))
    for chunk in chunks:
        assert (a / chunk).read_bytes() == (b / chunk).read_bytes(), chunk
    for hats in ("catalog.hats", f"selections/{WINDOW}.hats"):
        parts = hats_partitions(a / hats)
        assert parts and parts == hats_partitions(b / hats)
        for part in parts:
            ta, tb = pq.read_table(a / hats / part), pq.read_table(b / hats / part)
            assert ta.schema.equals(tb.schema), part  # (the metadata has a creation time)
            for name in ta.column_names:  # NaN (no photometry) equals NaN here
                np.testing.assert_array_equal(ta[name].to_numpy(), tb[name].to_numpy(), str(part))


def test_catalog_zarr_has_astrometry_units_and_provenance(reference, stars):
    cat = open_catalog(reference / "catalog.zarr", format=CATALOG_FORMAT)
    assert len(cat) == N_STARS and cat.chunk_rows == CHUNK
    assert cat.columns == [*GAIA_COLUMNS, *OBSERVABLE_COLUMNS, *STAR_COLUMNS]
    for name, unit in COLUMN_UNITS.items():
        assert cat.spec(name).unit == unit
    assert cat.spec("mass").unit == "solMass" and cat.spec("phot_g_mean_mag").unit == "mag"
    src = open_catalog(stars).read(CHUNK, 2 * CHUNK)
    want = galactocentric_to_icrs(
        *(src[c] for c in ("x", "y", "z", "vx", "vy", "vz")), frame=galactocentric_frame()
    )
    got = cat.read(CHUNK, 2 * CHUNK)
    for name in GAIA_COLUMNS:  # Gaia DR3's dtypes: double, radial_velocity float
        single = name in ("radial_velocity", "distance")
        assert got[name].dtype == np.dtype("float32" if single else "float64"), name
        # With observables the Gaia names of the kinematics hold observed values.
        true = f"{name}_true" if f"{name}_true" in OBSERVABLE_COLUMNS else name
        np.testing.assert_array_equal(got[true], want[name].astype(got[name].dtype))
    for name in STAR_COLUMNS:  # the true columns are kept as they were
        np.testing.assert_array_equal(got[name], src[name])
    attrs = cat.attrs
    assert attrs["frame"]["ref_epoch"] == 2016.0
    assert attrs["frame"]["galactocentric"]["galcen_distance_kpc"] == 8.122
    assert attrs["software"]["astropy"] and attrs["galmock_version"]
    assert attrs["job"]["name"] == "convert-test" and attrs["source"]["attrs"] == {"test": 1}
    assert not (reference / ".convert.partial").exists()


def test_observables_are_gaia_like(reference):
    """Observed = true + Gaia's error (pulls N(0, 1)), radial velocities only to G_RVS 14,
    photometry exactly where a star has an isochrone point, errors equal pygaia's."""
    cat = open_catalog(reference / "catalog.zarr").read()
    seen = np.isfinite(cat["phot_g_mean_mag_true"])
    phase = cat["phase"]
    # The test stars' masses are uniform in 0.08-3 Msun and ages in 0-13 Gyr: every kind but
    # remnants beyond the isochrones (> ~8 Msun; the doctest of galmock.observables has one).
    assert np.isin(phase, [-1, 0, 2, 3, 4, 5, 6, 9, PHASE_REMNANT, PHASE_BELOW_GRID]).all()
    for kind in (0, 2, 3, 6, PHASE_BELOW_GRID):
        assert (phase == kind).sum() > 100, kind
    np.testing.assert_array_equal(seen, ~np.isin(phase, [6, PHASE_REMNANT, PHASE_BELOW_GRID]))
    np.testing.assert_array_equal(seen, np.isfinite(cat["teff"]))
    assert np.isfinite(cat["a0"]).all() and (cat["a0"] >= 0).all()
    n = int(seen.sum())
    for observed, true, error in (
        ("parallax", "parallax_true", "parallax_error"),
        ("pmra", "pmra_true", "pmra_error"),
        ("pmdec", "pmdec_true", "pmdec_error"),
        ("phot_g_mean_mag", "phot_g_mean_mag_true", "phot_g_mean_mag_error"),
        ("phot_bp_mean_mag", "phot_bp_mean_mag_true", "phot_bp_mean_mag_error"),
        ("phot_rp_mean_mag", "phot_rp_mean_mag_true", "phot_rp_mean_mag_error"),
    ):
        assert np.isnan(cat[observed][~seen]).all() and np.isfinite(cat[observed][seen]).all()
        pull = ((cat[observed][seen].astype(np.float64) - cat[true][seen])
                / cat[error][seen].astype(np.float64))
        # Mean 0 and variance 1 within 5 standard errors of n normal pulls (float32 magnitudes
        # round at 1e-6 mag, far below the smallest error, 2e-4 mag).
        assert abs(pull.mean()) < 5 / np.sqrt(n), observed
        assert abs(pull.var() - 1) < 5 * np.sqrt(2 / n), observed
    errors = gaia_uncertainties(*(cat[f"phot_{b}_mean_mag_true"][seen] for b in ("g", "bp", "rp")),
                                cat["teff"][seen], cat["logg"][seen])
    # From float32 magnitudes (rounded at 1e-6 relative): equal within 1e-5 relative.
    np.testing.assert_allclose(cat["parallax_error"][seen], errors.parallax_error, rtol=1e-5)
    np.testing.assert_allclose(cat["phot_bp_mean_mag_error"][seen],
                               errors.phot_bp_mean_mag_error, rtol=1e-5)
    rv = np.isfinite(cat["radial_velocity"])
    bright = seen & (cat["grvs_mag"] <= 14)
    # DR3's RVS limit; pygaia also leaves out Teff and log g beyond its grids (Katz et al.
    # 2023; here 13% of the bright test stars, most hotter than 14,500 K), which the
    # recomputation from the stored (float32) values agrees with but at G_RVS = 14 itself.
    assert not (rv & ~bright).any() and 0.8 * bright.sum() < rv.sum() < n
    agree = np.isfinite(errors.radial_velocity_error) == rv[seen]
    assert (agree | (np.abs(cat["grvs_mag"][seen] - 14) < 1e-4)).all()
    np.testing.assert_array_equal(rv, np.isfinite(cat["radial_velocity_error"]))
    np.testing.assert_allclose(cat["bp_rp"], cat["phot_bp_mean_mag"] - cat["phot_rp_mean_mag"],
                               atol=1e-5)
    np.testing.assert_array_equal(cat["mass_initial"], cat["mass"])


def test_report_figures_of_the_visible_catalog(reference, tmp_path):
    """validate's observables section: the visible stars (true G <= 20.7) of catalog.zarr, and
    the Hess diagram, counts per G, errors against G and sky map drawn from them."""
    job = make_job(reference)
    summary, visible = _read_observables(job)
    g = open_catalog(reference / "catalog.zarr").read(columns=["phot_g_mean_mag_true"])
    g = g["phot_g_mean_mag_true"]
    assert summary["stars_read"] == N_STARS and summary["stride"] == 1
    assert summary["visible"] == int((g <= 20.7).sum()) == len(visible["l"]) > 1000
    assert summary["with_photometry"] == int(np.isfinite(g).sum())
    entries = _observable_figures(job, tmp_path, visible)
    assert [e["file"] for e in entries] == ["hess.png", "counts-g.png", "errors-g.png", "sky.png"]
    for entry in entries:
        assert (tmp_path / entry["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    off = validate_job({**job.model_dump(mode="json", by_alias=True),
                        "observables": {**job.observables.model_dump(), "enabled": False}})
    assert _read_observables(off) == ({"note": "observables.enabled is false"}, None)


def test_hats_opens_in_lsdb_and_cone_search_matches_zarr(reference):
    zcat = open_catalog(reference / "catalog.zarr").read(columns=["ra", "dec", "distance"])
    hats = lsdb.open_catalog(reference / "catalog.hats")
    info = pd.read_csv(reference / "catalog.hats" / "partition_info.csv")
    assert len(info) == len(hats_partitions(reference / "catalog.hats")) > 1
    assert info["Norder"].nunique() > 1  # adaptive orders: the disk splits finer
    everything = hats.compute()
    assert everything.groupby(level=0).size().max() <= PARTITION_ROWS
    np.testing.assert_array_equal(np.sort(everything["star_id"].to_numpy()), np.arange(N_STARS))

    cone = load_catalog_spec(WINDOW).selection.cone
    found = hats.cone_search(cone.ra_deg, cone.dec_deg, cone.radius_deg * 3600).compute()
    inside = cone_mask(zcat["ra"], zcat["dec"], cone.ra_deg, cone.dec_deg, cone.radius_deg)
    assert inside.sum() > 1000
    np.testing.assert_array_equal(np.sort(found["star_id"].to_numpy()), np.nonzero(inside)[0])

    window = lsdb.open_catalog(reference / "selections" / f"{WINDOW}.hats").compute()
    picked = np.nonzero(inside & (zcat["distance"] < 3.5))[0]
    np.testing.assert_array_equal(np.sort(window["star_id"].to_numpy()), picked)

    # Units and provenance travel with the Parquet files.
    schema = pq.read_schema(reference / "catalog.hats" / "dataset" / "_common_metadata")
    assert schema.field("pmra").metadata[b"unit"] == b"mas / yr"
    assert b"galcen_distance_kpc" in schema.metadata[b"galmock"]
    assert b'"selection"' not in schema.metadata[b"galmock"]
    window_dir = reference / "selections" / f"{WINDOW}.hats"
    for path in (window_dir / "dataset" / "_common_metadata", *hats_partitions(window_dir)):
        meta = pq.read_schema(window_dir / path if path.name.startswith("Npix") else path)
        assert b'"selection"' in meta.metadata[b"galmock"], path  # the selection's provenance
    props = (reference / "catalog.hats" / "hats.properties").read_text()
    assert "galmock_ref_epoch=2016.0" in props and "galmock_astropy_version=" in props
    part = reference / "catalog.hats" / hats_partitions(reference / "catalog.hats")[0]
    ra_chunk = pq.ParquetFile(part).metadata.row_group(0).column(2)
    assert ra_chunk.path_in_schema == "ra" and not ra_chunk.has_dictionary_page
    assert verify_catalog(reference / "catalog.hats") == N_STARS  # page checksums, pixels
    assert verify_catalog(reference / "selections" / f"{WINDOW}.hats") == len(picked)


def test_columns_keeps_only_the_columns_named(reference, stars, client, tmp_path):
    run = new_run(tmp_path, stars)
    keep = ["ra", "dec", "parallax", "pmra", "pmdec", "mass"]
    convert(make_job(run, columns=keep), client=client)
    cat = open_catalog(run / "catalog.zarr", format=CATALOG_FORMAT)
    assert cat.columns == keep
    full = open_catalog(reference / "catalog.zarr").read(columns=keep)
    for name, values in cat.read().items():
        np.testing.assert_array_equal(values, full[name])
    schema = pq.read_schema(run / "catalog.hats" / "dataset" / "_common_metadata")
    assert schema.names == ["_healpix_29", "star_id", *keep]
    # The window selects on distance, which is not kept: the same stars all the same.
    for hats in ("catalog.hats", f"selections/{WINDOW}.hats"):
        ids = pq.read_table(run / hats / "dataset", columns=["star_id"])["star_id"].to_numpy()
        ref = pq.read_table(reference / hats / "dataset", columns=["star_id"])["star_id"]
        np.testing.assert_array_equal(np.sort(ids), np.sort(ref.to_numpy()))

    (tmp_path / "bad").mkdir()
    other = new_run(tmp_path / "bad", stars)
    for bad, message in (
        (["ra", "dec", "paralax"], r"convert\.columns: unknown column\(s\) 'paralax'; known: ra,"),
        (["ra", "parallax"], r"convert\.columns = \['ra', 'parallax'\]: lacks dec"),
        (["ra", "dec", "ra"], r"convert\.columns: 'ra' listed twice"),
    ):
        with pytest.raises(ConfigError, match=message):
            convert(make_job(other, columns=bad), client=client)
    assert sorted(p.name for p in other.iterdir()) == ["stars.zarr"]  # checked before anything


def test_results_do_not_depend_on_worker_count(reference, stars, tmp_path):
    run = new_run(tmp_path, stars)
    convert(make_job(run, n_workers=1))  # starts its own 1-worker LocalCluster
    assert_same_outputs(reference, run)


def test_bad_inputs_are_clear_errors_and_leave_no_output(stars, client, tmp_path):
    run = tmp_path / "run"
    cols = make_stars(1000)
    cols["z"][617] = np.nan
    write_star_catalog(run / "stars.zarr", cols, chunk_rows=300)
    message = r"column 'z' has 1 non-finite .*rows 600:900 .first at row 617: nan"
    with pytest.raises(InputError, match=message):
        convert(make_job(run), client=client)
    assert sorted(p.name for p in run.iterdir()) == [".convert.lock", "stars.zarr"]

    shutil.rmtree(run / "stars.zarr")
    with pytest.raises(InputError, match=r"stars\.zarr: catalog not found"):
        convert(make_job(run), client=client)

    cols["z"][617] = 1.0
    write_star_catalog(run / "stars.zarr", cols, chunk_rows=300)
    group = zarr.open_group(run / "stars.zarr", mode="r+")
    del group["feh"]
    with pytest.raises(InputError, match=r"missing column.* feh"):
        convert(make_job(run), client=client)
    group.attrs["complete"] = False
    with pytest.raises(InputError, match="still being written"):
        convert(make_job(run), client=client)

    spec = tmp_path / "typo.yaml"
    spec.write_text("selection:\n  max_distance: 3\n")
    message = r"(?s)typo\.yaml: .*selection\.max_distance = 3 .*unknown key"
    with pytest.raises(InputError, match=message):
        convert(make_job(run, selections=[str(spec)]), client=client)
    assert not (run / "catalog.zarr").exists() and not (run / "catalog.hats").exists()

    # Damaged stars.zarr (#16): a deleted chunk was read as 300 stars at x = 0, flipped bytes
    # passed unnoticed. Each is now an error naming the chunk, and nothing is written.
    write_star_catalog(run / "stars.zarr", cols, chunk_rows=300)
    (run / "stars.zarr" / "x" / "c" / "2").unlink()
    with pytest.raises(InputError, match=r"stars\.zarr/x: 1 of 4 chunk\(s\) missing \(chunk 2\)"):
        convert(make_job(run), client=client)
    write_star_catalog(run / "stars.zarr", cols, chunk_rows=300)
    chunk = run / "stars.zarr" / "vx" / "c" / "1"
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    chunk.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"stars\.zarr/vx: a chunk in rows .* is damaged: "
                                         r"Stored and computed checksum do not match"):
        convert(make_job(run), client=client)
    assert not (run / "catalog.zarr").exists() and not (run / ".convert.partial").exists()

    # A sky pixel of the finest allowed order that alone overflows a partition.
    write_star_catalog(run / "stars.zarr", cols, chunk_rows=300)
    with pytest.raises(ConfigError, match="hats_partition_rows = 10: single pixel row count"):
        convert(make_job(run, hats_partition_rows=10, hats_highest_order=1), client=client)
    assert not (run / "catalog.zarr").exists() and not (run / ".convert.partial").exists()


def test_killed_conversion_reruns_without_duplicates(stars, client, tmp_path):
    run = new_run(tmp_path, stars)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {"name": "killed", "output": str(run), "convert": {**CONVERT, "n_workers": 1}}
        )
    )
    script = ("import sys; from galmock.config import load_job; "
              "from galmock.stages.convert import run as convert")
    script += "; convert(load_job(sys.argv[1]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(job_file)],
        start_new_session=True,  # its dask workers share its process group: kill them all
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # The HATS partitions are written once catalog.zarr and the sorted runs are complete
        # (but not yet moved in).
        while not (run / ".convert.partial" / "build" / "catalog" / "dataset").exists():
            assert proc.poll() is None, "the conversion ended before it could be killed"
            assert time.monotonic() < deadline, "the conversion never reached its HATS step"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run / ".convert.partial" / "catalog.zarr").exists()  # the half-done work...
    assert not (run / "catalog.zarr").exists() and not (run / "catalog.hats").exists()

    # ...plus a half catalog at the final name, as a non-atomic writer would leave it.
    junk = run / "catalog.hats" / "dataset" / "Norder=0" / "Dir=0" / "Npix=3.parquet"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"half a file")

    result = convert(make_job(run), client=client)
    assert result.n_rows == N_STARS
    assert sorted(p.name for p in run.iterdir()) == [
        ".convert.lock",
        "catalog.hats",
        "catalog.zarr",
        "selections",
        "stars.zarr",
    ]
    parts = hats_partitions(run / "catalog.hats")
    info = pd.read_csv(run / "catalog.hats" / "partition_info.csv")
    listed = [
        Path(f"dataset/Norder={o}/Dir={p // 10000 * 10000}/Npix={p}.parquet")
        for o, p in zip(info["Norder"], info["Npix"])
    ]
    assert sorted(listed) == parts  # every partition once, nothing else
    ids = pq.read_table(run / "catalog.hats" / "dataset", columns=["star_id"])["star_id"]
    np.testing.assert_array_equal(np.sort(ids.to_numpy()), np.arange(N_STARS))
    assert len(open_catalog(run / "catalog.zarr")) == N_STARS


def test_galmock_workers_get_its_malloc_settings(tmp_path):
    """Dask's MALLOC_TRIM_THRESHOLD_ pins glibc's mmap threshold; galmock's workers raise it
    (the Parquet and catalog writes ran ~2x slower without)."""
    job = make_job(tmp_path / "run", n_workers=1)
    with local_cluster(job.convert) as cluster, Client(cluster) as client:
        environ = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC})
    assert list(environ.values()) == [WORKER_MALLOC]
    script = slurm_cluster(job, tmp_path / "logs").job_script()
    assert "export MALLOC_MMAP_THRESHOLD_=67108864" in script.splitlines()


def test_a_worker_over_its_memory_limit_fails_the_stage_instead_of_hanging(tmp_path):
    """A worker holding 85% of its limit would pause and never run another task (dask pauses
    at 80%: the conversion then waited forever); galmock's workers go on, and a task that
    drives its worker past the limit ends in a clear error naming convert.memory_per_worker."""
    def hold_memory(fraction: float) -> int:
        """Grow this worker's resident memory to ``fraction`` of its limit in 32 MiB steps and
        keep it (on the worker object: unmanaged memory, which dask cannot spill)."""
        worker, proc = get_worker(), psutil.Process()
        held = worker.__dict__.setdefault("galmock_test_held", [])
        while proc.memory_info().rss < fraction * worker.memory_manager.memory_limit:
            held.append(np.ones(4 << 20))
            time.sleep(0.02)  # the nanny's monitor samples every 100 ms
        return proc.memory_info().rss

    job = make_job(tmp_path / "run", n_workers=1, memory_per_worker="600MiB")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            local_cluster(job.convert) as cluster, Client(cluster) as client:
        assert client.run(lambda: dask.config.get("distributed.worker.memory.pause")) \
            == {w: False for w in client.scheduler_info()["workers"]}
        client.submit(hold_memory, 0.85, pure=False).result(timeout=60)
        # Paused, this would time out (and the stage hang); galmock's worker runs it.
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
        doomed = client.submit(hold_memory, 100.0, pure=False)  # ends only when killed
        with pytest.raises(ConfigError, match=r"died 1 times .* convert\.memory_per_worker"):
            for _ in track([doomed], "convert"):
                pass
    script = slurm_cluster(job, tmp_path / "logs").job_script()
    assert "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False" in script.splitlines()


@pytest.mark.slurm
def test_slurm_cluster_gives_the_local_result(reference, stars, tmp_path, slurm):
    run = new_run(tmp_path, stars)
    job = make_job(
        run,
        cluster="slurm",
        n_workers=2,
        memory_per_worker="2GB",
        scheduler_host="127.0.0.1",
        worker_timeout_s=90,
    )
    convert(job)
    assert_same_outputs(reference, run)
    assert list((run / "logs" / "dask").glob("*.err"))  # the workers ran as Slurm jobs


@pytest.mark.mpi
def test_dask_mpi_gives_the_local_result(reference, stars, tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip(f"no {mpiexec}")
    run = new_run(tmp_path, stars)
    job_file = tmp_path / "job.yaml"
    convert_keys = {**CONVERT, "cluster": "mpi", "interface": "lo", "memory_per_worker": "2GB"}
    job_file.write_text(
        yaml.safe_dump({"name": "convert-test", "output": str(run), "convert": convert_keys})
    )
    script = ("import sys; from galmock.config import load_job; "
              "from galmock.stages.convert import run as convert")
    script += "; convert(load_job(sys.argv[1]))"
    done = subprocess.run(
        [str(mpiexec), "-n", "3", sys.executable, "-c", script, str(job_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_outputs(reference, run)
