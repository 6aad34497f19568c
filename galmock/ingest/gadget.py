"""Read one particle type of a Gadget-4 / Arepo / GIZMO HDF5 snapshot into galmock units.

Positions become physical kpc, velocities physical peculiar km/s, masses Msun, formation times
stellar ages in Gyr and metal mass fractions [Fe/H] and [O/Fe]. Scale-factor and h factors
follow the per-dataset attributes when the file has them (Arepo/Illustris ``a_scaling``,
``h_scaling``, ``to_cgs``; EAGLE ``aexp-scale-exponent``, ``h-scale-exponent``,
``CGSConversionFactor``) and the Gadget conventions otherwise.

Example:
    >>> snap = tmp_path / "snapdir_127" / "snap_127.0.hdf5"  # 3 stars at a = 0.5, h = 0.7
    >>> snap.parent.mkdir()
    >>> with h5py.File(snap, "w") as f:
    ...     f.create_group("Header").attrs.update(dict(
    ...         NumPart_ThisFile=[0, 0, 0, 0, 3, 0], NumPart_Total=[0, 0, 0, 0, 3, 0],
    ...         MassTable=[0.0] * 6, NumFilesPerSnapshot=1, Time=0.5, Redshift=1.0,
    ...         HubbleParam=0.7, Omega0=0.3, OmegaLambda=0.7))
    ...     stars = f.create_group("PartType4")  # Gadget code units: ckpc/h, 1e10 Msun/h
    ...     stars["Coordinates"] = [[1400.0, 0.0, 0.0], [0.0, 700.0, 0.0], [0.0, 0.0, 70.0]]
    ...     stars["Velocities"] = np.zeros((3, 3))
    ...     stars["Masses"] = [1e-4, 1e-4, 2e-4]
    ...     stars["ParticleIDs"] = np.array([10, 11, 12], dtype=np.uint64)
    >>> parts = read_gadget_snapshot(Path(snap))
    >>> parts.columns["x"][:3].round(1), parts.meta["scale_factor"]
    (array([1000.,    0.,    0.]), 0.5)
    >>> parts.columns["mass"].round(-3), parts.labels["mass"]
    (array([1429000., 1429000., 2858000.]), 'PartType4/Masses')
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import h5py
import numpy as np
from tqdm import tqdm

from galmock.config import UnitsConfig
from galmock.errors import ConfigError, InputError
from galmock.particles import SourceParticles

log = logging.getLogger(__name__)

# Gadget's default code units: 1 kpc/h, 1e10 Msun/h, 1 km/s (as the codes define them in cgs).
GADGET_UNIT_LENGTH_CM = 3.085678e21
GADGET_UNIT_MASS_G = 1.989e43
GADGET_UNIT_VELOCITY_CM_S = 1.0e5

KPC_CM = float(u.kpc.to(u.cm))
MSUN_G = float(u.Msun.to(u.g))
KMS_CM_S = 1.0e5
GYR_S = float(u.Gyr.to(u.s))
MPC_KM = float(u.Mpc.to(u.km))

# Asplund, Grevesse, Sauval & Scott (2009, ARA&A 47, 481): present-day photospheric number
# abundances log eps = log10(N_X / N_H) + 12, bulk mass fractions X, Z, and atomic masses (u).
SOLAR_LOG_EPS = {"H": 12.0, "O": 8.69, "Fe": 7.50}
ATOMIC_MASS = {"H": 1.008, "O": 15.999, "Fe": 55.845}
SOLAR_X = 0.7381
SOLAR_Z = 0.0134
# Zero (or round-off negative) fractions are raised to this fraction of solar ([X/H] >= -10)
# so the logarithms stay finite; the number floored goes into the provenance.
METAL_FLOOR = 1e-10

# Column layouts of the per-element arrays.
GFM_METALS_COLUMNS = ("H", "He", "C", "N", "O", "Ne", "Mg", "Si", "Fe")
GIZMO_METALLICITY_COLUMNS = ("Z", "He", "C", "N", "O", "Ne", "Mg", "Si", "S", "Ca", "Fe")

FORMATION_TIME_DATASETS = ("GFM_StellarFormationTime", "StellarFormationTime")
METALLICITY_DATASETS = ("GFM_Metallicity", "Metallicity")
UNIT_GROUPS = ("Units", "Parameters", "Header")
CHUNK_ROWS = 1 << 20
# Gadget's (a, h) exponents in comoving runs: comoving kpc/h, sqrt(a) velocities, 1e10 Msun/h.
COSMOLOGICAL_SCALING = {"Coordinates": (1.0, -1.0), "Velocities": (0.5, 0.0), "Masses": (0.0, -1.0)}
PIECE_RE = re.compile(r"^(?P<base>.+)\.(?P<index>\d+)\.(?P<ext>hdf5|h5)$")

_SCALING_ATTRS = {
    "a": ("a_scaling", "aexp-scale-exponent"),
    "h": ("h_scaling", "h-scale-exponent"),
    "cgs": ("to_cgs", "CGSConversionFactor"),
}


# --- pure functions -------------------------------------------------------------------------


def cosmic_time_gyr(a: np.ndarray | float, hubble_param: float, omega_m: float) -> np.ndarray:
    """Age of a flat matter + Λ universe at scale factor ``a``, in Gyr (no radiation).

    t(a) = 2 / (3 H0 sqrt(ΩΛ)) asinh(sqrt(ΩΛ / Ωm) a^1.5) with H0 = 100 h km/s/Mpc and
    ΩΛ = 1 - Ωm; Ωm = 1 is the Einstein-de Sitter limit 2 / (3 H0) a^1.5.
    """
    hubble_time = MPC_KM / (100.0 * hubble_param) / GYR_S
    a15 = np.asarray(a, dtype=np.float64) ** 1.5
    omega_l = 1.0 - omega_m
    if omega_l < 1e-12:
        return 2.0 / 3.0 * hubble_time * a15
    return (
        2.0
        * hubble_time
        / (3.0 * math.sqrt(omega_l))
        * np.arcsinh(math.sqrt(omega_l / omega_m) * a15)
    )


def solar_mass_ratio(num: str, den: str) -> float:
    """Solar mass-fraction ratio X_num / X_den (Asplund et al. 2009)."""
    return 10.0 ** (SOLAR_LOG_EPS[num] - SOLAR_LOG_EPS[den]) * ATOMIC_MASS[num] / ATOMIC_MASS[den]


def solar_mass_fraction(element: str) -> float:
    """Solar mass fraction of ``element`` (Asplund et al. 2009)."""
    return SOLAR_X * solar_mass_ratio(element, "H")


def floor_fraction(x: np.ndarray, element: str) -> tuple[np.ndarray, int]:
    """Raise fractions below ``METAL_FLOOR`` times solar to that floor; return the count raised."""
    floor = METAL_FLOOR * (SOLAR_Z if element == "Z" else solar_mass_fraction(element))
    low = x < floor
    return np.where(low, floor, x), int(low.sum())


def bracket(x_num: np.ndarray, x_den: np.ndarray, num: str, den: str) -> np.ndarray:
    """[num/den] in dex from (positive) mass fractions."""
    return np.log10(x_num / x_den) - math.log10(solar_mass_ratio(num, den))


def gadget_scale(a: float, h: float, a_exp: float, h_exp: float) -> float:
    """The factor a^a_exp h^h_exp taking stored values to physical (h-free) ones."""
    return a**a_exp * h**h_exp


def is_cosmological_header(time: float, redshift: float | None, omega0: float | None) -> bool:
    """Guess whether a header is a comoving run: Ω0 > 0, 0 < Time <= 1 and Time = 1/(1+z)."""
    if omega0 is None or not omega0 > 0 or not 0 < time <= 1:
        return False
    return redshift is None or abs(1.0 / time - 1.0 - redshift) < 1e-4


# --- files and headers ----------------------------------------------------------------------


@dataclass
class _Header:
    """The attribute groups of one snapshot file, as plain dicts."""

    path: Path
    header: dict[str, Any]
    parameters: dict[str, Any]
    units: dict[str, Any]

    def group(self, name: str) -> dict[str, Any]:
        return {"Header": self.header, "Parameters": self.parameters, "Units": self.units}[name]


@dataclass
class _Scaling:
    """How one dataset converts to physical units: a^a_exp h^h_exp code_to_cgs / target_cgs."""

    a_exp: float
    h_exp: float
    cgs: float | None
    source: str

    def describe(self) -> dict[str, Any]:
        return {"a_exp": self.a_exp, "h_exp": self.h_exp, "to_cgs": self.cgs, "from": self.source}


@dataclass
class _Layout:
    """Which optional datasets a snapshot has (decided by its first non-empty file)."""

    masses: bool
    ids: str | None
    formation: str | None
    metals: str | None
    metals_kind: str | None
    scalings: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextmanager
def _open(path: Path) -> Iterator[h5py.File]:
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(
            f"{path}: not a readable HDF5 snapshot (corrupt or truncated file?): {err}"
        ) from None
    with handle:
        yield handle


def snapshot_files(path: Path) -> list[Path]:
    """The files of a snapshot given one piece, a ``snapdir_NNN/`` directory or a stem.

    Pieces ``<base>.<i>.hdf5`` are returned sorted by ``i``; completeness is checked against the
    header later.
    """
    if path.is_dir():
        groups: dict[tuple[str, str], list[Path]] = {}
        for p in path.iterdir():
            m = PIECE_RE.match(p.name)
            if m and p.is_file():
                groups.setdefault((m["base"], m["ext"]), []).append(p)
        if len(groups) > 1:
            snaps = {k: v for k, v in groups.items() if k[0].startswith("snap")}
            groups = snaps if len(snaps) == 1 else groups
        if len(groups) > 1:
            names = ", ".join(sorted(f"{b}.N.{e}" for b, e in groups))
            raise InputError(f"{path}: several snapshots in one directory ({names}); give one file")
        if not groups:
            singles = sorted(p for p in path.iterdir() if p.suffix in (".hdf5", ".h5"))
            if len(singles) == 1:
                return singles
            raise InputError(f"{path}: no snapshot files (<name>.<i>.hdf5) in this directory")
        return _sorted_pieces(next(iter(groups.values())))
    if path.is_file():
        m = PIECE_RE.match(path.name)
        if not m:
            return [path]
        siblings = path.parent.glob(f"{_glob_escape(m['base'])}.*.{m['ext']}")
        return _sorted_pieces([p for p in siblings if _same_base(p, m["base"], m["ext"])])
    if path.suffix in (".hdf5", ".h5") or not path.parent.is_dir():
        raise InputError(f"{path}: snapshot file not found")
    # A stem such as snapdir_127/snap_127: the single file or its pieces.
    single = path.with_name(path.name + ".hdf5")
    if single.is_file():
        return [single]
    pieces = [p for p in path.parent.glob(f"{_glob_escape(path.name)}.*.hdf5")]
    pieces = [p for p in pieces if _same_base(p, path.name, "hdf5")]
    if pieces:
        return _sorted_pieces(pieces)
    raise InputError(f"{path}: snapshot not found (no {single.name} or {path.name}.<i>.hdf5)")


def _glob_escape(name: str) -> str:
    """Escape glob metacharacters in a file name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _same_base(p: Path, base: str, ext: str) -> bool:
    m = PIECE_RE.match(p.name)
    return bool(m) and m["base"] == base and m["ext"] == ext  # type: ignore[index]


