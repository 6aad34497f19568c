"""Gadget-4 / Arepo / GIZMO HDF5 snapshots through the reader and ``galmock ingest``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import astropy.units as u
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from astropy.cosmology import FlatLambdaCDM

from galmock.config import UnitsConfig, load_job
from galmock.errors import ConfigError, InputError
from galmock.ingest.gadget import (
    GADGET_UNIT_LENGTH_CM,
    GADGET_UNIT_MASS_G,
    cosmic_time_gyr,
    read_gadget_snapshot,
)
from galmock.particles import read_particle_store
from galmock.stages.ingest import run as ingest

H = 0.7
A = 0.5
OMEGA0 = 0.3
KPC_CM = float(u.kpc.to(u.cm))
MSUN_G = float(u.Msun.to(u.g))
# Units written into test snapshots: exactly astropy's kpc, 1e10 Msun and km/s, so the only
# conversions left are the a and h factors.
EXACT_UNITS = {
    "UnitLength_in_cm": KPC_CM,
    "UnitMass_in_g": 1e10 * MSUN_G,
    "UnitVelocity_in_cm_per_s": 1e5,
}
# Asplund et al. (2009), written out independently of the reader's constants.
FE_H_SUN = 10 ** (7.50 - 12.0) * 55.845 / 1.008
O_FE_SUN = 10 ** (8.69 - 7.50) * 15.999 / 55.845


# --- writing test data ----------------------------------------------------------------------


def make_particles(n: int = 300, seed: int = 1) -> dict[str, np.ndarray]:
    """Physical truth: positions kpc, velocities km/s, masses Msun, formation a, GFM_Metals."""
    rng = np.random.default_rng(seed)
    metals = np.zeros((n, 9))
    metals[:, 0] = rng.uniform(0.70, 0.74, n)  # H
    metals[:, 1] = 0.25  # He
    metals[:, 4] = 10 ** rng.uniform(-4.5, -2.0, n)  # O
    metals[:, 8] = 10 ** rng.uniform(-5.0, -2.5, n)  # Fe
    return {
        "pos": rng.normal(0.0, 8.0, (n, 3)) + np.array([30.0, -20.0, 10.0]),
        "vel": rng.normal(0.0, 120.0, (n, 3)),
        "mass": 10 ** rng.uniform(4.5, 6.0, n),
        "ids": rng.choice(2**40, n, replace=False).astype(np.uint64),
        "a_form": rng.uniform(0.05, 0.49, n),
        # Arepo writes float32 element fractions: start from representable values.
        "metals": metals.astype(np.float32).astype(np.float64),
    }


def expected_columns(p: dict[str, np.ndarray], a: float = A) -> dict[str, np.ndarray]:
    """What galmock should store for ``p`` (ages from astropy, abundances from Asplund 09)."""
    cosmo = FlatLambdaCDM(H0=100 * H, Om0=OMEGA0, Tcmb0=0)
    age = (cosmo.age(1 / a - 1) - cosmo.age(1 / p["a_form"] - 1)).to_value(u.Gyr)
    fe, o, hyd = p["metals"][:, 8], p["metals"][:, 4], p["metals"][:, 0]
    return {
        **{c: p["pos"][:, i] for i, c in enumerate("xyz")},
        **{f"v{c}": p["vel"][:, i] for i, c in enumerate("xyz")},
        "mass": p["mass"],
        "id": p["ids"].astype(np.int64),
        "age": age,
        "feh": np.log10(fe / hyd / FE_H_SUN),
        "ofe": np.log10(o / fe / O_FE_SUN),
    }


def write_snapshot(
    path: Path,
    p: dict[str, np.ndarray],
    n_files: int = 1,
    style: str = "arepo",
    cosmological: bool = True,
    time: float = A,
    units: dict[str, float] | None = EXACT_UNITS,
    splits: list[int] | None = None,
) -> Path:
    """Write ``p`` as a Gadget-4 ("gadget4") or Arepo ("arepo") snapshot; return the path to give.

    Stored values follow the codes: comoving kpc/h positions, sqrt(a)-scaled velocities,
    1e10 Msun/h masses (cosmological), or plain code units (isolated runs). ``n_files`` > 1
    writes ``path.<i>.hdf5`` pieces split at ``splits``.
    """
    n = len(p["mass"])
    ul = (units or {}).get("UnitLength_in_cm", GADGET_UNIT_LENGTH_CM)
    um = (units or {}).get("UnitMass_in_g", GADGET_UNIT_MASS_G)
    uv = (units or {}).get("UnitVelocity_in_cm_per_s", 1e5)
    a, h = (time, H) if cosmological else (1.0, 1.0)
    stored = {
        "Coordinates": p["pos"] * h / a * KPC_CM / ul,
        "Velocities": p["vel"] / math.sqrt(a) * 1e5 / uv,
        "Masses": p["mass"] * h * MSUN_G / um,
        "ParticleIDs": p["ids"],
    }
    if style == "arepo":
        stored["GFM_StellarFormationTime"] = p["a_form"]
        stored["GFM_Metals"] = p["metals"].astype(np.float32)
        stored["GFM_Metallicity"] = 1 - p["metals"][:, :2].sum(axis=1)
    else:
        stored["StellarFormationTime"] = p["a_form"]
        stored["Metallicity"] = 1 - p["metals"][:, :2].sum(axis=1)
    if "tform" in p:
        stored[next(k for k in stored if k.endswith("StellarFormationTime"))] = p["tform"]
    bounds = splits or [round(i * n / n_files) for i in range(1, n_files)]
    edges = [0, *bounds, n]
    names = [Path(f"{path}.{i}.hdf5") for i in range(n_files)]
    if n_files == 1:
        names = [Path(f"{path}.hdf5")]
    for i, name in enumerate(names):
        lo, hi = edges[i], edges[i + 1]
        numpart = np.zeros(6, dtype=np.uint32)
        numpart[4] = hi - lo
        total = np.zeros(6, dtype=np.uint32)
        total[4] = n
        with h5py.File(name, "w") as f:
            hdr = f.create_group("Header")
            hdr.attrs.update(
                {
                    "HubbleParam": H,
                    "Time": time,
                    "Redshift": 1 / time - 1 if cosmological else 0.0,
                    "Omega0": OMEGA0 if cosmological else 0.0,
                    "OmegaLambda": 1 - OMEGA0 if cosmological else 0.0,
                    "BoxSize": 10000.0,
                    "NumFilesPerSnapshot": np.int32(n_files),
                    "NumPart_ThisFile": numpart,
                    "NumPart_Total": total,
                    "NumPart_Total_HighWord": np.zeros(6, dtype=np.uint32),
                    "MassTable": np.zeros(6),
                }
            )
            # Gadget-4 and Arepo repeat the run parameters (cosmology, units) in Parameters.
            params = f.create_group("Parameters")
            params.attrs["ComovingIntegrationOn"] = np.int32(cosmological)
            for key in ("HubbleParam", "Omega0", "OmegaLambda", "BoxSize"):
                params.attrs[key] = hdr.attrs[key]
            if units:
                params.attrs.update(units)
                f.create_group("Units").attrs.update(units)
            if hi == lo:
                continue  # Gadget writes no group for a type absent from this file
            grp = f.create_group("PartType4")
            for key, values in stored.items():
                grp.create_dataset(key, data=values[lo:hi])
            if style == "arepo" and cosmological:
                for key, (ae, he, cgs) in {
                    "Coordinates": (1.0, -1.0, ul),
                    "Velocities": (0.5, 0.0, uv),
                    "Masses": (0.0, -1.0, um),
                    "GFM_StellarFormationTime": (0.0, 0.0, 0.0),
                }.items():
                    grp[key].attrs.update({"a_scaling": ae, "h_scaling": he, "to_cgs": cgs})
    return names[0]


def write_job(tmp_path: Path, galaxy: dict[str, Any], name: str = "job") -> Path:
    """A job YAML ingesting ``galaxy`` with no centring or rotation unless ``galaxy`` asks."""
    spec = {
        "name": name,
        "galaxy": {
            "centre": [0.0, 0.0, 0.0],
            "centre_velocity": [0.0, 0.0, 0.0],
            "align_disk": False,
            **galaxy,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_ingest(tmp_path: Path, galaxy: dict[str, Any], name: str = "job") -> dict[str, Any]:
    """Ingest through ``galmock.ingest.ingest``; return the store's columns and attributes."""
    job = load_job(write_job(tmp_path, galaxy, name), output=tmp_path / f"run-{name}")
    store = read_particle_store(ingest(job))
    return {**store.load(), "attrs": store.attrs}


