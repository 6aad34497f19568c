"""The convert stage: ``<run>/stars.zarr`` → observer's catalogs, with Dask.

Outputs (each replaced as a whole, never left half-written)::

    <run>/catalog.zarr                 every star: Gaia DR3 astrometry + the star columns
                                       (those convert.columns names), chunked like
                                       stars.zarr, compressed with upsample.compressor
                                       (format galmock.catalog/3)
    <run>/catalog.hats/                the same rows as HATS (HEALPix-partitioned Parquet that
                                       lsdb.open_catalog reads), plus star_id and _healpix_29;
                                       skipped when convert.hats is false
    <run>/selections/<name>.hats/      one HATS catalog per spec in convert.selections (see
                                       galmock.selection), whatever convert.hats says; none for
                                       a spec no star passes. The directory is replaced as a
                                       whole, so specs no longer listed disappear.

Astrometry columns (:data:`galmock.frames.GAIA_COLUMNS`, units in
:data:`galmock.frames.COLUMN_UNITS`): ra, dec, parallax, pmra, pmdec, radial_velocity, l, b,
distance, in Gaia DR3's dtypes (float64, radial_velocity float32 as in gaia_source; the
velocities it comes from are float32) and distance float32 (1e-7 relative: a thousandth of the
best parallax error Gaia will reach). ``star_id`` is the star's row in stars.zarr /
catalog.zarr.

With ``observables.enabled`` (the default) the Gaia observables follow the astrometry
(:data:`galmock.observables.OBSERVABLE_COLUMNS`: errors, observed and true magnitudes,
extinction, Teff, log g, masses, phase), and ``parallax``, ``pmra``, ``pmdec`` and
``radial_velocity`` hold observed values (true ones in ``*_true``; radial velocities only where
G_RVS <= 14). Their noise is seeded per chunk by (job seed, first row), so the catalog does not
depend on the number of workers; 29 more columns, 125 more bytes per star.

Bytes per star without observables (uncompressed; the files are ~15-20% smaller):

================================  ============  =========
``convert.columns``               catalog.zarr  HATS rows
================================  ============  =========
null (all 20 columns)             124           140
without x, y, z, vx, vy, vz       88            104
[ra, dec, parallax, pmra, pmdec]  40            56
================================  ============  =========

(HATS adds ``star_id`` and ``_healpix_29``, 8 bytes each.)
Units are in every column's metadata (Zarr array attrs, Arrow field metadata); the frame
(galcen_distance, z_sun, v_sun, roll, astropy version), reference epoch, galmock version and
source job are in the Zarr group attrs, the Parquet schema metadata (key ``galmock``) and
``galmock_*`` keys of ``hats.properties``.

How: one Dask task per chunk reads the stars, checks that positions and velocities are finite,
computes the astrometry (galmock.frames) and writes the same chunk of catalog.zarr (chunks are
separate objects, so workers write without locks) and, for the HATS outputs, the chunk's rows
sorted by sky pixel (a sorted run); one task per HATS partition then merges its slices of the
runs into its Parquet file (galmock.hats). Results do not depend on the number of workers: each
chunk is computed alone, and HATS rows are sorted by (_healpix_29, star_id). Everything is
built in ``<run>/.convert.partial/`` and moved into place only when all of it succeeded; a rerun
after a crash or kill starts afresh (a lock file keeps two conversions of one run apart). The
sorted runs take the catalog's uncompressed size (~140 B per star) in the staging directory
until the HATS outputs are written.

Example:
    >>> result = run(load_job("jobs/demo.yaml"))  # starts a Dask cluster  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    1,918,749 stars -> .../runs/demo/catalog.zarr
      HATS: .../runs/demo/catalog.hats

    What one task does to its chunk, without a cluster:

    >>> from galmock.store import STAR_COLUMNS, create_catalog, mark_complete, write_star_catalog
    >>> cols = {c: np.zeros(4, s.dtype) for c, s in STAR_COLUMNS.items()}
    >>> cols["x"][:] = [0.0, -6.0, -8.0, -10.0]  # kpc; the Sun is at x = -8.122
    >>> stars = open_catalog(write_star_catalog(tmp_path / "stars.zarr", cols, chunk_rows=2))
    >>> columns = catalog_columns(stars)
    >>> list(columns)[:9] == list(GAIA_COLUMNS), len(columns)
    (True, 20)
    >>> target = create_catalog(tmp_path / "catalog.zarr", columns, len(stars), stars.chunk_rows,
    ...                         format=CATALOG_FORMAT)
    >>> observer = load_job("jobs/demo.yaml").observer.model_dump()
    >>> window = load_catalog_spec("galaxyflow-window").selection
    >>> [convert_chunk(a, b, source=str(stars.path), target=str(target), observer=observer,
    ...                selections=[window])[0] for a, b in stars.chunks()]  # stars in the window
    [[0], [0]]
    >>> mark_complete(target)
    >>> open_catalog(target).read(columns=["distance"])["distance"].round(3)
    array([8.122, 2.122, 0.124, 1.878], dtype=float32)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from galmock.atomic import replace_path
from galmock.config import ConvertConfig, JobConfig, ObservablesConfig, ObserverConfig
from galmock.errors import ConfigError, InputError
from galmock.frames import COLUMN_UNITS, GAIA_COLUMNS, galactocentric_frame, galactocentric_to_icrs
from galmock.hats import SortedRun, catalog_schema, pixel_histogram, write_hats, write_run
from galmock.layout import RunLayout
from galmock.locks import exclusive
from galmock.observables import (
    OBSERVABLE_COLUMNS,
    Observatory,
    build_observatory,
    gaia_columns,
    true_photometry,
)
from galmock.parallel.dask import dask_client, track, wait_all
from galmock.seeds import derive_seed
from galmock.selection import CatalogSpec, SelectionSpec, load_catalog_spec, selection_mask
from galmock.stages.upsample import require_current_stars
from galmock.store import (
    CATALOG_FORMAT,
    STARS_FORMAT,
    ColumnSpec,
    StarCatalog,
    create_catalog,
    mark_complete,
    open_catalog,
    write_rows,
    zarr_attrs,
)
from galmock.version import __version__

__all__ = ["CATALOG_DESCRIPTIONS", "ConvertResult", "catalog_columns", "convert_chunk", "progress",
           "run"]

log = logging.getLogger("galmock.convert")

PHASE_SPACE = ("x", "y", "z", "vx", "vy", "vz")
#: Astrometry dtypes: gaia_source's (double, radial_velocity float); distance is galmock's own.
CATALOG_DTYPES = {name: "float64" for name in GAIA_COLUMNS} | {
    "radial_velocity": "float32",
    "distance": "float32",
}
CATALOG_DESCRIPTIONS = {
    "ra": "right ascension (ICRS)",
    "dec": "declination (ICRS)",
    "parallax": "parallax (error-free)",
    "pmra": "proper motion in right ascension, times cos(dec)",
    "pmdec": "proper motion in declination",
    "radial_velocity": "heliocentric radial velocity",
    "l": "Galactic longitude",
    "b": "Galactic latitude",
    "distance": "heliocentric distance",
}


#: With observables, the Gaia names hold observed values (galmock.observables).
OBSERVED_ASTROMETRY = {
    "parallax": ColumnSpec(np.dtype("float64"), "mas", "observed parallax (true + Gaia error)"),
    "pmra": ColumnSpec(np.dtype("float64"), "mas / yr",
                       "observed proper motion in right ascension, times cos(dec)"),
    "pmdec": ColumnSpec(np.dtype("float64"), "mas / yr", "observed proper motion in declination"),
    "radial_velocity": ColumnSpec(np.dtype("float32"), "km / s",
                                  "observed heliocentric radial velocity; NaN where G_RVS > 14"),
}


@dataclass
class ConvertResult:
    """What a conversion wrote: paths and row counts (``None`` path: not written)."""

    n_rows: int
    catalog_zarr: Path
    catalog_hats: Path | None
    selections: dict[str, tuple[Path | None, int]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.n_rows:,} stars -> {self.catalog_zarr}"]
        if self.catalog_hats is not None:
            lines.append(f"  HATS: {self.catalog_hats}")
        for name, (path, rows) in self.selections.items():
            lines.append(f"  selection {name}: {rows:,} stars -> {path or 'nothing written'}")
        return "\n".join(lines)


def run(job: JobConfig, client: Any = None) -> ConvertResult:
    """Run the convert stage of ``job`` (the function behind ``galmock convert JOB``).

    Uses ``client`` (a ``distributed.Client``) when given, else starts the cluster the job's
    ``convert`` section asks for. Under ``cluster: mpi`` only MPI rank 1 returns.

    Example:
        >>> job = load_job("jobs/demo.yaml")
        >>> run(job).catalog_zarr  # starts a Dask cluster  # doctest: +SKIP
        PosixPath('/.../runs/demo/catalog.zarr')
    """
    # Check everything cheap before starting a cluster: specs, then the input catalog.
    specs = _load_specs(job.convert.selections)
    layout = RunLayout(job.run_dir)
    stars = open_catalog(layout.stars, format=STARS_FORMAT)
    require_current_stars(job, stars)
    columns = catalog_columns(stars, job.convert.columns, job.observables.enabled)
    # The cluster first: under dask-mpi only the client rank gets past this line.
    with _client(job, client) as cluster_client, exclusive(layout.lock("convert"), "convert"):
        staging = layout.convert_staging
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed conversion
        staging.mkdir(parents=True)
        try:
            provenance = _provenance(job, stars, columns)
            schema = catalog_schema(
                {n: (c.dtype.str, c.unit, c.description) for n, c in columns.items()},
                provenance,
            )
            counts, runs = _write_zarr(
                job, cluster_client, stars, specs, columns, schema, provenance, staging
            )
            result = _write_hats(
                job, cluster_client, specs, counts, runs, schema, provenance, staging
            )
            _swap_in(staging, layout)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("convert: %s", result.summary())
    return result


def catalog_columns(
    stars: StarCatalog, keep: Sequence[str] | None = None, observables: bool = False
) -> dict[str, ColumnSpec]:
    """Columns of catalog.zarr: the astrometry, the Gaia observables (when ``observables``:
    :data:`galmock.observables.OBSERVABLE_COLUMNS`), then the columns of the star catalog; only
    those in ``keep`` (``convert.columns``) when given, in this order.

    Raises:
        ConfigError: ``keep`` names an unknown column, one twice, or lacks ra or dec.
    """
    astrometry = {
        name: ColumnSpec(np.dtype(CATALOG_DTYPES[name]), COLUMN_UNITS[name],
                         CATALOG_DESCRIPTIONS[name])
        for name in GAIA_COLUMNS
    }
    if observables:
        astrometry.update(OBSERVED_ASTROMETRY)
    extra = OBSERVABLE_COLUMNS if observables else {}
    columns = {**astrometry, **extra, **{name: stars.spec(name) for name in stars.columns}}
    if keep is None:
        return columns
    unknown = [name for name in keep if name not in columns]
    if unknown:
        raise ConfigError(
            f"convert.columns: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(columns)}"
        )
    twice = sorted({name for name in keep if list(keep).count(name) > 1})
    if twice:
        raise ConfigError(f"convert.columns: {', '.join(map(repr, twice))} listed twice")
    lacking = [name for name in ("ra", "dec") if name not in keep]
    if lacking:
        raise ConfigError(
            f"convert.columns = {list(keep)}: lacks {' and '.join(lacking)}, which every "
            "catalog keeps (HATS partitions by them)"
        )
    return {name: spec for name, spec in columns.items() if name in keep}


def convert_chunk(
    start: int,
    stop: int,
    *,
    source: str,
    target: str,
    observer: Mapping[str, Any],
    columns: Sequence[str] | None = None,
    selections: Sequence[SelectionSpec] = (),
    runs: HatsRuns | None = None,
    abort: str | None = None,
    observables: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[list[int], SortedRun | None, dict[str, int]] | None:
    """Convert rows ``start:stop`` of ``source`` into ``target`` (its ``columns``; default: all
    computed); one Dask task. ``observables`` (the job's section, when enabled) adds the Gaia
    observables, their noise seeded by (``seed``, ``start``).

    Returns how many of these rows each selection picks, when ``runs`` asks for HATS output
    the chunk's sorted run (see galmock.hats), and counts of stars clipped to the isochrone or
    photometry grids; ``None`` without doing anything when the file ``abort`` exists (another
    chunk failed).
    """
    if abort is not None and Path(abort).exists():
        return None
    data = open_catalog(source).read(start, stop)
    for name in PHASE_SPACE:
        bad = ~np.isfinite(data[name])
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(
                f"{source}: column {name!r} has {int(bad.sum())} non-finite value(s) in rows "
                f"{start}:{stop} (first at row {start + i}: {data[name][i]})"
            )
    frame = galactocentric_frame(**observer)
    astrometry = galactocentric_to_icrs(*(data[c] for c in PHASE_SPACE), frame=frame)
    # As stored: selections then pick by the values the catalog holds.
    stats = {"clipped_isochrone": 0, "clipped_photometry": 0}
    extra: dict[str, np.ndarray] = {}
    if observables is not None:
        model = _observatory(json.dumps({"observables": dict(observables),
                                         "observer": dict(observer)}, sort_keys=True))
        pos = np.column_stack([data["x"], data["y"], data["z"]])
        true = true_photometry(model, pos, data["mass"], data["age"], data["feh"])
        rng = np.random.default_rng(derive_seed(seed, "convert-noise", start))
        extra, observed = gaia_columns(model, true, astrometry, rng)
        astrometry = {**astrometry, **observed}
        stats = {"clipped_isochrone": true.clipped_isochrone,
                 "clipped_photometry": true.clipped_photometry}
    out = {**{k: v.astype(CATALOG_DTYPES[k], copy=False) for k, v in astrometry.items()},
           **extra, **data}
    write_rows(target, start, out if columns is None else {c: out[c] for c in columns})
    masks = [selection_mask(s, out) for s in selections]
    run = None
    if runs is not None:
        outputs = ([None] if runs.whole_catalog else []) + masks
        run = write_run(
            Path(runs.directory) / f"{start:015d}.arrow",
            out,
            runs.schema,
            first_star_id=start,
            outputs=outputs,
            highest_order=runs.highest_order,
        )
    return [int(m.sum()) for m in masks], run, stats


@functools.lru_cache(maxsize=2)
def _observatory(key: str) -> Observatory:
    """The grids for a job's ``observables`` and ``observer`` (JSON ``key``), loaded once per
    worker process: ~1 s and ~100 MB that every chunk would otherwise pay again."""
    data = json.loads(key)
    return build_observatory(ObservablesConfig(**data["observables"]),
                             ObserverConfig(**data["observer"]))


@dataclass(frozen=True)
class HatsRuns:
    """Where and how convert_chunk writes its sorted run for the HATS outputs.

    ``whole_catalog``: output 0 is every row (catalog.hats); the selections follow.
    """

    directory: str
    schema: pa.Schema
    highest_order: int
    whole_catalog: bool


@dataclass
class HatsInput:
    """The chunks' sorted runs, in star_id order, and each output's pixel histogram."""

    runs: list[SortedRun]
    histograms: list[np.ndarray]


# --- the steps ----------------------------------------------------------------------------------


def _write_zarr(
    job: JobConfig,
    client: Any,
    stars: StarCatalog,
    specs: Sequence[CatalogSpec],
    columns: Mapping[str, ColumnSpec],
    schema: pa.Schema,
    provenance: Mapping[str, Any],
    staging: Path,
) -> tuple[list[int], HatsInput]:
    """``<staging>/catalog.zarr``, one task per chunk; returns the stars each spec picks and
    what the HATS outputs are built from."""
    cfg = job.convert
    target = staging / RunLayout(job.run_dir).catalog_zarr.name
    create_catalog(
        target,
        columns,
        len(stars),
        stars.chunk_rows,
        provenance,
        format=CATALOG_FORMAT,
        compressor=job.upsample.compressor,
    )
    runs = None
    if (cfg.hats or specs) and len(stars):
        runs = HatsRuns(
            directory=str(staging / "build" / "runs"),
            schema=schema,
            highest_order=cfg.hats_highest_order,
            whole_catalog=cfg.hats,
        )
        Path(runs.directory).mkdir(parents=True)
    starts, stops = zip(*stars.chunks()) if len(stars) else ((), ())
    futures = client.map(
        convert_chunk,
        starts,
        stops,
        source=str(stars.path),
        target=str(target),
        observer=job.observer.model_dump(),
        columns=list(columns),
        selections=[s.selection for s in specs],
        runs=runs,
        abort=str(staging / "ABORT"),
        observables=job.observables.model_dump(mode="json") if job.observables.enabled else None,
        seed=job.seed,
        pure=False,  # unique keys: a shared client may still hold an earlier run's results
    )
    counts = np.zeros(len(specs), dtype=np.int64)
    sorted_runs: list[SortedRun] = []
    outputs = int(cfg.hats) + len(specs) if runs is not None else 0
    # Each output's rows per sky pixel, summed here while the workers convert.
    histograms = [np.zeros(12 * 4**cfg.hats_highest_order, np.int64) for _ in range(outputs)]
    clipped = {"clipped_isochrone": 0, "clipped_photometry": 0}
    try:
        for future in track(futures, "convert"):
            picked, run, stats = future.result()
            for key in clipped:
                clipped[key] += stats[key]
            counts += np.asarray(picked, dtype=np.int64).reshape(len(specs))
            if run is not None:
                sorted_runs.append(run)
                for k, histogram in enumerate(histograms):
                    pixel_histogram([run], k, cfg.hats_highest_order, out=histogram)
    except BaseException:
        # Cancelling would not stop chunks already running, which could then write into the
        # staging directory after it is removed: let queued chunks return at once instead,
        # and wait for every task to end before the error propagates.
        (staging / "ABORT").touch()
        wait_all(futures)
        raise
    mark_complete(target)
    log.info("convert: %d stars in %d chunks -> catalog.zarr", len(stars), len(starts))
    if any(clipped.values()):
        log.info("convert: clipped to the grids (galmock/isochrones.py, galmock/photometry.py): "
                 "%d star(s) with ages or [Fe/H] beyond MIST's, %d with Teff below 3500 K "
                 "(M dwarfs: their luminosity is kept, their colours are 3500 K's), log g, "
                 "[Fe/H] or A0 beyond the photometry grid's",
                    clipped["clipped_isochrone"], clipped["clipped_photometry"])
    # Runs in star_id order: a partition merges its slices by (_healpix_29, star_id).
    return counts.tolist(), HatsInput(sorted(sorted_runs, key=lambda r: r.path), histograms)


def _write_hats(
    job: JobConfig,
    client: Any,
    specs: Sequence[CatalogSpec],
    counts: Sequence[int],
    runs: HatsInput,
    schema: pa.Schema,
    provenance: Mapping[str, Any],
    staging: Path,
) -> ConvertResult:
    """``<staging>/catalog.hats`` and ``<staging>/selections/*.hats`` from the sorted runs."""
    cfg, layout = job.convert, RunLayout(job.run_dir)
    n_rows = int(provenance["source"]["n_rows"])
    result = ConvertResult(n_rows=n_rows, catalog_zarr=layout.catalog_zarr, catalog_hats=None)
    common: dict[str, Any] = {
        "partition_rows": cfg.hats_partition_rows,
        "highest_order": cfg.hats_highest_order,
        "compression": cfg.parquet_compression,
        "compression_level": cfg.parquet_compression_level,
    }
    build = staging / "build"
    output = 0
    if cfg.hats and n_rows:
        description = f"galmock mock catalog of job {job.name}"
        with _partitioning_errors(cfg):
            built = write_hats(
                client,
                runs.runs,
                output,
                build / "catalog",
                job.name,
                schema=schema,
                histogram=runs.histograms[output],
                properties=_hats_properties(provenance, description),
                **common,
            )
        os.replace(built, staging / layout.catalog_hats.name)
        result.catalog_hats = layout.catalog_hats
    output = 1 if cfg.hats else 0
    (staging / layout.selections.name).mkdir()
    for k, (spec, rows) in enumerate(zip(specs, counts), start=output):
        if rows == 0:
            log.warning("convert: selection %s picks no star; nothing written for it", spec.name)
            result.selections[spec.name] = (None, 0)
            continue
        meta = {**provenance, "selection": spec.model_dump(mode="json")}
        with _partitioning_errors(cfg):
            built = write_hats(
                client,
                runs.runs,
                k,
                build / spec.name,
                f"{job.name}-{spec.name}",
                schema=schema.with_metadata({"galmock": json.dumps(meta, sort_keys=True)}),
                skymap=False,
                histogram=runs.histograms[k],
                properties=_hats_properties(meta, spec.description or spec.name),
                **common,
            )
        name = f"{spec.name}.hats"
        os.replace(built, staging / layout.selections.name / name)
        result.selections[spec.name] = (layout.selections / name, rows)
    shutil.rmtree(build, ignore_errors=True)
    return result


@contextlib.contextmanager
def _partitioning_errors(cfg: ConvertConfig) -> Iterator[None]:
    # hats refuses a sky pixel of the finest order that alone exceeds the partition size.
    try:
        yield
    except ValueError as err:
        if "exceeds threshold" not in str(err):
            raise
        raise ConfigError(
            f"convert.hats_partition_rows = {cfg.hats_partition_rows}: {err} at HEALPix order "
            f"{cfg.hats_highest_order}; raise convert.hats_highest_order or hats_partition_rows"
        ) from err


def _load_specs(entries: Sequence[str]) -> list[CatalogSpec]:
    specs = [load_catalog_spec(entry) for entry in entries]
    seen: dict[str, str] = {}
    for entry, spec in zip(entries, specs):
        if spec.name in seen:
            raise InputError(
                f"convert.selections: {seen[spec.name]!r} and {entry!r} are both named "
                f"{spec.name!r}; their outputs would collide"
            )
        seen[spec.name] = entry
    return specs


@contextlib.contextmanager
def _client(job: JobConfig, client: Any) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    with dask_client(job) as started:
        yield started


def _swap_in(staging: Path, layout: RunLayout) -> None:
    """Each product replaces its predecessor with one rename; a product this conversion did not
    make (an empty ``selections``) removes the old one."""
    selections = staging / layout.selections.name
    if selections.is_dir() and not any(selections.iterdir()):
        selections.rmdir()
    for name in layout.convert_products:
        built = staging / name
        replace_path(built if built.exists() else None, layout.root / name)


def _provenance(
    job: JobConfig, stars: StarCatalog, columns: Mapping[str, ColumnSpec]
) -> dict[str, Any]:
    observer = job.observer
    centre = galactocentric_frame(**observer.model_dump()).galcen_coord
    internal = {"format", "complete", "n_rows", "chunk_rows", "columns"}
    return {
        "galmock_version": __version__,
        "job": {"name": job.name, "config": job.model_dump(mode="json", by_alias=True)},
        "source": {
            "path": str(stars.path),
            "format": stars.format,
            "n_rows": len(stars),
            "attrs": {k: v for k, v in stars.attrs.items() if k not in internal},
        },
        "frame": {
            "name": "ICRS",
            "ref_epoch": job.convert.ref_epoch,
            "ref_epoch_unit": "Julian year",
            "galactocentric": {
                "galcen_distance_kpc": observer.galcen_distance_kpc,
                "z_sun_kpc": observer.z_sun_kpc,
                "galcen_v_sun_kms": list(observer.galcen_v_sun_kms),
                "roll_deg": observer.roll_deg,
                "galcen_ra_deg": float(centre.ra.deg),
                "galcen_dec_deg": float(centre.dec.deg),
                "astropy_frame_defaults": "v4.0",
            },
        },
        "units": {name: spec.unit for name, spec in columns.items()},
        "software": {
            p: _version(p)
            for p in ("astropy", "numpy", "zarr", "dask", "hats", "pyarrow")
        },
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _hats_properties(provenance: Mapping[str, Any], description: str) -> dict[str, Any]:
    props = {
        "obs_description": description,
        "galmock_version": provenance["galmock_version"],
        "galmock_job": provenance["job"]["name"],
        "galmock_source": provenance["source"]["path"],
        "galmock_frame": provenance["frame"],
        "galmock_ref_epoch": provenance["frame"]["ref_epoch"],
        "galmock_astropy_version": provenance["software"]["astropy"],
        "galmock_units": provenance["units"],
    }
    if "selection" in provenance:
        props["galmock_selection"] = provenance["selection"]
    return props


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def progress(layout: RunLayout) -> str:
    """What the run directory says about convert (for ``galmock status``)."""
    attrs = zarr_attrs(layout.catalog_zarr)
    if attrs and attrs.get("complete"):
        extra = f", {layout.catalog_hats.name}" if layout.catalog_hats.is_dir() else ""
        return f"{attrs.get('n_rows', 0):,} stars in {layout.catalog_zarr.name}{extra}"
    if layout.convert_staging.exists():
        return f"converting (staged in {layout.convert_staging.name})"
    return f"no {layout.catalog_zarr.name} yet"