def _sorted_pieces(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: int(PIECE_RE.match(p.name)["index"]))  # type: ignore[index]


def _piece_index(path: Path) -> int | None:
    m = PIECE_RE.match(path.name)
    return int(m["index"]) if m else None


def _read_header(path: Path) -> _Header:
    with _open(path) as f:
        if "Header" not in f:
            raise InputError(f"{path}: no Header group (not a Gadget/Arepo/GIZMO snapshot?)")
        try:
            groups = {
                name: {k: v for k, v in f[name].attrs.items()} if name in f else {}
                for name in ("Header", "Parameters", "Units")
            }
        except OSError as err:
            raise InputError(
                f"{path}: cannot read header attributes (corrupt file?): {err}"
            ) from None
    return _Header(path, groups["Header"], groups["Parameters"], groups["Units"])


def _number(value: Any, path: Path, where: str) -> float:
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{path}: attribute {where} = {value!r} is not a number")
    return float(arr.reshape(-1)[0])


def _header_float(h: _Header, name: str, required: bool = True) -> float | None:
    if name not in h.header:
        if required:
            raise InputError(f"{h.path}: Header attribute {name} is missing")
        return None
    return _number(h.header[name], h.path, f"Header/{name}")


def _per_type(h: _Header, name: str, index: int, required: bool = True) -> float | None:
    if name not in h.header:
        if required:
            raise InputError(f"{h.path}: Header attribute {name} is missing")
        return None
    arr = np.asarray(h.header[name]).reshape(-1)
    if len(arr) <= index or not np.issubdtype(arr.dtype, np.number):
        raise InputError(
            f"{h.path}: Header/{name} = {h.header[name]!r} has no entry for particle type {index}"
        )
    return float(arr[index])


