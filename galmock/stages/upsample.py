"""The ``upsample`` stage across MPI ranks (``mpiexec -n N galmock upsample JOB``):
``<run>/stars.zarr``.

Star counts are seeded Poisson draws known up front (:func:`galmock.sampling.star_counts`): the
number of owned draws each region makes. Without a magnitude limit every draw is a star, so each
region's rows are fixed before sampling (a prefix sum); regions stream batches into their own
whole chunks and the few chunks two regions share are assembled from side pieces at the end
(:class:`galmock.store.BlockCatalog`). With ``observables.magnitude_limit`` (the default) only
the draws that are visible stars are kept (:mod:`galmock.visibility`), so a region's rows are
known once it is sampled: they go to pieces that are assembled into every chunk at the end
(:class:`galmock.store.OpenBlockCatalog`). Finished regions are recorded (rows, sha256, owned
draws); a rerun after a crash skips them and redoes the rest, and the catalog only replaces
``stars.zarr`` once complete. A complete catalog built from the same inputs is left alone. Every
draw and every thinning uniform is seeded by (job seed, region, batch), so the catalog does not
depend on the number of ranks.

Preemption (:mod:`galmock.preempt`): on SIGUSR1 or SIGTERM upsampling stops after the batch it
is writing and checkpoints that region (its rows so far, the buffered tail and the sampler's
state: :meth:`galmock.store.BlockWriter.checkpoint`); every rank drains the queue without
starting new work and the stage exits 75. Regions also checkpoint every
``upsample.checkpoint_seconds``, so a killed job loses at most that much of each region: the
rerun continues every region from its last checkpointed batch, to the same catalog.

Example:
    >>> run(load_job("jobs/demo.yaml"))  # needs the trained models  # doctest: +SKIP
    41,366 stars with G <= 20.7 of 1,918,749 drawn in 4 region(s) -> .../runs/demo/stars.zarr

    The draws are counted before any model is loaded:

    >>> from galmock.plan import read_plan
    >>> from galmock.sampling import star_counts
    >>> from galmock.stages.plan import run as run_plan
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=4000", "plan.target_particles=1000"])
    >>> _ = run_ingest(job), run_plan(job)
    >>> layout = RunLayout(job.run_dir)
    >>> counts = star_counts(read_plan(layout.plan).regions, job.upsample, job.seed)
    >>> counts.tolist(), f"{counts.sum():,}"  # set by the galaxy's mass, not its particle count
    ([479900, 479750, 479794, 479305], '1,918,749')
    >>> progress(layout)
    'no stars.zarr yet'
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from galmock import preempt
from galmock.config import JobConfig
from galmock.errors import GalmockError, InputError
from galmock.flows.artifact import load_artifact
from galmock.flows.base import resolve_chunk_rows, resolve_compile
from galmock.flows.property_flow import PropertyFlow, load_property_flow
from galmock.imf import BrokenPowerLawIMF
from galmock.layout import RunLayout
from galmock.models import model_identity, model_location, require_current
from galmock.observables import Observatory, build_observatory
from galmock.parallel.mpi import (
    Rank,
    abort_on_error,
    on_root,
    peak_memory_mib,
    root_exclusive,
    run_tasks,
    setup_rank,
)
from galmock.photometry import PHOTOMETRY_GRID
from galmock.plan import RegionPlan, read_plan
from galmock.regions import RegionParticles
from galmock.sampling import (
    ParentMatcher,
    Particles,
    build_imf,
    expected_stars,
    owned_acceptance_prior,
    owned_batches,
    owned_volume,
    size_warning,
    star_columns,
    star_counts,
    star_masses,
    support_radius,
)
from galmock.seeds import region_seed
from galmock.store import (
    STAR_COLUMNS,
    BlockCatalog,
    OpenBlockCatalog,
    RowLayout,
    StarCatalog,
    is_current,
    zarr_attrs,
)
from galmock.version import __version__
from galmock.visibility import VisibilityTable, extinction_floor, thin_to_visible, visibility_table

log = logging.getLogger("galmock.upsample")

PROGRESS_SECONDS = 30.0


def run(job: JobConfig) -> None:
    """``galmock upsample``: every region's stars into ``<run>/stars.zarr``."""
    if job.upsample.mode == "imf":
        build_imf(job.upsample)  # a bad mass range fails here, before any rank starts work
    rank = setup_rank(job.flows.device, job.flows.threads)
    with preempt.handling(), abort_on_error(rank, "upsample"), \
            root_exclusive(rank, RunLayout(job.run_dir).lock("upsample"), "upsample"):
        _upsample(job, rank)


