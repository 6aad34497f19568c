"""The ``train`` stage across MPI ranks (``mpiexec -n N galmock train JOB``).

Every region's flow ensemble goes to ``<run>/models/region-NNNN/`` (checkpoints in
``region-NNNN.work/`` until it is saved, so a killed run resumes). Regions are shared over the
ranks by the largest-first queue of :func:`galmock.parallel.mpi.run_tasks`; without an MPI
launcher the stage runs as one rank. A region whose artifact was trained on the same particles,
seed and recipe is skipped (:func:`galmock.models.artifact_matches`). With ``flows.load``
nothing is trained: the pretrained artifacts are checked instead. With
``upsample.properties: flow`` each region's property flow trains here too.

Preemption (:mod:`galmock.preempt`): on SIGUSR1 or SIGTERM, training checkpoints at the next
epoch boundary, every rank drains the queue without starting new work and the stage exits 75.
Any error on any rank ends the whole job with a non-zero exit naming the failing region.

Example:
    >>> run(load_job("jobs/demo.yaml"))  # trains 4 regions: minutes  # doctest: +SKIP
    4 region model(s) in .../runs/demo/models

    Before training, ``galmock status`` reads:

    >>> from galmock.stages.plan import run as run_plan
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=4000", "plan.target_particles=1000"])
    >>> _ = run_ingest(job), run_plan(job)
    >>> progress(RunLayout(job.run_dir))
    '0 of 4 region model(s) trained'
"""

from __future__ import annotations

import logging
import math
import shutil
import time

import numpy as np

from galmock import preempt
from galmock.config import JobConfig
from galmock.errors import GalmockError
from galmock.flows.artifact import read_manifest
from galmock.flows.property_flow import train_property_flow
from galmock.flows.training import fit_ensemble
from galmock.layout import RunLayout
from galmock.models import artifact_matches, model_location, training_seed
from galmock.parallel.mpi import (
    Rank,
    abort_on_error,
    peak_memory_mib,
    root_exclusive,
    run_tasks,
    setup_rank,
)
from galmock.plan import RegionPlan, read_plan
from galmock.regions import RegionParticles
from galmock.seeds import derive_seed
from galmock.stages.plan import region_count

log = logging.getLogger("galmock.train")


def run(job: JobConfig) -> None:
    """``galmock train``: every region's flow ensemble into ``<run>/models/``."""
    rank = setup_rank(job.flows.device, job.flows.threads)
    with preempt.handling(), abort_on_error(rank, "train"), \
            root_exclusive(rank, RunLayout(job.run_dir).lock("train"), "train"):
        _train(job, rank)


def _train(job: JobConfig, rank: Rank) -> None:
    layout = RunLayout(job.run_dir)
    plan = read_plan(layout.plan)
    if job.flows.load is not None:
        _check_pretrained(job, plan, rank)
        return
    data: list[RegionParticles] = []  # loaded by the first task this rank runs
    trained: list[int] = []
    started = time.perf_counter()

    def work(rid: int) -> None:
        if preempt.requested():
            return  # preempted: drain the queue without starting work; the rerun does it
        if not data:
            data.append(RegionParticles(layout.training, plan))
        pos, vel, weight = data[0].training_set(rid)
        seed = training_seed(job.seed, rid)
        artifact = layout.model(rid)
        ok, why = artifact_matches(artifact, pos, vel, job.flows, seed, weight)
        if job.upsample.properties == "flow":
            _train_properties(job, data[0], rid, layout)
        if ok:
            log.info("%s: region %d: artifact up to date, skipped", rank, rid)
            return
        log.info("%s: region %d: training on %d particles (%s)", rank, rid, len(pos), why)
        t0 = time.perf_counter()
        workdir = layout.model_workdir(rid)
        try:
            centre, radius = plan.position_map(rid)
            fit_ensemble(pos, vel, job.flows.spec(), job.flows.training, seed, centre, radius,
                         workdir=workdir, artifact=artifact, runtime=job.flows.runtime(),
                         weight=weight)
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
        print(f"{len(plan.regions)} region model(s) in {layout.models}")


def _train_properties(job: JobConfig, data: RegionParticles, rid: int, layout: RunLayout) -> None:
    """``upsample.properties: flow``: region ``rid``'s property flow, unless a current one is
    there (``models/region-NNNN-properties``).

    No training weights: the flow is conditional on the phase-space position, and a thinned
    margin drops particles by position alone, which leaves p(properties | r, v) unchanged."""
    particles = data.particles(rid)
    train_property_flow(
        layout.property_model(rid), layout.property_workdir(rid), particles.pos, particles.vel,
        {"age": particles.age, "feh": particles.feh}, job.upsample.property_flow,
        job.flows.training, job.flows.activation, derive_seed(job.seed, "train-properties", rid),
        label=f"region {rid} properties", runtime=job.flows.runtime(),
    )  # fmt: skip


def _check_pretrained(job: JobConfig, plan: RegionPlan, rank: Rank) -> None:
    """``flows.load``: check every region has a readable artifact whose ball covers it."""

    def work(rid: int) -> None:
        location = model_location(job, plan, rid)
        manifest = read_manifest(location)
        region = plan.regions[rid]
        ball = manifest.get("region", {})
        centre = np.asarray(ball.get("centre", (np.nan,) * 3), dtype=np.float64)
        gap = float(np.linalg.norm(centre - np.asarray(region.centre)))
        r_max = math.inf if ball.get("r_max", 0.0) is None else float(ball.get("r_max", 0.0))
        if gap + region.radius > r_max * (1 + 1e-9):
            log.warning("region %d: the model at %s covers the ball %s r = %s, which does not "
                        "contain the region's particles (centre %s, r = %.3g)", rid, location,
                        centre.tolist(), ball.get("r_max"), region.centre, region.radius)
        log.info("%s: region %d: pretrained model %s", rank, rid, location)

    run_tasks(list(range(len(plan.regions))), work, rank.comm, describe=lambda r: f"region {r}")
    if rank.rank == 0:
        print(f"{len(plan.regions)} pretrained region model(s) from {job.flows.load}")


def progress(layout: RunLayout) -> str:
    """What the run directory says about train (for ``galmock status``)."""
    n = region_count(layout)
    done = len(layout.trained_models())
    working = len(layout.model_workdirs())
    total = "?" if n is None else n
    return f"{done} of {total} region model(s) trained" + (
        f", {working} checkpointed" if working else ""
    )