def _count(h: _Header, index: int) -> int:
    n = _per_type(h, "NumPart_ThisFile", index)
    if n is None or n < 0 or n != int(n):
        raise InputError(f"{h.path}: Header/NumPart_ThisFile[{index}] = {n} is not a count")
    return int(n)


def _check_pieces(path: Path, files: list[Path], headers: list[_Header]) -> None:
    first = headers[0]
    n_expected = _header_float(first, "NumFilesPerSnapshot", required=False)
    n_expected = 1 if n_expected is None else int(n_expected)
    indices = [_piece_index(p) for p in files]
    if indices == [None]:
        if n_expected != 1:
            raise InputError(
                f"{first.path}: Header/NumFilesPerSnapshot = {n_expected} but this is a single "
                f"file; give piece 0 (<name>.0.hdf5) or the snapdir directory"
            )
        return
    m = PIECE_RE.match(files[0].name)
    base, ext = m["base"], m["ext"]  # type: ignore[index]
    have = set(indices)
    missing = [f"{base}.{i}.{ext}" for i in range(n_expected) if i not in have]
    if missing:
        raise InputError(
            f"{path}: snapshot is incomplete: Header/NumFilesPerSnapshot = {n_expected} but "
            f"{files[0].parent / missing[0]} is missing ({len(missing)} piece(s) missing: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        )
    extra = [p.name for p, i in zip(files, indices) if i is not None and i >= n_expected]
    if extra:
        raise InputError(
            f"{path}: Header/NumFilesPerSnapshot = {n_expected} but there are more pieces: "
            f"{', '.join(extra)}"
        )


def _unit_system(h: _Header, units: UnitsConfig | None) -> dict[str, tuple[float, str]]:
    """Code units in cgs and where each came from: job units > file attributes > defaults."""
    # Gadget-4 and Arepo spell them UnitLength_in_cm etc.; GIZMO's header UnitLength_In_CGS.
    specs = {
        "length": (("UnitLength_in_cm", "UnitLength_In_CGS"), GADGET_UNIT_LENGTH_CM, u.cm),
        "mass": (("UnitMass_in_g", "UnitMass_In_CGS"), GADGET_UNIT_MASS_G, u.g),
        "velocity": (
            ("UnitVelocity_in_cm_per_s", "UnitVelocity_In_CGS"),
            GADGET_UNIT_VELOCITY_CM_S,
            u.cm / u.s,
        ),
    }
    out: dict[str, tuple[float, str]] = {}
    for kind, (names, default, cgs) in specs.items():
        override = getattr(units, kind) if units is not None else None
        if override is not None:
            out[kind] = (float(u.Unit(override).to(cgs)), f"galaxy.units.{kind} = {override!r}")
            continue
        found = [(g, a) for g in UNIT_GROUPS for a in names if a in h.group(g)]
        if not found:
            out[kind] = (default, "Gadget default")
            continue
        group, attr = found[0]
        value = _number(h.group(group)[attr], h.path, f"{group}/{attr}")
        if not (math.isfinite(value) and value > 0):
            raise InputError(
                f"{h.path}: invalid unit attribute {group}/{attr} = {value} "
                f"(must be positive and finite)"
            )
        out[kind] = (value, f"{group}/{attr}")
    return out


def _dataset_scaling(
    ds: h5py.Dataset, path: Path, name: str, default_a: float, default_h: float
) -> _Scaling:
    """Per-dataset a, h exponents and cgs factor from its attributes, else the defaults."""
    found: dict[str, float] = {}
    for key, names in _SCALING_ATTRS.items():
        for attr in names:
            if attr in ds.attrs:
                value = _number(ds.attrs[attr], path, f"{name}.{attr}")
                if not math.isfinite(value) or (key == "cgs" and value <= 0):
                    raise InputError(
                        f"{path}: invalid unit attribute {name}.{attr} = {value} "
                        f"(must be {'positive and ' if key == 'cgs' else ''}finite)"
                    )
                found[key] = value
                break
    source = "dataset attributes" if found else "defaults"
    return _Scaling(found.get("a", default_a), found.get("h", default_h), found.get("cgs"), source)


# --- reading --------------------------------------------------------------------------------


def _particle_index(particle_type: str) -> int:
    m = re.fullmatch(r"PartType(\d)", particle_type)
    if not m:
        raise ConfigError(
            f"galaxy.gadget.particle_type = {particle_type!r}: expected PartType0 ... PartType9"
        )
    return int(m[1])


def _dataset(
    group: h5py.Group, name: str, path: Path, n: int, width: tuple[int, ...]
) -> h5py.Dataset:
    label = f"{group.name.lstrip('/')}/{name}"
    if name not in group:
        raise InputError(f"{path}: required dataset {label} is missing")
    try:
        ds = group[name]
    except (KeyError, OSError) as err:
        raise InputError(f"{path}: cannot open dataset {label}: {err}") from None
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{path}: {label} is not a dataset")
    if ds.shape[:1] != (n,):
        raise InputError(
            f"{path}: dataset {label} has {ds.shape[0] if ds.shape else 0} rows but "
            f"Header/NumPart_ThisFile says {n} (shape {ds.shape})"
        )
    if width and (len(ds.shape) != 2 or ds.shape[1] < width[0]):
        raise InputError(
            f"{path}: dataset {label} has shape {ds.shape}, expected ({n}, {width[0]})"
        )
    return ds


def _read_rows(ds: h5py.Dataset, start: int, stop: int, path: Path) -> np.ndarray:
    try:
        return np.asarray(ds[start:stop])
    except (OSError, RuntimeError, ValueError) as err:
        raise InputError(
            f"{path}: cannot read dataset {ds.name.lstrip('/')} rows {start}:{stop} "
            f"(truncated or corrupt file?): {err}"
        ) from None


def _check_finite(values: np.ndarray, path: Path, label: str, start: int) -> None:
    # check_particles repeats this, but only knows the snapshot, not which piece and row.
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InputError(
            f"{path}: dataset {label} has {int(bad.sum())} non-finite value(s) "
            f"(first at row {start + row}: {values[bad][0]})"
        )


def _layout(group: h5py.Group, path: Path, ptype: str) -> _Layout:
    names = set(group.keys())
    formation = next((n for n in FORMATION_TIME_DATASETS if n in names), None)
    metals, kind = None, None
    if "GFM_Metals" in names:
        metals, kind = "GFM_Metals", "gfm"
    else:
        for name in METALLICITY_DATASETS:
            if name in names:
                ndim = len(group[name].shape)
                width = group[name].shape[1] if ndim == 2 else 0
                if ndim == 1:
                    metals, kind = name, "total"
                elif width >= len(GIZMO_METALLICITY_COLUMNS):
                    metals, kind = name, "gizmo"
                elif width == 1:
                    metals, kind = name, "total"
                else:
                    raise InputError(
                        f"{path}: dataset {ptype}/{name} has shape {group[name].shape}; expected "
                        f"(N,) total metallicity or GIZMO's (N, 11) element array"
                    )
                break
    ids = "ParticleIDs" if "ParticleIDs" in names else None
    return _Layout("Masses" in names, ids, formation, metals, kind)


def _metals(chunk: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray | None, int]:
    """[Fe/H], [O/Fe] (or None) and the number of floored fractions for one chunk."""
    chunk = chunk.astype(np.float64, copy=False)
    if kind == "total":
        z, n = floor_fraction(chunk.reshape(len(chunk), -1)[:, 0], "Z")
        return np.log10(z / SOLAR_Z), None, n
    if kind == "gfm":
        cols = GFM_METALS_COLUMNS
        h = chunk[:, cols.index("H")]
    else:
        cols = GIZMO_METALLICITY_COLUMNS
        h = 1.0 - chunk[:, cols.index("Z")] - chunk[:, cols.index("He")]
    h, n_h = floor_fraction(h, "H")
    fe, n_fe = floor_fraction(chunk[:, cols.index("Fe")], "Fe")
    o, n_o = floor_fraction(chunk[:, cols.index("O")], "O")
    return bracket(fe, h, "Fe", "H"), bracket(o, fe, "O", "Fe"), n_h + n_fe + n_o


@dataclass(frozen=True)
class _Frame:
    """Snapshot-wide conversion inputs: cosmology, code units, the particle type."""

    particle_type: str
    index: int
    cosmological: bool
    time: float
    a: float
    hubble: float
    unit_sys: dict[str, tuple[float, str]]
    units: UnitsConfig | None
    mass_table: float

    def factor(self, sc: _Scaling, kind: str, target_cgs: float) -> float:
        """Stored value -> galmock unit; job units beat the dataset's to_cgs beats the header."""
        overridden = self.units is not None and getattr(self.units, kind) is not None
        cgs = self.unit_sys[kind][0] if overridden or sc.cgs is None else sc.cgs
        return gadget_scale(self.a, self.hubble, sc.a_exp, sc.h_exp) * cgs / target_cgs

    def default_scaling(self, dataset: str) -> tuple[float, float]:
        """Default (a, h) exponents of a dataset without scaling attributes."""
        if not self.cosmological:
            return 0.0, 0.0
        return COSMOLOGICAL_SCALING[dataset]


def _check_same_layout(first: _Layout, here: _Layout, path: Path, ptype: str) -> None:
    pairs = [
        ("Masses" if first.masses else None, "Masses" if here.masses else None),
        (first.ids, here.ids),
        (first.formation, here.formation),
        (first.metals, here.metals),
    ]
    for want, have in pairs:
        if want != have:
            problem = f"lacks {ptype}/{want}" if want else f"has {ptype}/{have}"
            raise InputError(
                f"{path}: {problem}, unlike the snapshot's first file with {ptype} particles"
            )


def _read_file(
    path: Path,
    group: h5py.Group,
    n: int,
    layout: _Layout,
    frame: _Frame,
    out: dict[str, np.ndarray],
    offset: int,
    bar: tqdm,
) -> int:
    """Read one file's particles into ``out[offset:offset + n]``; return metal fractions floored."""
    ptype = frame.particle_type
    label = ptype + "/"
    coords = _dataset(group, "Coordinates", path, n, (3,))
    vels = _dataset(group, "Velocities", path, n, (3,))
    scalings = {
        "Coordinates": _dataset_scaling(
            coords, path, label + "Coordinates", *frame.default_scaling("Coordinates")
        ),
        "Velocities": _dataset_scaling(
            vels, path, label + "Velocities", *frame.default_scaling("Velocities")
        ),
    }
    masses = _dataset(group, "Masses", path, n, ()) if layout.masses else None
    if masses is not None:
        a_exp, h_exp = frame.default_scaling("Masses")
        scalings["Masses"] = _dataset_scaling(masses, path, label + "Masses", a_exp, h_exp)
    else:
        scalings["Masses"] = _Scaling(*frame.default_scaling("Masses"), None, "Header/MassTable")
    layout.scalings.update({k: v.describe() for k, v in scalings.items()})
    pos_f = frame.factor(scalings["Coordinates"], "length", KPC_CM)
    vel_f = frame.factor(scalings["Velocities"], "velocity", KMS_CM_S)
    mass_f = frame.factor(scalings["Masses"], "mass", MSUN_G)

    ids = _dataset(group, layout.ids, path, n, ()) if layout.ids else None
    if ids is not None and not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"{path}: dataset {label}ParticleIDs has dtype {ids.dtype}, not integer")
    tform = _dataset(group, layout.formation, path, n, ()) if layout.formation else None
    metals = None
    if layout.metals:
        width = (len(GFM_METALS_COLUMNS),) if layout.metals_kind == "gfm" else ()
        metals = _dataset(group, layout.metals, path, n, width)

    n_floored = 0
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        rows = slice(offset + start, offset + stop)
        block = _read_rows(coords, start, stop, path)
        _check_finite(block, path, label + "Coordinates", start)
        for i, name in enumerate(("x", "y", "z")):
            out[name][rows] = block[:, i] * pos_f
        block = _read_rows(vels, start, stop, path)
        _check_finite(block, path, label + "Velocities", start)
        for i, name in enumerate(("vx", "vy", "vz")):
            out[name][rows] = block[:, i] * vel_f
        if masses is None:
            out["mass"][rows] = frame.mass_table * mass_f
        else:
            block = _read_rows(masses, start, stop, path)
            _check_finite(block, path, label + "Masses", start)
            bad = block <= 0
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(
                    f"{path}: dataset {label}Masses has {int(bad.sum())} non-positive value(s) "
                    f"(first at row {start + row}: {block[row]})"
                )
            out["mass"][rows] = block * mass_f
        if ids is not None:
            block = _read_rows(ids, start, stop, path)
            too_big = block >= 2**63 if block.dtype.kind == "u" else np.zeros(len(block), bool)
            if too_big.any():
                row = int(np.argmax(too_big))
                raise InputError(
                    f"{path}: dataset {label}ParticleIDs has value {block[row]} at row "
                    f"{start + row}, which does not fit in int64 (ids must be < 2**63)"
                )
            out["id"][rows] = block.astype(np.int64)
        if tform is not None:
            block = _read_rows(tform, start, stop, path)
            _check_finite(block, path, f"{label}{layout.formation}", start)
            out["tform"][rows] = block
        if metals is not None:
            block = _read_rows(metals, start, stop, path)
            _check_finite(block, path, f"{label}{layout.metals}", start)
            feh, ofe, n_low = _metals(block, str(layout.metals_kind))
            out["feh"][rows] = feh
            if ofe is not None:
                out["ofe"][rows] = ofe
            n_floored += n_low
        bar.update(stop - start)
    return n_floored


