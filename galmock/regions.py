r"""Each region's training particles, read from the particle store and the region plan.

The train, upsample and validate stages all need "the particles region k trains on" (owned plus
margin, minus held-out) and, for upsampling, the properties stars inherit from their parents.
:class:`RegionParticles` loads positions, velocities and ids once per rank (56 bytes per
particle) and reads other columns for one region's indices only.

Example:
    >>> from galmock.plan import read_plan
    >>> from galmock.stages.plan import run as run_plan
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=4000", "plan.target_particles=1000"])
    >>> layout = RunLayout(job.run_dir)
    >>> _ = run_ingest(job), run_plan(job)  # particles.zarr, plan.json
    >>> data = RegionParticles(layout.particles, read_plan(layout.plan))
    >>> pos, vel, weight = data.training_set(3)
    >>> region = data.plan.regions[3]
    >>> len(pos) == region.training_particles, pos.shape[1], vel.shape[1]
    (True, 3, 3)
    >>> keep = region.margin_keep  # < 1: the margin is thinned (plan.max_margin_ratio)
    >>> weight is None if keep == 1 else sorted(set(weight)) == [1.0, 1.0 / keep]
    True
    >>> data.particles(3).age.shape == (len(pos),)  # what stars inherit from their parents
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from galmock.particles import read_particle_store
from galmock.plan import RegionPlan, holdout_mask
from galmock.sampling import Particles


class TrainingSet(NamedTuple):
    """A region's training particles: positions (kpc), velocities (km/s) and training weights
    (``None``: all 1; else 1 for owned particles, ``1 / margin_keep`` for a thinned margin's)."""

    pos: np.ndarray
    vel: np.ndarray
    weight: np.ndarray | None


class RegionParticles:
    r"""The particle store, loaded once per rank: each region's training particles on demand.

    Arguments:
        particles: the particle store (``<run>/particles.zarr``).
        plan: the region plan.
    """

    def __init__(self, particles: str | Path, plan: RegionPlan) -> None:
        self.plan = plan
        self.store = read_particle_store(particles)
        self.pos = self.store.positions()
        self.vel = self.store.velocities()
        self.ids = self.store["id"][:]
        self.owner = owner = plan.owner(self.pos)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner[owner >= 0], minlength=len(plan.regions))
        self.members = np.split(order[int((owner < 0).sum()) :], np.cumsum(counts)[:-1])
        self.held = holdout_mask(self.ids, plan.holdout_fraction, plan.holdout_seed)

    def training_indices(self, region_id: int) -> np.ndarray:
        """Owned plus (kept) margin particles, minus the held-out ones: what the flows train on."""
        idx = self.plan.training_indices(region_id, self.pos, self.members, self.ids)
        return idx[~self.held[idx]]

    def training_set(self, region_id: int) -> TrainingSet:
        """The region's training particles with their training weights."""
        idx = self.training_indices(region_id)
        return TrainingSet(self.pos[idx], self.vel[idx],
                           self.plan.training_weights(region_id, self.owner[idx]))

    def particles(self, region_id: int) -> Particles:
        """The region's training particles with the properties stars inherit."""
        idx = self.training_indices(region_id)
        fields = set(self.store.fields)

        def column(name: str) -> np.ndarray:
            if name not in fields:
                return np.full(len(idx), np.nan)
            return np.asarray(self.store[name].get_orthogonal_selection((idx,)), np.float64)

        return Particles(self.pos[idx], self.vel[idx], self.ids[idx], column("mass"),
                         column("age"), column("feh"))