def _upsample(job: JobConfig, rank: Rank) -> None:
    layout = RunLayout(job.run_dir)
    plan = read_plan(layout.plan)
    cfg = job.upsample
    counts = star_counts(plan.regions, cfg, job.seed)
    # With a magnitude limit the catalog holds only the visible few of these draws.
    warning = None if magnitude_limited(job) else size_warning(float(counts.sum()), cfg)
    if warning and rank.rank == 0:
        log.warning("%s", warning)
    lam = expected_stars(plan.regions, cfg)
    locations = [model_location(job, plan, r.id) for r in plan.regions]
    target = layout.stars
    limited = magnitude_limited(job)

    def prepare() -> dict[str, Any]:
        fingerprint = _fingerprint(job, plan, counts, locations)
        if is_current(target, fingerprint):
            return {"current": True, "rows": int(zarr_attrs(target)["n_rows"])}
        catalog: BlockCatalog | OpenBlockCatalog
        if limited:  # how many stars each region keeps is known only once it is sampled
            catalog = OpenBlockCatalog.prepare(
                target, len(counts), STAR_COLUMNS, fingerprint, _provenance(job, plan),
                chunk_rows=cfg.chunk_rows, compressor=cfg.compressor, array_attrs=_FRAME_ATTRS,
            )  # fmt: skip
        else:
            catalog = BlockCatalog.prepare(
                target, RowLayout(tuple(counts.tolist()), cfg.chunk_rows), STAR_COLUMNS,
                fingerprint, _provenance(job, plan), compressor=cfg.compressor,
                array_attrs=_FRAME_ATTRS,
            )  # fmt: skip
        return {"current": False, "done": sorted(catalog.done())}

    state = on_root(rank, prepare)
    if state["current"]:
        log.info("upsample: %s is complete and up to date; nothing to do", target)
        if rank.rank == 0:
            print(f"{state['rows']:,} stars in {target} (up to date)")
        return
    catalog = (OpenBlockCatalog if limited else BlockCatalog).open(target)
    done = set(state["done"])
    pending = sorted((r for r in range(len(counts)) if r not in done),
                     key=lambda r: (-int(counts[r]), r))
    if done and rank.rank == 0:
        log.info("upsample: resuming: %d of %d region(s) already complete, skipped", len(done),
                 len(counts))
    sampler = _RegionSampler(job, plan, rank, catalog, counts, lam, locations)
    started, cpu = time.perf_counter(), time.process_time()
    run_tasks(pending, sampler.run, rank.comm, describe=lambda r: f"region {r}")
    if preempt.anywhere(rank.comm):
        preempt.exit_preempted("upsample", f"{sampler.regions} region(s) finished by {rank}")
    if isinstance(catalog, OpenBlockCatalog):
        chunks = list(range(on_root(rank, catalog.allocate)))  # every chunk, from the pieces
    else:
        chunks = catalog.layout.edge_chunks()  # the chunks two regions share
    run_tasks(chunks, catalog.assemble, rank.comm, describe=lambda k: f"chunk {k}")
    elapsed = time.perf_counter() - started
    log.info("%s: %d region(s), %d draws in %.1f s (%.0f draws/s), cpu %.1f s, peak memory "
             "%.0f MiB", rank, sampler.regions, sampler.stars, elapsed,
             sampler.stars / max(elapsed, 1e-9), time.process_time() - cpu, peak_memory_mib())

    def finish() -> int:
        rows = sum(int(r["rows"]) for r in catalog.done().values())
        catalog.finalize()
        return rows

    total = on_root(rank, finish)
    if rank.rank == 0:
        log.info("upsample: %d stars in %d region(s) -> %s", total, len(counts), target)
        seen = (f" with G <= {job.observables.magnitude_limit:g} of {int(counts.sum()):,} drawn"
                if limited else "")
        print(f"{total:,} stars{seen} in {len(counts)} region(s) -> {target}")


def grid_identity() -> dict[str, str]:
    """What the isochrone and photometry grids are: a new grid changes which stars are seen."""
    photometry = (resources.files("galmock") / "data" / PHOTOMETRY_GRID).read_bytes()
    return {"lachesis-grids": version("lachesis-grids"),
            "photometry_sha256": hashlib.sha256(photometry).hexdigest()}