def _frame(
    path: Path,
    first: _Header,
    particle_type: str,
    index: int,
    cosmological: bool | None,
    units: UnitsConfig | None,
) -> tuple[_Frame, dict[str, Any]]:
    """Decide cosmology and units from the first file's header; return them and provenance."""
    time = _header_float(first, "Time")
    assert time is not None
    redshift = _header_float(first, "Redshift", required=False)
    omega0 = _header_float(first, "Omega0", required=False)
    omega_l = _header_float(first, "OmegaLambda", required=False)
    hubble = _header_float(first, "HubbleParam", required=False)
    if cosmological is not None:
        cosmo, cosmo_from = bool(cosmological), "galaxy.gadget.cosmological"
    elif flags := [
        g for g in ("Parameters", "Header") if "ComovingIntegrationOn" in first.group(g)
    ]:
        # Gadget-4 and Arepo keep the flag in Parameters, some GIZMO versions in the Header.
        cosmo_from = f"{flags[0]}/ComovingIntegrationOn"
        flag = first.group(flags[0])["ComovingIntegrationOn"]
        cosmo = bool(_number(flag, first.path, cosmo_from))
    else:
        cosmo, cosmo_from = is_cosmological_header(time, redshift, omega0), "header heuristic"
    if hubble is None:
        if cosmo:
            raise InputError(f"{first.path}: Header attribute HubbleParam is missing")
        hubble = 1.0
    if not (math.isfinite(hubble) and hubble > 0):
        raise InputError(f"{first.path}: Header/HubbleParam = {hubble} must be positive")
    if cosmo and not 0 < time <= 1.5:
        raise InputError(
            f"{first.path}: Header/Time = {time} is not a scale factor, but the snapshot is "
            f"treated as cosmological ({cosmo_from}); set galaxy.gadget.cosmological: false"
        )
    frame = _Frame(
        particle_type=particle_type,
        index=index,
        cosmological=cosmo,
        time=time,
        a=time if cosmo else 1.0,
        hubble=hubble,
        unit_sys=_unit_system(first, units),
        units=units,
        mass_table=_per_type(first, "MassTable", index, required=False) or 0.0,
    )
    meta = {
        "time": time,
        "redshift": redshift,
        "scale_factor": time if cosmo else None,
        "hubble_param": hubble,
        "omega0": omega0,
        "omega_lambda": omega_l,
        "cosmological": cosmo,
        "cosmological_from": cosmo_from,
        "units": {k: {"cgs": v, "from": s} for k, (v, s) in frame.unit_sys.items()},
    }
    return frame, meta


