"""Upsampling math for one region: star counts, the ownership cut, parents and star columns.

Pure functions of arrays and seeds; no MPI and no files (the stage driver is
:mod:`galmock.stages.upsample`). A region with owned particle mass M gets N ~ Poisson(λ) stars,
λ = sampling_fraction · M / <m> for an IMF (masses drawn from it) or λ = k · n_owned for k
stars per particle (each star parent mass / k). Stars come from the region's flow ensemble in
seeded batches; only those inside the region's owned volume are kept, until there are N, so the
regions tile space seamlessly and each region's stellar mass follows its particle mass. Age and
[Fe/H] come from the parent: the nearest training particle in standardised 6-D phase space.

Every random draw is seeded from (job seed, region id, batch index) alone, so a region's stars
do not depend on which rank draws them or when.

Example:
    >>> from galmock.plan import build_kdtree_plan
    >>> from galmock.seeds import region_seed
    >>> from galmock.store import STAR_COLUMNS
    >>> job, rng, n = load_job("jobs/demo.yaml"), np.random.default_rng(0), 4000
    >>> particles = Particles(pos=rng.normal(0.0, 5.0, (n, 3)), vel=rng.normal(0.0, 100.0, (n, 3)),
    ...                       id=np.arange(n), mass=np.full(n, 1e4),
    ...                       age=rng.uniform(0.0, 13.0, n), feh=rng.normal(-0.3, 0.2, n))
    >>> plan = build_kdtree_plan(particles.pos, particles.mass, particles.id, 1000, 0.5)
    >>> counts = star_counts(plan.regions, job.upsample, seed=42)  # IMF, 2e-5 of 1e7 Msun each
    >>> counts.tolist()
    [367, 363, 364, 351]
    >>> region = plan.regions[3]
    >>> matcher = ParentMatcher(particles.pos, particles.vel)
    >>> def propose(m, batch):  # stands in for the region's flow ensemble
    ...     g = np.random.default_rng(region_seed(42, "upsample", 3, batch))
    ...     return g.normal(0.0, 5.0, (m, 3)), g.normal(0.0, 100.0, (m, 3))
    >>> rows = 0
    >>> for b, pos, vel in owned_batches(propose, region.contains, counts[3], 10**6, 0.6):
    ...     parent = matcher.query(pos, vel)
    ...     masses = star_masses(job.upsample, len(pos), particles.mass[parent],
    ...                          np.random.default_rng(region_seed(42, "upsample-mass", 3, b)))
    ...     cols = star_columns(pos, vel, parent, particles, masses, 3)
    ...     rows += len(pos)
    >>> rows, b  # every star of region 3, in two batches
    (351, 1)
    >>> {c: v.dtype for c, v in cols.items()} == {c: s.dtype for c, s in STAR_COLUMNS.items()}
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from galmock.config import UpsampleConfig
from galmock.errors import ConfigError, InputError
from galmock.imf import IMFS, BrokenPowerLawIMF
from galmock.plan import Region, RegionPlan
from galmock.seeds import region_seed
from galmock.store import STAR_COLUMNS

# Give up on a region when fewer than this fraction of flow draws land in its owned volume
# (after MIN_DRAWS draws): the flow does not describe that volume and looping would not end.
MIN_OWNED_ACCEPTANCE = 1e-4
MIN_DRAWS = 100_000
# Ask for this much more than the acceptance so far predicts, so the last batch rarely falls short.
HEADROOM = 1.05


def build_imf(cfg: UpsampleConfig) -> BrokenPowerLawIMF:
    """The configured IMF truncated to ``[mass_min_msun, mass_max_msun]``."""
    try:
        return IMFS[cfg.imf](cfg.mass_min_msun, cfg.mass_max_msun)
    except ValueError as err:
        raise ConfigError(f"upsample: mass_min_msun/mass_max_msun: {err}") from None


def expected_stars(regions: Sequence[Region], cfg: UpsampleConfig) -> np.ndarray:
    """λ per region (float64): the mean of its Poisson star count.

    Example:
        >>> from galmock.plan import build_sphere_plan
        >>> job = load_job("jobs/demo.yaml")  # imf mode, sampling_fraction 2e-5
        >>> pos = np.random.default_rng(0).normal(size=(100, 3))
        >>> plan = build_sphere_plan(pos, np.full(100, 1e5), np.arange(100), (0, 0, 0), 10.0)
        >>> plan.regions[0].owned_mass
        10000000.0
        >>> expected_stars(plan.regions, job.upsample).round(1)  # 2e-5 * 1e7 Msun / 0.574 Msun
        array([348.5])
    """
    if cfg.mode == "imf":
        mean_mass = build_imf(cfg).mean_mass()
        mass = np.array([r.owned_mass for r in regions], dtype=np.float64)
        return cfg.sampling_fraction * mass / mean_mass
    owned = np.array([r.owned_particles for r in regions], dtype=np.float64)
    return cfg.stars_per_particle * owned


def size_warning(n_stars: float, cfg: UpsampleConfig) -> str | None:
    """A warning when a catalog of ``n_stars`` exceeds ``upsample.warn_stars``, else None.

    Example:
        >>> job = load_job("jobs/demo.yaml", overrides=["upsample.sampling_fraction=1"])
        >>> print(size_warning(9.6e10, job.upsample))  # doctest: +ELLIPSIS
        upsample: the catalog is planned at 96,000,000,000 stars, 5.76 TB in stars.zarr ...
        >>> size_warning(1.9e6, job.upsample) is None
        True
    """
    if n_stars <= cfg.warn_stars:
        return None
    row_bytes = sum(spec.dtype.itemsize for spec in STAR_COLUMNS.values())
    knob = (f"upsample.sampling_fraction (now {cfg.sampling_fraction})" if cfg.mode == "imf"
            else f"upsample.stars_per_particle (now {cfg.stars_per_particle})")
    return (f"upsample: the catalog is planned at {n_stars:,.0f} stars, "
            f"{n_stars * row_bytes / 1e12:.2f} TB in stars.zarr before compression (more than "
            f"upsample.warn_stars = {cfg.warn_stars:g}); lower {knob} unless that is what you "
            "want")


def star_counts(regions: Sequence[Region], cfg: UpsampleConfig, seed: int) -> np.ndarray:
    """N per region (int64): Poisson draws, each seeded by (seed, region id) alone.

    Known before any star is drawn, so every region's rows in the catalog are fixed up front.
    """
    lam = expected_stars(regions, cfg)
    out = np.empty(len(regions), dtype=np.int64)
    for i, (r, mean) in enumerate(zip(regions, lam)):
        rng = np.random.default_rng(region_seed(seed, "upsample-count", r.id))
        out[i] = rng.poisson(mean)
    return out


def owned_volume(
    plan: RegionPlan, region_id: int, support_radius: float = math.inf
) -> Callable[[np.ndarray], np.ndarray]:
    """Mask function of positions (n, 3) inside what ``region_id`` owns.

    A k-d tree region owns its box ``[lower, upper)``; the sphere plan's region owns its ball.
    ``support_radius`` (kpc from the galaxy centre; :func:`support_radius`) limits the box to
    where the region has particles: its outer faces reach to infinity, and its flow's tails,
    stretched by the log-radial position map, would otherwise put stars at Mpc where the
    galaxy has none (0.09% of the demo's stars lay beyond its last particle, out to 16 Mpc).

    Example:
        >>> from galmock.plan import build_kdtree_plan
        >>> plan = build_kdtree_plan(np.random.default_rng(0).normal(0, 5, (400, 3)),
        ...                          np.ones(400), np.arange(400), 400, 0.5)
        >>> far = np.array([[1.0, 0.0, 0.0], [300.0, 0.0, 0.0]])
        >>> owned_volume(plan, 0)(far).tolist(), owned_volume(plan, 0, 20.0)(far).tolist()
        ([True, True], [True, False])
    """
    if plan.kind == "kdtree":
        box = plan.regions[region_id].contains
        if math.isinf(support_radius):
            return box
        return lambda pos: box(pos) & (np.einsum("ij,ij->i", pos, pos) <= support_radius**2)
    return lambda pos: plan.owner(pos) == region_id


def support_radius(training_pos: np.ndarray) -> float:
    """The farthest a region's training particles lie from the galaxy centre (kpc)."""
    pos = np.asarray(training_pos, dtype=np.float64)
    return float(np.sqrt(np.einsum("ij,ij->i", pos, pos).max())) if len(pos) else math.inf


def owned_acceptance_prior(region: Region) -> float:
    """A first guess of the fraction of flow draws inside the owned volume (it sizes the first
    batch only; later batches use the fraction seen so far)."""
    # A thinned margin's kept particles stand for 1 / margin_keep each in the flow's density.
    margin = region.training_particles + region.holdout_particles - region.owned_particles
    total = region.owned_particles + max(margin, 0) / region.margin_keep
    return float(np.clip(region.owned_particles / max(total, 1), 0.05, 1.0))


def owned_batches(
    propose: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    owns: Callable[[np.ndarray], np.ndarray],
    n_stars: int,
    batch_rows: int,
    prior: float = 0.5,
    label: str = "region",
    tally: dict[str, int] | None = None,
    hint: str = "the model does not describe this region (wrong flows.load?)",
    start: Mapping[str, int] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(batch, pos, vel)`` of owned stars until ``n_stars`` in all, in order.

    ``propose(m, batch)`` returns m flow draws (positions, velocities; float64 (m, 3)) seeded
    by the batch index; ``owns(pos)`` is the ownership mask. Each batch asks for at most
    ``batch_rows`` draws (the memory bound), sized from the acceptance so far so that a small
    region does not draw a whole batch. Everything here is a function of the draws, so the
    output is fixed by the seeds. ``tally`` (if given) keeps the running ``drawn`` and ``kept``
    counts, whose ratio estimates the acceptance, and after each batch the state to resume from:
    ``batch`` (the next one) and ``got`` (stars yielded so far). ``start`` is such a state: the
    batches after it come out exactly as in an uninterrupted run.

    Raises:
        InputError: the owned volume catches almost no draws (names ``label``; ends with ``hint``).
    """
    state = {"batch": 0, "got": 0, "drawn": 0, "kept": 0, **dict(start or {})}
    batch, got, drawn, kept = (int(state[k]) for k in ("batch", "got", "drawn", "kept"))
    acceptance = max(kept / drawn, MIN_OWNED_ACCEPTANCE) if drawn else prior
    while got < n_stars:
        need = n_stars - got
        m = min(batch_rows, math.ceil(need / acceptance * HEADROOM) + 64)
        pos, vel = propose(m, batch)
        inside = np.asarray(owns(pos), dtype=bool)
        drawn += len(pos)
        kept += int(inside.sum())
        if kept < MIN_OWNED_ACCEPTANCE * drawn and drawn >= MIN_DRAWS:
            raise InputError(
                f"{label}: only {kept} of {drawn} draws fall inside the owned volume; {hint}"
            )
        acceptance = max(kept / drawn, MIN_OWNED_ACCEPTANCE) if drawn else prior
        if tally is not None:
            tally.update(drawn=drawn, kept=kept)
        take = np.flatnonzero(inside)[:need]
        got += len(take)
        if tally is not None:
            tally.update(batch=batch + 1, got=got)
        yield batch, pos[take], vel[take]
        batch += 1


class ParentMatcher:
    """Nearest particle in standardised 6-D phase space (each coordinate / its std).

    On the CPU a k-d tree; with a CUDA ``device`` (or ``brute=True``) an exact brute-force
    search in float64 with torch (a CPU tree answers ~1e5 queries/s per core, far below a GPU
    flow's sampling rate). Ties: duplicated particles (the same 6-D point) are searched once, as
    their lowest row, so a star near them gets that row as its parent on either path; the two
    paths can differ only where distances to distinct particles agree to the last bit.

    Example:
        >>> train_pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> train_vel = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 100.0]])
        >>> matcher = ParentMatcher(train_pos, train_vel)
        >>> star_pos, star_vel = np.array([[0.9, 0.1, 0.0]]), np.array([[0.0, 0.0, 10.0]])
        >>> matcher.query(star_pos, star_vel)       # row indices into train_*
        array([1])
    """

    def __init__(
        self,
        pos: np.ndarray,
        vel: np.ndarray,
        device: torch.device | str | None = None,
        brute: bool | None = None,
    ) -> None:
        x = np.hstack([np.asarray(pos, np.float64), np.asarray(vel, np.float64)])
        if len(x) == 0:
            raise InputError("parent matching needs at least one particle")
        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)  # a constant coordinate carries no distance
        z = (x - self.mean) / self.scale
        # The first row of each distinct point (np.unique's index is of the first occurrence).
        _, first = np.unique(z, axis=0, return_index=True)
        self.rows = np.sort(first)
        z = z[self.rows]
        on_gpu = device is not None and str(device).startswith("cuda")
        self.device = (device or "cpu") if (on_gpu if brute is None else brute) else None
        if self.device is None:
            # Unbalanced, non-compact: twice as fast to query on clustered (galaxy) data.
            self.tree = cKDTree(z, balanced_tree=False, compact_nodes=False)
        else:
            self.points = torch.as_tensor(z, dtype=torch.float64, device=self.device)

    def query(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        """Index of each star's parent (int64)."""
        x = np.hstack([np.asarray(pos, np.float64), np.asarray(vel, np.float64)])
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        z = (x - self.mean) / self.scale
        if self.device is not None:
            return self.rows[self._query_torch(z)]
        # One worker: the ranks already use the cores, and ties then resolve the same way.
        _, idx = self.tree.query(z, k=1, workers=1)
        return self.rows[np.asarray(idx, dtype=np.int64)]

    def _query_torch(self, z: np.ndarray) -> np.ndarray:
        out = np.empty(len(z), dtype=np.int64)
        rows = max(1, (1 << 27) // len(self.points))  # <= 1 GiB of float64 distances at a time
        for start in range(0, len(z), rows):
            q = torch.as_tensor(z[start : start + rows], dtype=torch.float64, device=self.device)
            # Direct differences, not the |a|^2 + |b|^2 - 2ab shortcut, which cancels badly.
            d = torch.cdist(q, self.points, compute_mode="donot_use_mm_for_euclid_dist")
            out[start : start + rows] = d.argmin(dim=1).cpu().numpy()
        return out


@dataclass(frozen=True)
class Particles:
    """A region's training particles, the parents' source: float64 (n, 3) ``pos``/``vel``,
    and per-particle ``id``, ``mass``, ``age``, ``feh`` (NaN where the source has none)."""

    pos: np.ndarray
    vel: np.ndarray
    id: np.ndarray
    mass: np.ndarray
    age: np.ndarray
    feh: np.ndarray

    def __len__(self) -> int:
        return len(self.id)


def star_masses(
    cfg: UpsampleConfig,
    n: int,
    parent_mass: np.ndarray,
    rng: np.random.Generator,
    imf: BrokenPowerLawIMF | None = None,
) -> np.ndarray:
    """Masses (Msun): IMF draws (imf mode) or parent mass / stars_per_particle (fixed mode)."""
    if cfg.mode == "imf":
        return (imf or build_imf(cfg)).sample(n, rng)
    return np.asarray(parent_mass, dtype=np.float64) / cfg.stars_per_particle


def star_columns(
    pos: np.ndarray,
    vel: np.ndarray,
    parent: np.ndarray,
    particles: Particles,
    mass: np.ndarray,
    region_id: int,
) -> dict[str, np.ndarray]:
    """The catalog columns of a batch (dtypes as in :data:`galmock.store.STAR_COLUMNS`)."""
    n = len(pos)
    cols: Mapping[str, np.ndarray] = {
        "x": pos[:, 0],
        "y": pos[:, 1],
        "z": pos[:, 2],
        "vx": vel[:, 0].astype(np.float32),
        "vy": vel[:, 1].astype(np.float32),
        "vz": vel[:, 2].astype(np.float32),
        "mass": np.asarray(mass, dtype=np.float32),
        "age": particles.age[parent].astype(np.float32),
        "feh": particles.feh[parent].astype(np.float32),
        "parent_id": particles.id[parent].astype(np.int64),
        "region": np.full(n, region_id, dtype=np.int32),
    }
    return dict(cols)
