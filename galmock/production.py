"""The ``train`` and ``upsample`` stages across MPI ranks (``mpiexec -n N galmock train JOB``).

Both shard the region plan with :func:`galmock.parallel.mpi.run_tasks` (a largest-first dynamic
queue); without an MPI launcher they run as one rank. Each rank takes one GPU (``cuda:{local
rank % devices}``) when CUDA is available, else the CPU with ``flows.threads`` torch threads.
Any error on any rank ends the whole job with a non-zero exit naming the failing region: inside
the queue through ``run_tasks``, elsewhere through :func:`_abort_on_error`; never a hang.

``train``: every region's ensemble into ``<run>/models/region-NNNN/`` (checkpoints in
``region-NNNN.work/`` until it is saved, so a killed run resumes); a region whose artifact was
trained on the same particles, seed and recipe is skipped. With ``flows.load`` nothing is
trained: the pretrained artifacts are checked instead.

``upsample``: ``<run>/stars.zarr``. Star counts are seeded Poisson draws known up front, so each
region's rows are fixed before sampling (a prefix sum); regions stream batches into their own
whole chunks and the few chunks two regions share are assembled from side pieces at the end
(:class:`galmock.store.BlockCatalog`). Finished regions are recorded (rows, sha256); a rerun
after a crash skips them and redoes the rest, and the catalog only replaces ``stars.zarr`` once
complete. A complete catalog built from the same inputs is left alone.

Preemption (:mod:`galmock.preempt`): on SIGUSR1 or SIGTERM, training checkpoints at the next
epoch boundary and upsampling stops after the batch it is writing (that region is redone by the
rerun); every rank drains the queue without starting new work and the stage exits 75.

Example:
    >>> train_stage(load_job("jobs/demo.yaml"))      # doctest: +SKIP
    >>> upsample_stage(load_job("jobs/demo.yaml"))   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from galmock import __version__, preempt
from galmock.config import FlowsConfig, JobConfig
from galmock.errors import GalmockError, InputError
from galmock.parallel.mpi import SerialComm, run_tasks, world
from galmock.plan import RegionPlan, holdout_mask, read_plan

log = logging.getLogger("galmock.production")

T = TypeVar("T")

# flows settings that change what training produces (not device, threads or sampler speed).
TRAINING_KEYS = (
    "kind", "hidden_features", "hidden_layers", "activation", "rk4_steps", "radial_c",
    "validation_fraction", "batches_per_epoch", "learning_rate", "finetune_learning_rate",
    "patience_epochs", "max_epochs", "ensemble_size", "transforms", "spline_bins",
)  # fmt: skip
PROGRESS_SECONDS = 30.0


# -- ranks ------------------------------------------------------------------------------------


@dataclass
class Rank:
    """This process's place in the job and the device and threads it uses."""

    comm: Any
    rank: int
    size: int
    local: int
    device: Any  # torch.device
    threads: int

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.size}"


def setup_rank(cfg: FlowsConfig) -> Rank:
    """Join the MPI job (if any), pick this rank's device and set its torch threads.

    ``cuda:{local rank % device count}`` when ``flows.device`` is ``auto`` (or a bare ``cuda``)
    and CUDA is available; threads: ``flows.threads``, or for ``auto`` the cores this process
    may use divided by the ranks on its node.
    """
    import torch

    from galmock.flows.base import resolve_device

    comm = world()
    local, on_node = _node_rank(comm)
    if cfg.threads == "auto":
        threads = max(1, len(os.sched_getaffinity(0)) // on_node)
    else:
        threads = int(cfg.threads)
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)  # so "auto" inside the flow code means this GPU
    rank = Rank(comm, comm.Get_rank(), comm.Get_size(), local, device, threads)
    log.info("%s (local %d of %d on %s): device %s, %d torch thread(s)", rank, local, on_node,
             os.uname().nodename, device, threads)
    return rank


def _node_rank(comm: Any) -> tuple[int, int]:
    """(index among the ranks on this node, ranks on this node)."""
    if isinstance(comm, SerialComm):
        return 0, 1
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.Get_rank()), int(node.Get_size())
    finally:
        node.Free()