def read_gadget_snapshot(
    path: Path,
    particle_type: str = "PartType4",
    cosmological: bool | None = None,
    units: UnitsConfig | None = None,
) -> SourceParticles:
    """Read ``particle_type`` from a (possibly multi-file) snapshot into galmock units.

    ``cosmological`` None decides from ``Parameters/ComovingIntegrationOn``, else the header;
    ``units`` (job ``galaxy.units``) overrides the code length, velocity and mass units, and the
    time unit of non-cosmological formation times.
    """
    path = Path(path)
    index = _particle_index(particle_type)
    files = snapshot_files(path)
    headers = [_read_header(p) for p in files]
    _check_pieces(path, files, headers)
    counts = [_count(h, index) for h in headers]
    total = sum(counts)
    first = headers[0]
    declared = _per_type(first, "NumPart_Total", index, required=False)
    if declared is not None:
        high = _per_type(first, "NumPart_Total_HighWord", index, required=False) or 0
        declared = int(declared) + (int(high) << 32)
        if declared != total:
            raise InputError(
                f"{path}: Header/NumPart_Total[{index}] = {declared} but the {len(files)} "
                f"file(s) hold {total} (sum of NumPart_ThisFile[{index}])"
            )
    if total == 0:
        raise InputError(f"{path}: no {particle_type} particles (Header/NumPart_Total = 0)")
    frame, meta = _frame(path, first, particle_type, index, cosmological, units)

    out = {f: np.empty(total) for f in ("x", "y", "z", "vx", "vy", "vz", "mass")}
    layout: _Layout | None = None
    n_floored = offset = 0
    show = sys.stderr.isatty() and total >= 1_000_000
    with tqdm(total=total, unit="particles", desc=f"reading {path.name}", disable=not show) as bar:
        for p, n in zip(files, counts):
            if n == 0:
                continue  # such pieces have no particle group at all
            with _open(p) as f:
                if particle_type not in f:
                    raise InputError(
                        f"{p}: no {particle_type} group but Header/NumPart_ThisFile[{index}] = {n}"
                    )
                group = f[particle_type]
                here = _layout(group, p, particle_type)
                if layout is None:
                    layout = here
                    _allocate(layout, out, total)
                    if not layout.masses and not frame.mass_table > 0:
                        raise InputError(
                            f"{p}: dataset {particle_type}/Masses is missing and "
                            f"Header/MassTable[{index}] = {frame.mass_table}"
                        )
                _check_same_layout(layout, here, p, particle_type)
                n_floored += _read_file(p, group, n, layout, frame, out, offset, bar)
            offset += n
    assert layout is not None  # total > 0, so some file had particles

    labels = _labels(layout, particle_type, index)
    if not layout.ids:
        out["id"] = np.arange(total, dtype=np.int64)
    n_wind = 0
    if layout.formation:
        tform = out.pop("tform")
        if frame.cosmological:
            keep = tform > 0  # Arepo marks wind particles (not stars) by formation time <= 0
        elif layout.formation == "GFM_StellarFormationTime":
            keep = tform >= 0
        else:
            keep = np.ones(total, dtype=bool)
        n_wind = int((~keep).sum())
        if n_wind:
            log.warning(
                "%s: dropped %d wind particle(s) (%s/%s <= 0)",
                path,
                n_wind,
                particle_type,
                layout.formation,
            )
            out = {f: v[keep] for f, v in out.items()}
            tform = tform[keep]
        out["age"], age_meta = _ages(tform, frame, meta["omega0"], first.path)
        meta.update(age_meta)
    meta = {
        "format": "gadget-hdf5",
        "particle_type": particle_type,
        "files": [str(p) for p in files],
        "n_files": len(files),
        "n_particles_in_snapshot": int(total),
        **meta,
        "scaling": layout.scalings,
        "datasets": labels,
        "ids_generated": not layout.ids,
        "n_wind_dropped": n_wind,
    }
    if layout.metals:
        meta["metallicity"] = _metal_meta(layout, n_floored)
    return SourceParticles(columns=out, path=str(path), labels=labels, meta=meta)