def magnitude_limited(job: JobConfig) -> bool:
    """Whether ``upsample`` keeps only the stars within ``observables.magnitude_limit``."""
    return job.magnitude_limit is not None


# Settings that change how the stage runs, never the catalog.
_RUNTIME_ONLY = {"checkpoint_seconds", "warn_stars"}
_FRAME = "galactocentric, right-handed, as after ingest (astropy Galactocentric orientation)"
_FRAME_ATTRS = {c: {"frame": _FRAME} for c in ("x", "y", "z", "vx", "vy", "vz")}


def _provenance(job: JobConfig, plan: RegionPlan) -> dict[str, Any]:
    return {
        "job": job.name,
        "seed": job.seed,
        "galmock_version": __version__,
        "upsample": job.upsample.model_dump(mode="json", exclude=_RUNTIME_ONLY),
        "flows_kind": job.flows.kind,
        "flows_load": job.flows.load,
        "plan_regions": len(plan.regions),
        "frame": _FRAME,
        # Set: only stars with true G within it were kept (validate then checks the phase-space
        # fidelity on draws of the models, not on these stars).
        "magnitude_limit": job.observables.magnitude_limit if magnitude_limited(job) else None,
    }


def current_fingerprint(job: JobConfig) -> str:
    """The fingerprint a ``stars.zarr`` made now from the run's plan, models and the job's
    settings would record: a catalog recording another one is stale."""
    plan = read_plan(RunLayout(job.run_dir).plan)
    counts = star_counts(plan.regions, job.upsample, job.seed)
    return _fingerprint(job, plan, counts, [model_location(job, plan, r.id) for r in plan.regions])


def require_current_stars(job: JobConfig, catalog: StarCatalog) -> None:
    """Refuse a ``stars.zarr`` made from other inputs than the job's (the plan, models, seed or
    upsample settings changed since); catalogs not written by ``galmock upsample`` (no
    fingerprint) are taken as they are.

    Raises:
        InputError: naming the catalog and what to rerun.
    """
    recorded = catalog.attrs.get("fingerprint")
    if recorded is not None and recorded != current_fingerprint(job):
        raise InputError(
            f"{catalog.path}: stale: made from other inputs than this job's (the plan, models, "
            "seed or upsample settings changed since): rerun `galmock upsample`"
        )


