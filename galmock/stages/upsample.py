"""The ``upsample`` stage across MPI ranks (``mpiexec -n N galmock upsample JOB``):
``<run>/stars.zarr``.

Star counts are seeded Poisson draws known up front (:func:`galmock.sampling.star_counts`), so
each region's rows are fixed before sampling (a prefix sum); regions stream batches into their
own whole chunks and the few chunks two regions share are assembled from side pieces at the end
(:class:`galmock.store.BlockCatalog`). Finished regions are recorded (rows, sha256); a rerun
after a crash skips them and redoes the rest, and the catalog only replaces ``stars.zarr`` once
complete. A complete catalog built from the same inputs is left alone. Every draw is seeded by
(job seed, region, batch), so the catalog does not depend on the number of ranks.

Preemption (:mod:`galmock.preempt`): on SIGUSR1 or SIGTERM upsampling stops after the batch it
is writing and checkpoints that region (its rows so far, the buffered tail and the sampler's
state: :meth:`galmock.store.BlockWriter.checkpoint`); every rank drains the queue without
starting new work and the stage exits 75. Regions also checkpoint every
``upsample.checkpoint_seconds``, so a killed job loses at most that much of each region: the
rerun continues every region from its last checkpointed batch, to the same catalog.

Example:
    >>> run(load_job("jobs/demo.yaml"))  # needs the trained models  # doctest: +SKIP
    1,918,749 stars in 4 region(s) -> .../runs/demo/stars.zarr

    The star counts are known before any model is loaded:

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
from typing import Any

import numpy as np
import torch

from galmock import preempt
from galmock.config import JobConfig
from galmock.errors import GalmockError, InputError
from galmock.flows.artifact import load_artifact
from galmock.flows.base import resolve_chunk_rows, resolve_compile
from galmock.flows.property_flow import PropertyFlow, load_property_flow
from galmock.layout import RunLayout
from galmock.models import model_identity, model_location, require_current
from galmock.parallel.mpi import (
    Rank,
    abort_on_error,
    on_root,
    peak_memory_mib,
    root_exclusive,
    run_tasks,
    setup_rank,
)
from galmock.plan import RegionPlan, read_plan
from galmock.regions import RegionParticles
from galmock.sampling import (
    ParentMatcher,
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
    RowLayout,
    StarCatalog,
    is_current,
    zarr_attrs,
)
from galmock.version import __version__

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
    warning = size_warning(float(counts.sum()), cfg)
    if warning and rank.rank == 0:
        log.warning("%s", warning)
    lam = expected_stars(plan.regions, cfg)
    locations = [model_location(job, plan, r.id) for r in plan.regions]
    target = layout.stars

    def prepare() -> dict[str, Any]:
        fingerprint = _fingerprint(job, plan, counts, locations)
        if is_current(target, fingerprint):
            return {"current": True}
        catalog = BlockCatalog.prepare(
            target, RowLayout(tuple(counts.tolist()), cfg.chunk_rows), STAR_COLUMNS, fingerprint,
            _provenance(job, plan), compressor=cfg.compressor, array_attrs=_FRAME_ATTRS,
        )  # fmt: skip
        return {"current": False, "done": sorted(catalog.done())}

    state = on_root(rank, prepare)
    if state["current"]:
        log.info("upsample: %s is complete and up to date; nothing to do", target)
        if rank.rank == 0:
            print(f"{int(counts.sum()):,} stars in {target} (up to date)")
        return
    catalog = BlockCatalog.open(target)
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
    run_tasks(catalog.layout.edge_chunks(), catalog.assemble, rank.comm,
              describe=lambda k: f"edge chunk {k}")
    elapsed = time.perf_counter() - started
    log.info("%s: %d region(s), %d stars in %.1f s (%.0f stars/s), cpu %.1f s, peak memory "
             "%.0f MiB", rank, sampler.regions, sampler.stars, elapsed,
             sampler.stars / max(elapsed, 1e-9), time.process_time() - cpu, peak_memory_mib())

    def finish() -> int:
        catalog.finalize()
        return int(counts.sum())

    total = on_root(rank, finish)
    if rank.rank == 0:
        log.info("upsample: %d stars in %d region(s) -> %s", total, len(counts), target)
        print(f"{total:,} stars in {len(counts)} region(s) -> {target}")


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
        catalog: BlockCatalog,
        counts: np.ndarray,
        lam: np.ndarray,
        locations: list[str],
    ) -> None:
        self.job, self.plan, self.rank, self.catalog = job, plan, rank, catalog
        self.counts, self.lam, self.locations = counts, lam, locations
        self.data: RegionParticles | None = None
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
                         rank, rid, tally["batch"], writer.rows, n)
            last = saved = time.perf_counter()
            owns = owned_volume(self.plan, rid, support_radius(particles.pos))
            for batch, pos, vel in owned_batches(
                propose, owns, n, cfg.batch_rows,
                owned_acceptance_prior(region), label=f"region {rid}", tally=tally,
                start=tally if resumed is not None else None,
            ):  # fmt: skip
                t = time.perf_counter()
                parent = matcher.query(pos, vel)
                rng = np.random.default_rng(region_seed(job.seed, "upsample-mass", rid, batch))
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
                stop = preempt.requested() and writer.rows < n  # a finished region is recorded
                if writer.rows < n and (stop or time.perf_counter() - saved
                                        > cfg.checkpoint_seconds):
                    # Batches are seeded, so the rerun continues from here exactly as this run
                    # would have: the sampler's counts, the rows and the running mass suffice.
                    writer.checkpoint({"sampler": dict(tally), "stellar_mass": stellar_mass,
                                       "batches": batches})
                    saved = time.perf_counter()
                if stop:
                    log.info("%s: region %d: preempted after %d batch(es), %d of %d stars; "
                             "checkpointed for the rerun", rank, rid, batches, writer.rows, n)
                    return
                if time.perf_counter() - last > PROGRESS_SECONDS:
                    last = time.perf_counter()
                    log.info("%s: region %d: %d of %d stars (%.0f%%)", rank, rid, writer.rows, n,
                             100.0 * writer.rows / n)
        record = writer.close()
        self.catalog.record({
            **record,
            "region": rid,
            "expected_rows": float(self.lam[rid]),
            "owned_mass_msun": float(region.owned_mass),
            "stellar_mass_msun": stellar_mass,
            "batches": batches,
        })  # fmt: skip
        self.regions += 1
        self.stars += n
        dt = time.perf_counter() - t0
        log.info("%s: region %d: %d stars in %d batch(es), %.1f s (%.0f stars/s; flow %.1f s, "
                 "parents %.1f s, write %.1f s)", rank, rid, n, batches, dt, n / max(dt, 1e-9),
                 spent["flow"], spent["parents"], spent["write"])


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
    state = BlockCatalog.progress(staging)
    if state is not None:
        regions_done, regions, rows, total = state
        return (
            f"{regions_done} of {regions} region(s) upsampled, {rows:,} of {total:,} stars "
            "written"
        )
    attrs = zarr_attrs(layout.stars)
    if attrs and attrs.get("complete"):
        return f"{attrs.get('n_rows', 0):,} stars in {layout.stars.name} (complete)"
    return f"no {layout.stars.name} yet"