def _allocate(layout: _Layout, out: dict[str, np.ndarray], total: int) -> None:
    if layout.ids:
        out["id"] = np.empty(total, dtype=np.int64)
    if layout.formation:
        out["tform"] = np.empty(total)
    if layout.metals:
        out["feh"] = np.empty(total)
        if layout.metals_kind != "total":
            out["ofe"] = np.empty(total)


def _labels(layout: _Layout, ptype: str, index: int) -> dict[str, str]:
    labels = {f"{c}": f"{ptype}/Coordinates[:, {i}]" for i, c in enumerate("xyz")}
    labels.update({f"v{c}": f"{ptype}/Velocities[:, {i}]" for i, c in enumerate("xyz")})
    labels["mass"] = f"{ptype}/Masses" if layout.masses else f"Header/MassTable[{index}]"
    labels["id"] = f"{ptype}/ParticleIDs" if layout.ids else "generated 0..N-1"
    if layout.formation:
        labels["age"] = f"{ptype}/{layout.formation}"
    if layout.metals:
        labels["feh"] = f"{ptype}/{layout.metals}"
        if layout.metals_kind != "total":
            labels["ofe"] = f"{ptype}/{layout.metals}"
    return labels


def _metal_meta(layout: _Layout, n_floored: int) -> dict[str, Any]:
    kinds = {"gfm": "Arepo GFM_Metals", "gizmo": "GIZMO 11 species", "total": "total Z only"}
    return {
        "dataset": layout.metals,
        "kind": kinds[str(layout.metals_kind)],
        "solar": "Asplund et al. (2009)",
        "solar_log_eps": dict(SOLAR_LOG_EPS),
        "atomic_mass": dict(ATOMIC_MASS),
        "solar_X": SOLAR_X,
        "solar_Z": SOLAR_Z,
        "floor_relative_to_solar": METAL_FLOOR,
        "n_floored": int(n_floored),
    }


