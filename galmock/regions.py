r"""Each region's training particles: written once by the plan stage, read per region after.

The train, upsample and validate stages need "the particles region k trains on" (owned plus
margin, minus held-out, with their training weights) and, for upsampling, the properties stars
inherit from their parents. The plan stage writes them region after region into
``<run>/training.zarr`` (:func:`write_training_store`): a region's rows are one contiguous
slice, in the order of their rows in ``particles.zarr``, so a rank reads only the region it is
working on and its memory does not grow with the galaxy. Margins appear once per region that
trains on them: the store holds the training sets' sum (1.46x the particles for 10^7 demo
particles in 256 regions with the default tapered margins; 1.67x, 1.1 GB on disk against
particles.zarr's 666 MB, with whole margins). Its attributes
record the plan it was made for (a hash); a store from another plan is refused.

Example:
    >>> from galmock.plan import read_plan
    >>> from galmock.stages.plan import run as run_plan
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=4000", "plan.target_particles=1000"])
    >>> layout = RunLayout(job.run_dir)
    >>> _ = run_ingest(job), run_plan(job)  # particles.zarr, plan.json, training.zarr
    >>> data = RegionParticles(layout.training, read_plan(layout.plan))
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

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr

from galmock.atomic import atomic_directory
from galmock.chunks import create_column, read_column, require_chunks
from galmock.errors import InputError
from galmock.particles import ParticleStore, read_particle_store
from galmock.plan import RegionPlan, holdout_mask, owned_indices
from galmock.sampling import Particles

TRAINING_FORMAT = "galmock.training/1"
#: Columns of training.zarr: phase space, particle id, row in particles.zarr, training weight,
#: and the properties stars inherit (NaN where the particle store has none).
TRAINING_COLUMNS = {
    "x": "f8", "y": "f8", "z": "f8", "vx": "f8", "vy": "f8", "vz": "f8", "id": "i8",
    "row": "i8", "weight": "f8", "mass": "f8", "age": "f8", "feh": "f8",
}  # fmt: skip


class TrainingSet(NamedTuple):
    """A region's training particles: positions (kpc), velocities (km/s) and training weights
    (``None``: all 1; else 1 for owned particles, ``1 / margin_keep`` for a thinned margin's)."""

    pos: np.ndarray
    vel: np.ndarray
    weight: np.ndarray | None


def plan_sha256(plan: RegionPlan) -> str:
    """sha256 of the plan's content (its ``meta``, which names paths and versions, left out)."""
    data = plan.to_dict()
    data.pop("meta", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_training_store(
    path: str | Path, plan: RegionPlan, particles: ParticleStore, chunk_rows: int = 1 << 16
) -> Path:
    r"""Write every region's training particles, region after region, atomically.

    Arguments:
        path: the store (``<run>/training.zarr``).
        plan: the region plan (its margins, thinning and held-out draw).
        particles: the particle store the plan was made from.
        chunk_rows: rows per Zarr chunk; a region's slice touches about
            ``training_particles / chunk_rows + 2`` chunks.
    """
    pos = particles.positions()
    ids = read_column(particles.group, particles.path, "id")
    owner = plan.owner(pos)
    members = owned_indices(owner, len(plan.regions))
    held = holdout_mask(ids, plan.holdout_fraction, plan.holdout_seed)
    rows, weights = [], []
    for r in plan.regions:
        idx = plan.training_indices(r.id, pos, members, ids)
        idx = idx[~held[idx]]
        if len(idx) != r.training_particles:
            raise InputError(f"{particles.path}: region {r.id} has {len(idx)} training "
                             f"particles, the plan {r.training_particles}: these are not the "
                             "particles the plan was made from (run `galmock plan` again)")
        w = plan.training_weights(r.id, owner[idx])
        rows.append(idx)
        weights.append(np.ones(len(idx)) if w is None else w)
    del pos, owner, members, held
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in rows])]).astype(np.int64)
    index = np.concatenate(rows)
    n = len(index)
    fields = set(particles.fields)
    with atomic_directory(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({"format": TRAINING_FORMAT, "plan_sha256": plan_sha256(plan),
                            "n_rows": int(n), "offsets": offsets.tolist()})
        for name, dtype in TRAINING_COLUMNS.items():
            if name == "row":
                values = index
            elif name == "weight":
                values = np.concatenate(weights)
            elif name in fields:
                values = read_column(particles.group, particles.path, name)[index]
            else:
                values = np.full(n, np.nan)
            create_column(group, name, n, dtype, chunk_rows)[:] = values
    return Path(path)


class RegionParticles:
    r"""Each region's training particles from ``<run>/training.zarr``, read per region.

    Arguments:
        training: the training store (:func:`write_training_store`).
        plan: the region plan it must have been written for.

    Raises:
        InputError: the store is missing, damaged, or made for another plan.
    """

    def __init__(self, training: str | Path, plan: RegionPlan) -> None:
        self.plan = plan
        self.path = Path(training)
        if not self.path.exists():
            raise InputError(f"{self.path}: training particles not found (run `galmock plan` "
                             "first)")
        try:
            self.group = zarr.open_group(self.path, mode="r")
            attrs = dict(self.group.attrs)
        except Exception as err:  # zarr raises several types for a non-store directory
            raise InputError(f"{self.path}: not a Zarr training store: {err}") from err
        if attrs.get("format") != TRAINING_FORMAT:
            raise InputError(f"{self.path}: format = {attrs.get('format')!r}, expected "
                             f"{TRAINING_FORMAT!r} (run `galmock plan` again)")
        if attrs.get("plan_sha256") != plan_sha256(plan):
            raise InputError(f"{self.path}: written for another region plan than plan.json "
                             "(run `galmock plan` again)")
        self.offsets = np.asarray(attrs["offsets"], dtype=np.int64)
        for name in TRAINING_COLUMNS:
            arr = self.group.get(name)
            if arr is None:
                raise InputError(f"{self.path}: column {name!r} is missing (run `galmock plan` "
                                 "again)")
            require_chunks(self.path / name, int(arr.shape[0]), int(arr.chunks[0]),  # type: ignore[union-attr]
                           "the store is damaged; run `galmock plan` again")

    def _column(self, region_id: int, name: str) -> np.ndarray:
        a, b = int(self.offsets[region_id]), int(self.offsets[region_id + 1])
        return read_column(self.group, self.path, name, a, b)

    def _stack(self, region_id: int, names: tuple[str, str, str]) -> np.ndarray:
        return np.column_stack([self._column(region_id, n) for n in names])

    def training_set(self, region_id: int) -> TrainingSet:
        """The region's training particles with their training weights."""
        weight = None
        if self.plan.regions[region_id].margin_keep < 1.0:
            weight = self._column(region_id, "weight")
        return TrainingSet(self._stack(region_id, ("x", "y", "z")),
                           self._stack(region_id, ("vx", "vy", "vz")), weight)

    def particles(self, region_id: int) -> Particles:
        """The region's training particles with the properties stars inherit."""
        return Particles(self._stack(region_id, ("x", "y", "z")),
                         self._stack(region_id, ("vx", "vy", "vz")),
                         self._column(region_id, "id"), self._column(region_id, "mass"),
                         self._column(region_id, "age"), self._column(region_id, "feh"))


class GalaxyParticles:
    r"""The whole particle store's phase space and held-out flags, in memory (56 bytes per
    particle): the validation stage's test sets. Upsampling and training never need it.

    Arguments:
        particles: the particle store (``<run>/particles.zarr``).
        plan: the region plan (its held-out draw).
    """

    def __init__(self, particles: str | Path, plan: RegionPlan) -> None:
        self.store = read_particle_store(particles)
        self.pos = self.store.positions()
        self.vel = self.store.velocities()
        self.ids = read_column(self.store.group, self.store.path, "id")
        self.held = holdout_mask(self.ids, plan.holdout_fraction, plan.holdout_seed)