@contextmanager
def _abort_on_error(rank: Rank, stage: str) -> Iterator[None]:
    """Under MPI, turn an error outside the task queue into ``MPI.Abort``: the other ranks may
    be waiting in a collective call and would otherwise hang."""
    try:
        yield
    except Exception as err:
        if rank.size == 1:
            raise
        sys.stderr.write(f"galmock {stage}: {rank}: error: {err}\n")
        sys.stderr.flush()
        log.error("%s: %s", rank, err)
        rank.comm.Abort(1)


def peak_memory_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def on_root(rank: Rank, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 (file-system changes happen once), its result on every rank."""
    result = fn() if rank.rank == 0 else None
    return result if rank.size == 1 else rank.comm.bcast(result, root=0)


# -- particles and models -----------------------------------------------------------------------


class RegionParticles:
    """The particle store, loaded once per rank: each region's training particles on demand.

    Positions, velocities and ids stay in memory (56 bytes per particle); other columns are read
    for each region's indices only.
    """

    def __init__(self, run_dir: Path, plan: RegionPlan) -> None:
        from galmock.particles import read_particle_store

        self.plan = plan
        self.store = read_particle_store(run_dir / "particles.zarr")
        self.pos = self.store.positions()
        self.vel = self.store.velocities()
        self.ids = self.store["id"][:]
        owner = plan.owner(self.pos)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner[owner >= 0], minlength=len(plan.regions))
        self.members = np.split(order[int((owner < 0).sum()) :], np.cumsum(counts)[:-1])
        self.held = holdout_mask(self.ids, plan.holdout_fraction, plan.holdout_seed)

    def training_indices(self, region_id: int) -> np.ndarray:
        """Owned plus margin particles, minus the held-out ones: what the flows train on."""
        idx = self.plan.training_indices(region_id, self.pos, self.members)
        return idx[~self.held[idx]]

    def phase_space(self, region_id: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.training_indices(region_id)
        return self.pos[idx], self.vel[idx]

    def particles(self, region_id: int) -> Any:
        """The region's training particles with the properties stars inherit."""
        from galmock.upsample import Particles

        idx = self.training_indices(region_id)
        fields = set(self.store.fields)

        def column(name: str) -> np.ndarray:
            if name not in fields:
                return np.full(len(idx), np.nan)
            return np.asarray(self.store[name].get_orthogonal_selection((idx,)), np.float64)

        return Particles(self.pos[idx], self.vel[idx], self.ids[idx], column("mass"),
                         column("age"), column("feh"))


def model_location(job: JobConfig, plan: RegionPlan, region_id: int) -> str:
    """Where region ``region_id``'s artifact is: ``<run>/models/region-NNNN``, or with
    ``flows.load`` the named/pathed artifact (one-region plans) or its ``region-NNNN``."""
    name = f"region-{region_id:04d}"
    if job.flows.load is None:
        return str(job.run_dir / "models" / name)
    from galmock.flows.registry import resolve

    base = resolve(job.flows.load)
    if len(plan.regions) == 1 and _is_artifact(base):
        return base
    return f"{base.rstrip('/')}/{name}"


def _is_artifact(location: str) -> bool:
    from galmock.flows.artifact import read_manifest

    try:
        read_manifest(location)
    except InputError:
        return False
    return True


def artifact_matches(
    location: str | Path, pos: np.ndarray, vel: np.ndarray, cfg: FlowsConfig, seed: int
) -> tuple[bool, str]:
    """Whether the artifact at ``location`` was trained on these particles with this seed and
    recipe; with the reason when not."""
    from galmock.flows.artifact import data_sha256, read_manifest

    if not (Path(location) / "manifest.json").is_file():
        return False, "not trained yet"
    try:
        training = read_manifest(location).get("training", {})
    except InputError as err:
        return False, f"unreadable artifact ({err})"
    if training.get("data_sha256") != data_sha256(pos, vel):
        return False, "trained on other particles"
    if training.get("seed") != seed:
        return False, "trained with another seed"
    then = training.get("config", {})
    changed = [k for k in TRAINING_KEYS if then.get(k) != getattr(cfg, k)]
    if changed:
        return False, f"trained with other flows settings ({', '.join(changed)})"
    return True, "up to date"


def _model_identity(location: str) -> dict[str, Any]:
    """What identifies a trained model's behaviour: architecture, preprocessing, weights."""
    from galmock.flows.artifact import read_manifest

    m = read_manifest(location)
    return {
        "kind": m.get("kind"),
        "architecture": m.get("architecture"),
        "preprocessing": m.get("preprocessing"),
        "region": m.get("region"),
        "weights": [member.get("sha256") for member in m.get("members", [])],
    }


# -- train --------------------------------------------------------------------------------------


def train_stage(job: JobConfig) -> None:
    """``galmock train``: every region's flow ensemble into ``<run>/models/``."""
    rank = setup_rank(job.flows)
    with preempt.handling(), _abort_on_error(rank, "train"):
        _train(job, rank)


def _train(job: JobConfig, rank: Rank) -> None:
    from galmock.train import derive_seed

    plan = read_plan(job.run_dir / "plan.json")
    if job.flows.load is not None:
        _check_pretrained(job, plan, rank)
        return
    models = job.run_dir / "models"
    data: list[RegionParticles] = []  # loaded by the first task this rank runs
    trained: list[int] = []
    started = time.perf_counter()

    def work(rid: int) -> None:
        from galmock.train import fit_ensemble

        if preempt.requested():
            return  # preempted: drain the queue without starting work; the rerun does it
        if not data:
            data.append(RegionParticles(job.run_dir, plan))
        region = plan.regions[rid]
        pos, vel = data[0].phase_space(rid)
        seed = derive_seed(job.seed, "train", rid)
        artifact = models / f"region-{rid:04d}"
        ok, why = artifact_matches(artifact, pos, vel, job.flows, seed)
        if job.upsample.properties == "flow":
            from galmock.flows.property_flow import train_region_properties

            train_region_properties(job, data[0].particles(rid), rid, models)
        if ok:
            log.info("%s: region %d: artifact up to date, skipped", rank, rid)
            return
        log.info("%s: region %d: training on %d particles (%s)", rank, rid, len(pos), why)
        t0 = time.perf_counter()
        workdir = models / f"region-{rid:04d}.work"
        try:
            fit_ensemble(pos, vel, job.flows, seed, region.centre, region.radius,
                         workdir=workdir, artifact=artifact)
        except preempt.Preempted as stop:
            log.info("%s: region %d: %s; the rerun resumes from %s", rank, rid, stop, workdir)
            return
        except GalmockError as err:
            raise type(err)(f"region {rid}: {err}") from err
        shutil.rmtree(workdir, ignore_errors=True)  # the artifact supersedes the checkpoints
        trained.append(rid)
        log.info("%s: region %d: trained in %.1f s -> %s", rank, rid, time.perf_counter() - t0,
                 artifact)

    order = sorted(range(len(plan.regions)), key=lambda r: (-plan.regions[r].training_particles, r))
    mine = run_tasks(order, work, rank.comm, describe=lambda r: f"region {r}")
    if preempt.anywhere(rank.comm):
        preempt.exit_preempted("train", f"{len(trained)} region(s) trained by {rank}")
    log.info("%s: %d region(s) handled, %d trained, in %.1f s, peak memory %.0f MiB", rank,
             len(mine), len(trained), time.perf_counter() - started, peak_memory_mib())
    if rank.rank == 0:
        print(f"{len(plan.regions)} region model(s) in {models}")


def _check_pretrained(job: JobConfig, plan: RegionPlan, rank: Rank) -> None:
    """``flows.load``: check every region has a readable artifact whose ball covers it."""
    from galmock.flows.artifact import read_manifest

    def work(rid: int) -> None:
        location = model_location(job, plan, rid)
        manifest = read_manifest(location)
        region = plan.regions[rid]
        ball = manifest.get("region", {})
        centre = np.asarray(ball.get("centre", (np.nan,) * 3), dtype=np.float64)
        gap = float(np.linalg.norm(centre - np.asarray(region.centre)))
        if gap + region.radius > float(ball.get("r_max", 0.0)) * (1 + 1e-9):
            log.warning("region %d: the model at %s covers the ball %s r = %s, which does not "
                        "contain the region's particles (centre %s, r = %.3g)", rid, location,
                        centre.tolist(), ball.get("r_max"), region.centre, region.radius)
        log.info("%s: region %d: pretrained model %s", rank, rid, location)

    run_tasks(list(range(len(plan.regions))), work, rank.comm, describe=lambda r: f"region {r}")
    if rank.rank == 0:
        print(f"{len(plan.regions)} pretrained region model(s) from {job.flows.load}")


# -- upsample -----------------------------------------------------------------------------------


def upsample_stage(job: JobConfig) -> None:
    """``galmock upsample``: every region's stars into ``<run>/stars.zarr``."""
    if job.upsample.mode == "imf":
        from galmock.upsample import build_imf

        build_imf(job.upsample)  # a bad mass range fails here, before any rank starts work
    rank = setup_rank(job.flows)
    with preempt.handling(), _abort_on_error(rank, "upsample"):
        _upsample(job, rank)


def _upsample(job: JobConfig, rank: Rank) -> None:
    from galmock.store import STAR_COLUMNS, BlockCatalog, RowLayout, is_current
    from galmock.upsample import expected_stars, star_counts

    run = job.run_dir
    plan = read_plan(run / "plan.json")
    cfg = job.upsample
    counts = star_counts(plan.regions, cfg, job.seed)
    lam = expected_stars(plan.regions, cfg)
    locations = [model_location(job, plan, r.id) for r in plan.regions]
    target = run / "stars.zarr"

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


_FRAME = "galactocentric, right-handed, as after ingest (astropy Galactocentric orientation)"
_FRAME_ATTRS = {c: {"frame": _FRAME} for c in ("x", "y", "z", "vx", "vy", "vz")}


def _provenance(job: JobConfig, plan: RegionPlan) -> dict[str, Any]:
    return {
        "job": job.name,
        "seed": job.seed,
        "galmock_version": __version__,
        "upsample": job.upsample.model_dump(mode="json"),
        "flows_kind": job.flows.kind,
        "flows_load": job.flows.load,
        "plan_regions": len(plan.regions),
        "frame": _FRAME,
    }


def _fingerprint(
    job: JobConfig, plan: RegionPlan, counts: np.ndarray, locations: list[str]
) -> str:
    """What the catalog is a function of: seed, settings, plan, counts and model weights
    (not the number of ranks, devices or threads)."""
    payload = {
        "format": "galmock.stars/1",
        "seed": job.seed,
        "upsample": job.upsample.model_dump(mode="json"),
        "plan": {k: v for k, v in plan.to_dict().items() if k != "meta"},
        "counts": counts.tolist(),
        "models": [_model_identity(loc) for loc in locations],
    }
    if job.upsample.properties == "flow":
        # Retraining only the property flows must invalidate the catalog too.
        models = job.run_dir / "models"
        payload["property_flows"] = [
            _model_identity(str(models / f"region-{r.id:04d}-properties")) for r in plan.regions
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
        catalog: Any,
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
        import torch

        from galmock.flows.artifact import load_artifact
        from galmock.flows.base import resolve_chunk_rows, resolve_compile
        from galmock.upsample import (
            ParentMatcher,
            build_imf,
            owned_acceptance_prior,
            owned_batches,
            owned_volume,
            region_seed,
            star_columns,
            star_masses,
        )

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
                self.data = RegionParticles(job.run_dir, self.plan)
            particles = self.data.particles(rid)
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

            last = time.perf_counter()
            for batch, pos, vel in owned_batches(
                propose, owned_volume(self.plan, rid), n, cfg.batch_rows,
                owned_acceptance_prior(region), label=f"region {rid}",
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
                if preempt.requested():
                    # Stop between batches; the region is not recorded, so the rerun redoes it
                    # (its batches are seeded, so identically).
                    log.info("%s: region %d: preempted after %d batch(es), %d of %d stars; "
                             "left for the rerun", rank, rid, batches, writer.rows, n)
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


def _property_flow(job: JobConfig, rid: int, device: Any) -> Any:
    """``upsample.properties: flow``: region ``rid``'s property flow (else None)."""
    if job.upsample.properties != "flow":
        return None
    from galmock.flows.property_flow import load_property_flow

    location = job.run_dir / "models" / f"region-{rid:04d}-properties"
    if not (location / "manifest.json").is_file():
        raise InputError(f"{location}: no property flow; run `galmock train` with "
                         "upsample.properties: flow (it trains one per region)")
    return load_property_flow(location, device=device)