def _ages(
    tform: np.ndarray, frame: _Frame, omega0: float | None, path: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stellar ages (Gyr) from formation times, and how they were computed."""
    if frame.cosmological:
        if omega0 is None or not 0 < omega0 <= 1:
            raise InputError(
                f"{path}: Header/Omega0 = {omega0} is needed (0 < Omega0 <= 1) to turn "
                f"formation scale factors into ages"
            )
        h = frame.hubble
        age = cosmic_time_gyr(frame.a, h, omega0) - cosmic_time_gyr(tform, h, omega0)
        how = f"t(a_snap) - t(a_form), flat LCDM, H0 = 100 h, Om = {omega0}, OL = 1 - Om"
    else:
        units = frame.units
        if units is not None and units.age is not None:
            unit_s = float(u.Unit(units.age).to(u.s))
            unit_from = f"galaxy.units.age = {units.age!r}"
        else:
            unit_s = frame.unit_sys["length"][0] / frame.unit_sys["velocity"][0]
            unit_from = "UnitLength / UnitVelocity"
        age = (frame.time - tform) * (unit_s / GYR_S)
        how = f"(Time - formation time) x {unit_s:.10g} s per code time unit ({unit_from})"
    # A formation a hair after the snapshot (round-off in the simulation code) is age zero.
    n_future = int((age < 0).sum())
    return np.maximum(age, 0.0), {"age_from": how, "n_age_clipped_to_zero": n_future}