def _fingerprint(
    job: JobConfig, plan: RegionPlan, counts: np.ndarray, locations: list[str]
) -> str:
    """What the catalog is a function of: seed, settings, plan, counts and model weights
    (not the number of ranks, devices or threads)."""
    payload = {
        "format": "galmock.stars/2",
        "seed": job.seed,
        "upsample": job.upsample.model_dump(mode="json", exclude=_RUNTIME_ONLY),
        "plan": {k: v for k, v in plan.to_dict().items() if k != "meta"},
        "counts": counts.tolist(),
        "models": [model_identity(loc) for loc in locations],
    }
    if magnitude_limited(job):
        # What decides which stars are seen: the limit, the isochrones, the dust, the observer.
        payload["visibility"] = {
            "observables": job.observables.model_dump(mode="json", exclude={"release"}),
            "observer": list(job.observer.sun_position_kpc),
            "format": "galmock.visibility/1",
            "grids": grid_identity(),
        }
    if job.upsample.properties == "flow":
        # Retraining only the property flows must invalidate the catalog too.
        layout = RunLayout(job.run_dir)
        payload["property_flows"] = [
            model_identity(layout.property_model(r.id)) for r in plan.regions
        ]
    text = json.dumps(payload, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class _RegionSampler:
    """The upsample task: one region's stars, streamed batch by batch into the catalog."""

    def __init__(
        self,
        job: JobConfig,
        plan: RegionPlan,
        rank: Rank,
        catalog: BlockCatalog | OpenBlockCatalog,
        counts: np.ndarray,
        lam: np.ndarray,
        locations: list[str],
    ) -> None:
        self.job, self.plan, self.rank, self.catalog = job, plan, rank, catalog
        self.counts, self.lam, self.locations = counts, lam, locations
        self.data: RegionParticles | None = None
        self.observatory: Observatory | None = None  # loaded once per rank (~1 s)
        self.regions = self.stars = 0

    def run(self, rid: int) -> None:
        try:
            self._run(rid)
        except GalmockError as err:
            raise type(err)(f"region {rid}: {err}") from err

    def _run(self, rid: int) -> None:
        job, cfg, rank = self.job, self.job.upsample, self.rank
        if preempt.requested():
            return  # preempted: drain the queue without starting work; the rerun does it
        n = int(self.counts[rid])
        region = self.plan.regions[rid]
        t0 = time.perf_counter()
        log.info("%s: region %d: %d stars (expected %.4g) from %s", rank, rid, n, self.lam[rid],
                 self.locations[rid])
        writer = self.catalog.writer(rid)
        stellar_mass = 0.0
        batches = 0
        spent = {"flow": 0.0, "parents": 0.0, "write": 0.0}
        if n:
            if self.data is None:
                self.data = RegionParticles(RunLayout(job.run_dir).training, self.plan)
            particles = self.data.particles(rid)
            if job.flows.load is None:  # the run's own models: trained on these particles?
                require_current(self.locations[rid], particles.pos, particles.vel, job, rid,
                                self.data.training_set(rid).weight)
            matcher = ParentMatcher(particles.pos, particles.vel, rank.device)
            model = load_artifact(self.locations[rid], device=rank.device)
            model.configure(chunk_rows=resolve_chunk_rows(job.flows.chunk_rows, rank.device),
                            compile=resolve_compile(job.flows.compile, rank.device))
            imf = build_imf(cfg) if cfg.mode == "imf" else None
            properties = _property_flow(job, rid, rank.device)
            visible = self._visibility(rid, particles, imf) if magnitude_limited(job) else None

            def propose(m: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
                t = time.perf_counter()
                gen = torch.Generator().manual_seed(region_seed(job.seed, "upsample", rid, batch))
                pos, vel, _ = model.sample(m, gen)
                out = pos.cpu().numpy(), vel.cpu().numpy()
                spent["flow"] += time.perf_counter() - t
                return out

            tally: dict[str, int] = {}
            resumed = writer.resume()  # a checkpoint of this region: continue from its batch
            if resumed is not None:
                tally = dict(resumed["sampler"])
                stellar_mass, batches = float(resumed["stellar_mass"]), int(resumed["batches"])
                log.info("%s: region %d: resuming at batch %d, %d of %d stars already sampled",
                         rank, rid, tally["batch"], tally["got"], n)
            last = saved = time.perf_counter()
            owns = owned_volume(self.plan, rid, support_radius(particles.pos))
            for batch, pos, vel in owned_batches(
                propose, owns, n, cfg.batch_rows,
                owned_acceptance_prior(region), label=f"region {rid}", tally=tally,
                start=tally if resumed is not None else None,
            ):  # fmt: skip
                t = time.perf_counter()
                if visible is not None:  # observables.magnitude_limit: the visible ones only
                    rows, parent, mass = visible.thin(pos, vel, matcher, region_seed(
                        job.seed, "upsample-visible", rid, batch))
                    pos, vel = pos[rows], vel[rows]
                else:
                    parent = matcher.query(pos, vel)
                    rng = np.random.default_rng(
                        region_seed(job.seed, "upsample-mass", rid, batch))
                    mass = star_masses(cfg, len(pos), particles.mass[parent], rng, imf)
                cols = star_columns(pos, vel, parent, particles, mass, rid)
                if properties is not None:  # upsample.properties: flow
                    gen = torch.Generator().manual_seed(
                        region_seed(job.seed, "upsample-properties", rid, batch))
                    for name, values in properties.sample(pos, vel, gen).items():
                        cols[name] = values.astype(np.float32)
                stellar_mass += float(cols["mass"].astype(np.float64).sum())
                spent["parents"] += time.perf_counter() - t
                t = time.perf_counter()
                writer.append(cols)
                spent["write"] += time.perf_counter() - t
                batches += 1
                unfinished = tally["got"] < n  # draws owned so far (a finished region is recorded)
                stop = preempt.requested() and unfinished
                if unfinished and (stop or time.perf_counter() - saved > cfg.checkpoint_seconds):
                    # Batches are seeded, so the rerun continues from here exactly as this run
                    # would have: the sampler's counts, the rows and the running mass suffice.
                    writer.checkpoint({"sampler": dict(tally), "stellar_mass": stellar_mass,
                                       "batches": batches})
                    saved = time.perf_counter()
                if stop:
                    log.info("%s: region %d: preempted after %d batch(es), %d of %d draws; "
                             "checkpointed for the rerun", rank, rid, batches, tally["got"], n)
                    return
                if time.perf_counter() - last > PROGRESS_SECONDS:
                    last = time.perf_counter()
                    log.info("%s: region %d: %d of %d draws (%.0f%%), %d stars", rank, rid,
                             tally["got"], n, 100.0 * tally["got"] / n, writer.rows)
        record = writer.close()
        self.catalog.record({
            **record,
            "region": rid,
            "owned_draws": n,
            "expected_rows": float(self.lam[rid]),
            "owned_mass_msun": float(region.owned_mass),
            "stellar_mass_msun": stellar_mass,
            "batches": batches,
        })  # fmt: skip
        self.regions += 1
        self.stars += n  # draws: the rate below is the sampler's
        dt = time.perf_counter() - t0
        log.info("%s: region %d: %d stars of %d draws in %d batch(es), %.1f s (%.0f draws/s; "
                 "flow %.1f s, parents %.1f s, write %.1f s)", rank, rid, record["rows"], n,
                 batches, dt, n / max(dt, 1e-9), spent["flow"], spent["parents"], spent["write"])

    def _visibility(self, rid: int, particles: Particles, imf: BrokenPowerLawIMF | None
                    ) -> _VisibleThinning:
        """Region ``rid``'s magnitude-limited thinning (its particles are the populations)."""
        t = time.perf_counter()
        if self.observatory is None:
            self.observatory = build_observatory(self.job.observables, self.job.observer)
        missing = ~(np.isfinite(particles.age) & np.isfinite(particles.feh))
        if missing.any():
            raise InputError(
                f"{missing.sum()} training particle(s) without an age or [Fe/H] (first: id "
                f"{int(particles.id[np.argmax(missing)])}): a magnitude limit needs both; set "
                "observables.magnitude_limit: null (or observables.enabled: false)")
        assert imf is not None  # observables need imf mode (config)
        # The values the catalog stores (float32): photometry is computed from those.
        age = particles.age.astype(np.float32).astype(np.float64)
        feh = particles.feh.astype(np.float32).astype(np.float64)
        table = visibility_table(self.observatory.isochrones, self.observatory.photometry, imf,
                                 age, feh, threads=torch.get_num_threads())
        log.info("%s: region %d: visible-mass table of %d populations in %.1f s", self.rank,
                 rid, len(age), time.perf_counter() - t)
        return _VisibleThinning(table, self.observatory, imf, self.job.observables.magnitude_limit,
                                extinction_floor(self.observatory.photometry), age, feh)


@dataclass(frozen=True)
class _VisibleThinning:
    """One region's magnitude-limited thinning (galmock.visibility) with its inputs bound."""

    table: VisibilityTable
    observatory: Observatory
    imf: BrokenPowerLawIMF
    limit: float
    floor: float
    age: np.ndarray
    feh: np.ndarray

    def thin(self, pos: np.ndarray, vel: np.ndarray, matcher: ParentMatcher, seed: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The visible stars among a batch of owned draws: rows, parents, masses."""
        uniforms = np.random.default_rng(seed).random((len(pos), 3))
        return thin_to_visible(self.table, self.observatory, self.imf, self.limit, self.floor,
                               pos, lambda rows: matcher.query(pos[rows], vel[rows]), self.age,
                               self.feh, uniforms)


def _property_flow(job: JobConfig, rid: int, device: torch.device) -> PropertyFlow | None:
    """``upsample.properties: flow``: region ``rid``'s property flow (else None)."""
    if job.upsample.properties != "flow":
        return None
    location = RunLayout(job.run_dir).property_model(rid)
    if not (location / "manifest.json").is_file():
        raise InputError(f"{location}: no property flow; run `galmock train` with "
                         "upsample.properties: flow (it trains one per region)")
    return load_property_flow(location, device=device)


def progress(layout: RunLayout) -> str:
    """What the run directory says about upsample (for ``galmock status``)."""
    staging = BlockCatalog.staging_dir(layout.stars)
    state = BlockCatalog.progress(staging) or OpenBlockCatalog.progress(staging)
    if state is not None:
        regions_done, regions, rows, total = state
        of = f" of {total:,}" if total is not None else ""
        return f"{regions_done} of {regions} region(s) upsampled, {rows:,}{of} stars written"
    attrs = zarr_attrs(layout.stars)
    if attrs and attrs.get("complete"):
        return f"{attrs.get('n_rows', 0):,} stars in {layout.stars.name} (complete)"
    return f"no {layout.stars.name} yet"
