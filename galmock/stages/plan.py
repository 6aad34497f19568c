"""The ``plan`` stage: ``<run>/particles.zarr`` → ``<run>/plan.json`` and ``<run>/training.zarr``.

``plan.kind: kdtree`` tiles the whole galaxy into k-d regions of at most
``plan.target_particles`` owned particles (:func:`galmock.plan.build_kdtree_plan`);
``sphere`` is the paper's single ball (:func:`galmock.plan.build_sphere_plan`). The plan also
fixes which particles are held out for validation (``plan.holdout_fraction``, by particle id).

Example:
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=4000", "plan.target_particles=1000"])
    >>> _ = run_ingest(job)
    >>> len(run(job).regions)
    4
    >>> progress(RunLayout(job.run_dir))
    '4 region(s)'
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from galmock.config import JobConfig
from galmock.layout import RunLayout
from galmock.particles import read_particle_store
from galmock.plan import RegionPlan, build_kdtree_plan, build_sphere_plan
from galmock.regions import write_training_store
from galmock.sampling import expected_stars, size_warning
from galmock.version import __version__

log = logging.getLogger("galmock.plan")


def run(job: JobConfig) -> RegionPlan:
    """Run the plan stage: ``particles.zarr`` -> ``plan.json`` and ``training.zarr``. Returns
    the plan."""
    layout = RunLayout(job.run_dir)
    store = read_particle_store(layout.particles)
    pos = store.positions()
    mass = store["mass"][:]
    ids = store["id"][:]
    cfg = job.plan
    if cfg.kind == "kdtree":
        plan = build_kdtree_plan(
            pos, mass, ids, cfg.target_particles, cfg.margin_kpc, cfg.holdout_fraction, job.seed,
            margin_fraction=cfg.margin_fraction, max_margin_ratio=cfg.max_margin_ratio,
            margin_taper=cfg.margin_taper,
        )
    else:
        centre = job.observer.sun_position_kpc if cfg.centre == "sun" else cfg.centre
        plan = build_sphere_plan(
            pos, mass, ids, centre, cfg.radius_kpc, cfg.holdout_fraction, job.seed
        )
    plan = replace(plan, meta={"particles": str(store.path), "galmock_version": __version__})
    del pos, mass, ids
    # The training store first: it records the plan's hash, so a run killed between the two
    # leaves a store that the old plan.json refuses, never a silent mismatch.
    write_training_store(layout.training, plan, store)
    plan.write(layout.plan)
    stars = float(expected_stars(plan.regions, job.upsample).sum())
    # With a magnitude limit the catalog holds only the visible few of these stars.
    warning = None if job.magnitude_limit is not None else size_warning(stars, job.upsample)
    if warning:
        log.warning("%s", warning)
    return plan


def region_count(layout: RunLayout) -> int | None:
    """The number of regions in ``plan.json``, or None while there is no readable plan."""
    try:
        return len(json.loads(layout.plan.read_text())["regions"])
    except (OSError, ValueError, KeyError):
        return None


def progress(layout: RunLayout) -> str:
    """What the run directory says about plan (for ``galmock status``)."""
    n = region_count(layout)
    return "no plan.json yet" if n is None else f"{n} region(s)"