def assert_fails_cleanly(tmp_path: Path, galaxy: dict[str, Any], *needles: str) -> str:
    """Ingest must raise InputError mentioning every needle and leave no (partial) store."""
    run_dir = tmp_path / "run-bad"
    with pytest.raises(InputError) as info:
        ingest(load_job(write_job(tmp_path, galaxy, "bad"), output=run_dir))
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert not (run_dir / "particles.zarr").exists()
    assert not list(run_dir.glob(".particles.zarr.tmp-*")) if run_dir.exists() else True
    return message


def gadget(path: Path, **extra: Any) -> dict[str, Any]:
    return {"source": "gadget", "path": str(path), **extra}


# --- acceptance: snapshot and table round-trip to the same store ----------------------------


@pytest.mark.parametrize("style", ["arepo", "gadget4"])
def test_snapshot_and_parquet_ingest_to_the_same_store(tmp_path: Path, style: str) -> None:
    p = make_particles()
    snap = write_snapshot(tmp_path / "snap_127", p, style=style)
    expected = expected_columns(p)
    pq.write_table(pa.table(expected), tmp_path / "stars.parquet")

    from_snap = run_ingest(tmp_path, gadget(snap), "snap")
    from_table = run_ingest(tmp_path, {"source": "table", "path": str(tmp_path / "stars.parquet")})

    if style == "gadget4":  # scalar metallicity only: [Fe/H] ~ log Z/Z_sun and no [O/Fe]
        expected["feh"] = np.log10((1 - p["metals"][:, :2].sum(axis=1)) / 0.0134)
        del expected["ofe"]
        assert "ofe" not in from_snap
    for field, want in expected.items():
        # Ages: closed form against astropy's; abundances near 0 dex: compare absolutely.
        rtol, atol = {"age": (1e-6, 0), "feh": (0, 1e-12), "ofe": (0, 1e-12)}.get(field, (1e-12, 0))
        np.testing.assert_allclose(from_snap[field], want, rtol=rtol, atol=atol, err_msg=field)
    for field in ("x", "y", "z", "vx", "vy", "vz", "mass", "id", "age"):
        np.testing.assert_allclose(from_snap[field], from_table[field], rtol=1e-6, err_msg=field)
    np.testing.assert_allclose(from_snap["x"], from_table["x"], rtol=1e-12)
    assert from_snap["id"].dtype == np.int64

    assert json.loads(json.dumps(read_gadget_snapshot(snap).meta))  # plain JSON types only
    meta = from_snap["attrs"]["source_meta"]
    assert meta["hubble_param"] == H and meta["scale_factor"] == A and meta["cosmological"]
    assert meta["cosmological_from"] == "Parameters/ComovingIntegrationOn"
    assert meta["units"]["length"]["from"] == "Units/UnitLength_in_cm"
    assert meta["n_files"] == 1 and meta["n_wind_dropped"] == 0
    assert from_snap["attrs"]["source"] == "gadget"


def test_default_orientation_recovers_centre_and_spin(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n_disk, n_bulge, rd, zd, b, vc, sigma, sigma_b = 16_000, 4_000, 3.0, 0.3, 0.5, 200.0, 20, 60
    r = rng.gamma(2.0, rd, n_disk)  # exponential surface density
    phi = rng.uniform(0, 2 * np.pi, n_disk)
    disk = np.column_stack([r * np.cos(phi), r * np.sin(phi), rng.normal(0, zd, n_disk)])
    # Counter-clockwise rotation seen from +z: spin along +z in the disk frame.
    disk_v = np.column_stack([-vc * np.sin(phi), vc * np.cos(phi), np.zeros(n_disk)])
    disk_v += rng.normal(0, sigma, (n_disk, 3))
    # A non-rotating Plummer bulge gives the shrinking sphere a well-defined peak.
    rb = b / np.sqrt(rng.uniform(1e-3, 1, n_bulge) ** (-2 / 3) - 1)
    direction = rng.normal(size=(n_bulge, 3))
    bulge = rb[:, None] * direction / np.linalg.norm(direction, axis=1)[:, None]
    pos0 = np.vstack([disk, bulge])
    vel0 = np.vstack([disk_v, rng.normal(0, sigma_b, (n_bulge, 3))])
    n = n_disk + n_bulge

    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(1.1) * k + (1 - np.cos(1.1)) * k @ k  # Rodrigues, 1.1 rad
    centre, bulk = np.array([1234.5, -567.8, 910.1]), np.array([100.0, -50.0, 30.0])
    p = make_particles(n, seed=8)
    p["mass"][:] = 2e5
    p["pos"] = pos0 @ rot.T + centre
    p["vel"] = vel0 @ rot.T + bulk
    snap = write_snapshot(tmp_path / "disk", p)

    galaxy = gadget(snap, centre="auto", centre_velocity="auto", align_disk=None)
    out = run_ingest(tmp_path, galaxy)
    attrs = out["attrs"]

    # Shrinking sphere: it stops with 50-100 of its particles inside (min_particles = 100),
    # nearly all bulge, where M(<r) / M_bulge ~ (r / b)^3, so its last radius is about
    # r_f = b (100 / n_bulge)^(1/3). That sphere holds the density peak, so the centre is off by
    # less than r_f; allow 2 r_f for the disk's share and the earlier steps' drift.
    r_f = b * (100 / n_bulge) ** (1 / 3)
    assert np.linalg.norm(np.array(attrs["centre_kpc"]) - centre) < 2 * r_f
    # Bulk velocity and spin are sums over the particles within align_radius_kpc (10 kpc);
    # their noise follows from the true sample: 5 sigma of the mass-weighted mean velocity, and
    # for the spin the transverse scatter of sum m r x v, with isotropic noise (|r| s)^2 / 2 per
    # axis plus the disk thickness term (z vc)^2 / 2, against |L|.
    inside = (pos0**2).sum(axis=1) < 10.0**2
    m, r0, v0 = p["mass"][inside], pos0[inside], vel0[inside]
    v_sigma = np.sqrt((m**2 * ((v0 - np.average(v0, axis=0, weights=m)) ** 2).sum(1)).sum())
    assert np.linalg.norm(np.array(attrs["centre_velocity_kms"]) - bulk) < 5 * v_sigma / m.sum()
    s = np.where(np.arange(n)[inside] < n_disk, sigma, sigma_b)
    z_term = np.where(np.arange(n)[inside] < n_disk, r0[:, 2] ** 2 * vc**2, 0.0)
    noise = np.sqrt((m**2 * ((r0**2).sum(1) * s**2 + z_term) / 2).sum())
    spin_true = (m[:, None] * np.cross(r0, v0)).sum(axis=0)
    angle_tol = 5 * noise / np.linalg.norm(spin_true)
    spin_now = np.array(attrs["rotation_matrix"]) @ (rot @ [0.0, 0.0, 1.0])
    assert math.acos(min(1.0, -spin_now[2])) < angle_tol
    # And the stored frame itself has its angular momentum along -z.
    pos = np.column_stack([out["x"], out["y"], out["z"]])
    vel = np.column_stack([out["vx"], out["vy"], out["vz"]])
    spin = (out["mass"][:, None] * np.cross(pos, vel)).sum(axis=0)
    assert spin[2] / np.linalg.norm(spin) < -0.999
    assert attrs["centre_method"] == "shrinking sphere" and attrs["aligned_disk"]


# --- conventions ----------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "om"), [(0.7, 0.3), (0.6774, 0.3089), (0.5, 0.999), (1.0, 1.0)])
def test_cosmic_time_matches_astropy(h: float, om: float) -> None:
    a = np.array([0.01, 0.1, 0.33, 0.5, 0.9, 1.0])
    want = FlatLambdaCDM(H0=100 * h, Om0=om, Tcmb0=0).age(1 / a - 1).to_value(u.Gyr)
    np.testing.assert_allclose(cosmic_time_gyr(a, h, om), want, rtol=1e-6)


def test_gadget_default_units_when_file_has_none(tmp_path: Path) -> None:
    p = make_particles(50)
    snap = write_snapshot(tmp_path / "snap", p, style="gadget4", units=None)
    parts = read_gadget_snapshot(snap)
    np.testing.assert_allclose(parts.columns["x"], p["pos"][:, 0], rtol=1e-12)
    np.testing.assert_allclose(parts.columns["mass"], p["mass"], rtol=1e-12)
    assert parts.meta["units"]["length"] == {"cgs": GADGET_UNIT_LENGTH_CM, "from": "Gadget default"}
    assert parts.labels["mass"] == "PartType4/Masses"


def test_job_units_override_code_units(tmp_path: Path) -> None:
    p = make_particles(50)
    snap = write_snapshot(tmp_path / "snap", p, style="gadget4", units={"UnitLength_in_cm": 1e5})
    # The Units group claims km; the job says the stored lengths are Mpc/h (comoving).
    with h5py.File(snap, "r+") as f:
        f["PartType4/Coordinates"][...] = p["pos"] * H / A / 1000.0
    units = UnitsConfig(length="Mpc", velocity=None, mass=None, age=None)
    parts = read_gadget_snapshot(snap, units=units)
    np.testing.assert_allclose(parts.columns["y"], p["pos"][:, 1], rtol=1e-12)
    assert parts.meta["units"]["length"]["from"] == "galaxy.units.length = 'Mpc'"


@pytest.mark.parametrize("names", [("a_scaling", "h_scaling", "to_cgs"),
                                   ("aexp-scale-exponent", "h-scale-exponent",
                                    "CGSConversionFactor")])  # fmt: skip
def test_dataset_scaling_attributes_override_conventions(tmp_path: Path, names: tuple) -> None:
    p = make_particles(50)
    snap = write_snapshot(tmp_path / "snap", p, style="gadget4")
    mpc_cm = float(u.Mpc.to(u.cm))
    with h5py.File(snap, "r+") as f:
        # Physical Mpc without h (a = 0, h = 0 exponents), unlike the Gadget default.
        del f["PartType4/Coordinates"]
        ds = f["PartType4"].create_dataset("Coordinates", data=p["pos"] / 1000.0)
        ds.attrs.update(dict(zip(names, (0.0, 0.0, mpc_cm))))
        f["PartType4/Velocities"][...] = p["vel"]
        f["PartType4/Velocities"].attrs.update(dict(zip(names, (0.0, 0.0, 1e5))))
    parts = read_gadget_snapshot(snap)
    np.testing.assert_allclose(parts.columns["z"], p["pos"][:, 2], rtol=1e-12)
    np.testing.assert_allclose(parts.columns["vx"], p["vel"][:, 0], rtol=1e-12)
    assert parts.meta["scaling"]["Coordinates"]["to_cgs"] == mpc_cm


def test_cosmology_detection(tmp_path: Path) -> None:
    p = make_particles(20)
    snap = write_snapshot(tmp_path / "snap", p)
    with h5py.File(snap, "r+") as f:
        del f["Parameters"]
    parts = read_gadget_snapshot(snap)
    assert parts.meta["cosmological"] and parts.meta["cosmological_from"] == "header heuristic"
    np.testing.assert_allclose(parts.columns["x"], p["pos"][:, 0], rtol=1e-12)
    forced = read_gadget_snapshot(snap, cosmological=False)
    assert not forced.meta["cosmological"]
    # Read as an isolated run, a = 1 but the file's Arepo attribute h_scaling = -1 still holds.
    np.testing.assert_allclose(forced.columns["x"], p["pos"][:, 0] / A, rtol=1e-12)


def test_isolated_run_ages_in_code_time(tmp_path: Path) -> None:
    p = make_particles(40)
    p["tform"] = np.linspace(-1.0, 2.4, 40)
    snap = write_snapshot(tmp_path / "iso", p, style="gadget4", cosmological=False, time=2.5)
    parts = read_gadget_snapshot(snap)
    assert not parts.meta["cosmological"] and parts.meta["scale_factor"] is None
    np.testing.assert_allclose(parts.columns["x"], p["pos"][:, 0], rtol=1e-12)
    np.testing.assert_allclose(parts.columns["vz"], p["vel"][:, 2], rtol=1e-12)
    np.testing.assert_allclose(parts.columns["mass"], p["mass"], rtol=1e-12)
    gyr_per_code_time = (1 * u.kpc / (u.km / u.s)).to_value(u.Gyr)
    np.testing.assert_allclose(parts.columns["age"], (2.5 - p["tform"]) * gyr_per_code_time)


def test_arepo_wind_particles_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = make_particles(60)
    p["a_form"][[3, 10, 11]] = [0.0, -0.2, -0.4]
    snap = write_snapshot(tmp_path / "snap", p)
    parts = read_gadget_snapshot(snap)
    assert parts.meta["n_wind_dropped"] == 3
    assert "dropped 3 wind particle(s)" in caplog.text
    keep = np.ones(60, dtype=bool)
    keep[[3, 10, 11]] = False
    np.testing.assert_array_equal(parts.columns["id"], p["ids"][keep].astype(np.int64))
    assert all(len(v) == 57 for v in parts.columns.values())


def test_gizmo_metallicity_and_floors(tmp_path: Path) -> None:
    p = make_particles(30)
    snap = write_snapshot(tmp_path / "snap", p, style="gadget4")
    gizmo = np.zeros((30, 11))
    gizmo[:, 0] = 0.02
    gizmo[:, 1] = 0.26
    gizmo[:, 4] = p["metals"][:, 4]
    gizmo[:, 10] = p["metals"][:, 8]
    gizmo[0, 10] = 0.0  # no iron at all: floored
    with h5py.File(snap, "r+") as f:
        del f["PartType4/Metallicity"]
        f["PartType4"].create_dataset("Metallicity", data=gizmo)
    parts = read_gadget_snapshot(snap)
    want = np.log10(gizmo[1:, 10] / (1 - 0.02 - 0.26) / FE_H_SUN)
    np.testing.assert_allclose(parts.columns["feh"][1:], want, rtol=1e-12)
    np.testing.assert_allclose(
        parts.columns["ofe"][1:], np.log10(gizmo[1:, 4] / gizmo[1:, 10] / O_FE_SUN)
    )
    assert np.isfinite(parts.columns["feh"]).all() and np.isfinite(parts.columns["ofe"]).all()
    assert parts.columns["feh"][0] == pytest.approx(-10 + math.log10(0.7381 / (1 - 0.28)))
    assert parts.meta["metallicity"]["n_floored"] == 1
    assert parts.meta["metallicity"]["kind"] == "GIZMO 11 species"


def test_mass_table_and_missing_ids(tmp_path: Path) -> None:
    p = make_particles(25)
    snap = write_snapshot(tmp_path / "snap", p, style="gadget4")
    with h5py.File(snap, "r+") as f:
        del f["PartType4/Masses"], f["PartType4/ParticleIDs"]
        table = np.zeros(6)
        table[4] = 0.35  # 1e10 Msun/h
        f["Header"].attrs["MassTable"] = table
    parts = read_gadget_snapshot(snap)
    np.testing.assert_allclose(parts.columns["mass"], 0.35e10 / H, rtol=1e-12)
    assert parts.labels["mass"] == "Header/MassTable[4]"
    np.testing.assert_array_equal(parts.columns["id"], np.arange(25))
    assert parts.meta["ids_generated"]


# --- multi-file snapshots -------------------------------------------------------------------


@pytest.mark.parametrize("splits", [None, [120, 120], [0, 300]])
def test_multi_file_equals_single_file(tmp_path: Path, splits: list[int] | None) -> None:
    p = make_particles()
    (tmp_path / "one").mkdir()
    single = write_snapshot(tmp_path / "one" / "snap_127", p)
    snapdir = tmp_path / "snapdir_127"
    snapdir.mkdir()
    piece0 = write_snapshot(snapdir / "snap_127", p, n_files=3, splits=splits or [100, 200])
    want = read_gadget_snapshot(single).columns
    for given in (piece0, snapdir, snapdir / "snap_127", snapdir / "snap_127.2.hdf5"):
        parts = read_gadget_snapshot(given)
        assert parts.meta["n_files"] == 3
        assert parts.columns.keys() == want.keys()
        for field, values in want.items():
            np.testing.assert_array_equal(parts.columns[field], values, err_msg=field)
    out = run_ingest(tmp_path, gadget(snapdir))
    np.testing.assert_array_equal(out["x"], want["x"])


def test_pieces_sort_numerically(tmp_path: Path) -> None:
    p = make_particles(110)
    piece0 = write_snapshot(tmp_path / "snap_005", p, n_files=11)
    parts = read_gadget_snapshot(piece0)
    assert parts.meta["files"][2].endswith("snap_005.2.hdf5")  # not .10 after .1
    np.testing.assert_array_equal(parts.columns["id"], p["ids"].astype(np.int64))


def test_missing_piece_is_an_error(tmp_path: Path) -> None:
    piece0 = write_snapshot(tmp_path / "snap_127", make_particles(), n_files=3)
    (tmp_path / "snap_127.1.hdf5").unlink()
    assert_fails_cleanly(tmp_path, gadget(piece0), str(tmp_path / "snap_127.1.hdf5"), "missing")
    (tmp_path / "snap_127.2.hdf5").unlink()
    with h5py.File(piece0, "r+") as f:
        f["Header"].attrs["NumFilesPerSnapshot"] = np.int32(1)
    assert_fails_cleanly(tmp_path, gadget(piece0), "NumPart_Total[4] = 300", "hold 100")


# --- bad input: InputError naming file, dataset and value; no store left --------------------


def _edit(path: Path, edit: Any) -> None:
    with h5py.File(path, "r+") as f:
        edit(f)


def _set(dataset: str, index: Any, value: float) -> Any:
    def edit(f: h5py.File) -> None:
        data = f[dataset][...]
        data[index] = value
        f[dataset][...] = data

    return edit


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_set("PartType4/Coordinates", (7, 1), np.nan), ["PartType4/Coordinates", "row 7", "nan"]),
        (_set("PartType4/Velocities", (2, 0), np.inf), ["PartType4/Velocities", "row 2", "inf"]),
        (_set("PartType4/Masses", 5, -2.0), ["PartType4/Masses", "non-positive", "-2.0"]),
        (_set("PartType4/Masses", 6, 0.0), ["PartType4/Masses", "non-positive", "0.0"]),
        (_set("PartType4/ParticleIDs", 9, 2**63 + 5), ["ParticleIDs", str(2**63 + 5)]),
        (lambda f: f["PartType4"].__delitem__("Velocities"), ["PartType4/Velocities"]),
        (lambda f: f["PartType4"].__delitem__("Masses"), ["PartType4/Masses", "MassTable[4] = 0"]),
        (lambda f: f.__delitem__("Header"), ["Header"]),
        (
            lambda f: f["Header"].attrs.__delitem__("NumPart_ThisFile"),
            ["Header attribute NumPart_ThisFile is missing"],
        ),
        (
            lambda f: (
                f["PartType4"].__delitem__("Velocities"),
                f["PartType4"].create_dataset("Velocities", data=np.zeros((299, 3))),
            ),
            ["PartType4/Velocities", "299 rows", "says 300"],
        ),
        (
            lambda f: f["Units"].attrs.__setitem__("UnitLength_in_cm", -3.0e21),
            ["Units/UnitLength_in_cm", "-3e+21"],
        ),
        (
            lambda f: f["Units"].attrs.__setitem__("UnitMass_in_g", np.nan),
            ["Units/UnitMass_in_g", "nan"],
        ),
        (
            lambda f: f["Units"].attrs.__setitem__("UnitVelocity_in_cm_per_s", "furlong"),
            ["Units/UnitVelocity_in_cm_per_s", "furlong", "not a number"],
        ),
        (
            lambda f: f["PartType4/Coordinates"].attrs.__setitem__("to_cgs", 0.0),
            ["PartType4/Coordinates.to_cgs = 0.0"],
        ),
        (
            lambda f: f["PartType4/GFM_Metals"].__setitem__((4, 8), np.nan),
            ["PartType4/GFM_Metals", "row 4", "nan"],
        ),
    ],
    ids=[
        "nan-coordinates",
        "inf-velocities",
        "negative-mass",
        "zero-mass",
        "id-overflow",
        "missing-velocities",
        "missing-masses",
        "missing-header",
        "missing-numpart",
        "length-mismatch",
        "negative-unit",
        "nan-unit",
        "string-unit",
        "zero-to-cgs",
        "nan-metals",
    ],
)
def test_bad_snapshot(tmp_path: Path, edit: Any, needles: list[str]) -> None:
    snap = write_snapshot(tmp_path / "snap", make_particles())
    _edit(snap, edit)
    assert_fails_cleanly(tmp_path, gadget(snap), str(snap), *needles)


def test_duplicate_ids(tmp_path: Path) -> None:
    p = make_particles()
    p["ids"][17] = p["ids"][3]
    snap = write_snapshot(tmp_path / "snap", p)
    assert_fails_cleanly(
        tmp_path, gadget(snap), str(snap), "id (PartType4/ParticleIDs)", str(p["ids"][3])
    )


def test_empty_selection(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "snap", make_particles())
    galaxy = gadget(snap, select_radius_kpc=1e-6)
    assert_fails_cleanly(tmp_path, galaxy, str(snap), "select_radius_kpc = 1e-06", "empty")


def test_truncated_file(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "snap", make_particles())
    data = snap.read_bytes()
    snap.write_bytes(data[: len(data) // 2])
    assert_fails_cleanly(tmp_path, gadget(snap), str(snap), "truncated")


def test_corrupt_file(tmp_path: Path) -> None:
    snap = tmp_path / "snap.hdf5"
    snap.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_fails_cleanly(tmp_path, gadget(snap), str(snap), "not a readable HDF5")


def test_corrupt_dataset_bytes(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "snap", make_particles())
    with h5py.File(snap, "r+") as f:
        del f["PartType4/Coordinates"]
        ds = f["PartType4"].create_dataset(
            "Coordinates", data=np.ones((300, 3)), chunks=(300, 3), compression="gzip"
        )
        info = ds.id.get_chunk_info(0)
    with snap.open("r+b") as fh:  # scribble over the compressed chunk: inflate() fails
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    assert_fails_cleanly(tmp_path, gadget(snap), str(snap), "PartType4/Coordinates", "rows 0:300")


def test_missing_file(tmp_path: Path) -> None:
    snap = tmp_path / "nowhere" / "snap_001.hdf5"
    assert_fails_cleanly(tmp_path, gadget(snap), str(snap), "not found")


def test_unknown_job_unit_is_a_config_error(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "snap", make_particles())
    job = write_job(tmp_path, gadget(snap, units={"velocity": "furlong/fortnight"}))
    with pytest.raises(ConfigError, match=r"galaxy\.units\.velocity = 'furlong/fortnight'"):
        load_job(job, output=tmp_path / "run")
    assert not (tmp_path / "run" / "particles.zarr").exists()


def test_bad_particle_type(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "snap", make_particles())
    with pytest.raises(ConfigError, match=r"galaxy\.gadget\.particle_type = 'Stars'"):
        read_gadget_snapshot(snap, particle_type="Stars")


# --- pynbody, where installed ---------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Unable to infer units")
def test_pynbody_reads_the_same_snapshot(tmp_path: Path) -> None:
    pytest.importorskip("pynbody")
    from galmock.ingest.pynbody import read_pynbody

    p = make_particles()
    snap = write_snapshot(tmp_path / "snap", p)
    ours = read_gadget_snapshot(snap).columns
    theirs = read_pynbody(snap).columns
    # pynbody's own a, h handling and cosmic time; its Msun is 1.989e33 g (astropy: 1.98841e33).
    for field in ("x", "y", "z", "vx", "vy", "vz", "age", "id"):
        np.testing.assert_allclose(theirs[field], ours[field], rtol=1e-9, err_msg=field)
    np.testing.assert_allclose(theirs["mass"], ours["mass"], rtol=1e-5)


def test_pynbody_missing_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from galmock.ingest.pynbody import read_pynbody

    monkeypatch.setitem(sys.modules, "pynbody", None)  # as if not installed: import fails
    with pytest.raises(InputError, match=r"pip install galmock\[pynbody\]"):
        read_pynbody(tmp_path / "snap")
