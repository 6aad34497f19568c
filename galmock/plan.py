"""Region plan: tile a whole galaxy into regions that each get their own flows.

A k-d tree splits space at particle medians until every cell owns at most ``target_particles``
particles. Cells are half-open boxes ``[lower, upper)`` whose outer faces extend to infinity, so
every point in space (every particle, and later every sampled star) has exactly one owner.
A region's flows train on its own particles plus a margin around its box, so densities match
across faces; upsampling keeps only stars inside the owned box. The margin is
``margin_fraction`` of the region's size (the widest 5-95 percentile range of its owned
particles), capped at ``margin_kpc``: a flow sees its region in standardised coordinates, so the
blur it puts on the hard edge of its training set, which the margin must keep away from the
faces, scales with the region. A fixed margin is wider than the small regions at the galaxy
centre and makes their training sets many times their own particles (256 demo regions: 8.4x in
sum, one region 25x; 1.69x and 3.5x with the fraction 0.05). A *tapered* margin
(``margin_taper``, :meth:`Region.margin_taper`) keeps each margin particle with a probability
falling as a raised cosine from 1 at the face to 0 at the margin's edge, unweighted: the flows
fit the galaxy times the taper, which has no hard edge near the face, from half the margin
(1.47x at 256 regions with the fraction 0.07, and no cost in the demo's seams). With
``max_margin_ratio`` a region whose margin still holds more than that many times its owned
training particles keeps a random subset of the margin of that size (``margin_keep``, by a hash
of particle id), each kept particle weighing ``1 / margin_keep`` in training
(:meth:`RegionPlan.training_weights`): the flows fit the margin's density from fewer rows, at a
measured cost in seams (the README's region plan section), so it is off by default.

The single-sphere plan is the GalaxyFlow paper's set-up: one region, the particles within
``radius_kpc`` of a centre (the Sun by default), optionally split 1:1 into train and test.

Example:
    >>> rng = np.random.default_rng(0)
    >>> pos, mass, ids = rng.normal(0.0, 5.0, (4000, 3)), np.ones(4000), np.arange(4000)
    >>> plan = build_kdtree_plan(pos, mass, ids, target_particles=1000, margin_kpc=0.5,
    ...                          margin_fraction=0.02)
    >>> owner = plan.owner(pos)           # region id per particle
    >>> np.bincount(owner).tolist()
    [1000, 1000, 1000, 1000]
    >>> np.round(plan.regions[0].margin_kpc, 2).tolist()  # 2% of its size, at most 0.5 kpc
    [0.34, 0.34, 0.34]
    >>> [r.training_particles for r in plan.regions]  # owned plus the margin
    [1093, 1092, 1094, 1101]
    >>> read_plan(plan.write(tmp_path / "plan.json")) == plan
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from galmock.atomic import atomic_write_text
from galmock.errors import InputError
from galmock.seeds import derive_seed

PLAN_FORMAT = "galmock.plan/4"  # /2: per-region margins; /3: thinned margins; /4: margin_taper


@dataclass(frozen=True)
class Region:
    """One region: its owned box, particle counts and the ball its flows are defined on.

    ``centre``/``radius`` enclose the region's training particles: the flows' position
    preprocessing maps that ball onto R^3 for a sphere plan. ``margin_kpc`` is how far, per
    axis, the training volume reaches beyond the box. ``margin_keep`` is the fraction of the
    margin's particles (of the tapered margin's, with ``RegionPlan.margin_taper``) in the
    training set, each standing for ``1 / margin_keep`` particles (its training weight,
    :meth:`RegionPlan.training_weights`); owned particles weigh 1.
    """

    id: int
    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    owned_particles: int
    training_particles: int
    holdout_particles: int
    owned_mass: float
    centre: tuple[float, float, float]
    radius: float
    margin_kpc: tuple[float, float, float] = (0.0, 0.0, 0.0)
    margin_keep: float = 1.0

    def contains(self, pos: np.ndarray) -> np.ndarray:
        """Boolean mask of positions inside the owned box ``[lower, upper)``."""
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        return np.all((pos >= lo) & (pos < hi), axis=1)

    def expanded_contains(self, pos: np.ndarray) -> np.ndarray:
        """Mask of positions within the margin of the box (per axis): the training volume."""
        margin = np.asarray(self.margin_kpc)
        lo, hi = np.asarray(self.lower) - margin, np.asarray(self.upper) + margin
        return np.all((pos >= lo) & (pos < hi), axis=1)

    def margin_taper(self, pos: np.ndarray) -> np.ndarray:
        """The tapered margin's keep probability per position: 1 in the box, falling as a raised
        cosine of the depth beyond each face (in units of the margin) to 0 at the margin's
        edge, the product over axes.

        Flat in value and slope at the face, so the density a flow fits to the kept particles
        (the galaxy's times this taper) has no edge a flow must blur near the face.

        Example:
            >>> r = Region(0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1, 1, 0, 1.0, (0.5, 0.5, 0.5),
            ...            1.0, margin_kpc=(0.2, 0.2, 0.2))
            >>> r.margin_taper(np.array([[0.5, 0.5, 0.5], [1.1, 0.5, 0.5], [1.1, 1.1, 0.5],
            ...                          [-0.2, 0.5, 0.5]])).round(3).tolist()
            [1.0, 0.5, 0.25, 0.0]
        """
        pos = np.asarray(pos, dtype=np.float64)
        depth = np.maximum(np.maximum(np.asarray(self.lower) - pos, pos - np.asarray(self.upper)),
                           0.0)
        margin = np.asarray(self.margin_kpc)
        u = np.divide(depth, margin, out=np.where(depth > 0, 1.0, 0.0), where=margin > 0)
        return np.prod(0.5 * (1.0 + np.cos(np.pi * np.clip(u, 0.0, 1.0))), axis=1)


@dataclass(frozen=True)
class KDTree:
    """Split tree in flat arrays: node i splits ``axis[i]`` at ``value[i]`` (< goes left)."""

    axis: tuple[int, ...]
    value: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    region: tuple[int, ...]  # region id at leaves, -1 at internal nodes

    def owner(self, pos: np.ndarray) -> np.ndarray:
        """Region id for each position, by vectorised descent (O(N · depth))."""
        axis, value = np.asarray(self.axis), np.asarray(self.value)
        left, right, region = np.asarray(self.left), np.asarray(self.right), np.asarray(self.region)
        node = np.zeros(len(pos), dtype=np.int64)
        rows = np.arange(len(pos))
        active = region[node] < 0
        while active.any():
            n = node[active]
            go_left = pos[rows[active], axis[n]] < value[n]
            node[active] = np.where(go_left, left[n], right[n])
            active = region[node] < 0
        return region[node].astype(np.int32)


@dataclass(frozen=True)
class RegionPlan:
    """The decomposition later stages read from ``<run>/plan.json``."""

    kind: Literal["kdtree", "sphere"]
    regions: tuple[Region, ...]
    n_particles: int
    total_mass: float
    margin_kpc: float
    target_particles: int | None = None
    margin_fraction: float | None = None
    max_margin_ratio: float | None = None
    margin_taper: bool = False
    tree: KDTree | None = None
    sphere_centre: tuple[float, float, float] | None = None
    sphere_radius: float | None = None
    holdout_fraction: float = 0.0
    holdout_seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def owner(self, pos: np.ndarray) -> np.ndarray:
        """Owning region id per position; -1 outside a sphere plan's ball."""
        pos = np.asarray(pos, dtype=np.float64)
        if self.kind == "kdtree":
            assert self.tree is not None
            return self.tree.owner(pos)
        assert self.sphere_centre is not None and self.sphere_radius is not None
        inside = _within(pos, np.asarray(self.sphere_centre), self.sphere_radius)
        return np.where(inside, 0, -1).astype(np.int32)

    def position_map(self, region_id: int) -> tuple[tuple[float, float, float], float | None]:
        """The ``(centre, radius)`` a region's position preprocessing uses: for a sphere plan its
        ball (the paper's map), for k-d regions the galaxy centre and ``None``, the log-radial
        map of the whole galaxy (:mod:`galmock.flows.preprocess`), so no distant particle sets a
        region's scale.

        Example:
            >>> rng = np.random.default_rng(0)
            >>> pos = rng.normal(0, 5, (400, 3))
            >>> plan = build_kdtree_plan(pos, np.ones(400), np.arange(400), 100, 0.5)
            >>> plan.position_map(0)
            ((0.0, 0.0, 0.0), None)
        """
        if self.kind == "kdtree":
            return (0.0, 0.0, 0.0), None
        region = self.regions[region_id]
        return tuple(region.centre), float(region.radius)  # type: ignore[return-value]

    def training_mask(
        self,
        region_id: int,
        pos: np.ndarray,
        owner: np.ndarray | None = None,
        ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Particles a region's flows train on: owned, plus (kept) within the margin of its box.

        ``ids`` pick the kept margin particles of a tapered plan or a thinned region
        (``margin_keep`` < 1). Held-out particles are not removed here; combine with
        :func:`holdout_mask`.
        """
        pos = np.asarray(pos, dtype=np.float64)
        owner = self.owner(pos) if owner is None else owner
        if self.kind == "sphere":
            return owner == region_id
        mask = np.zeros(len(pos), dtype=bool)
        members = owned_indices(owner, len(self.regions))
        mask[self.training_indices(region_id, pos, members, ids)] = True
        return mask

    def training_indices(
        self,
        region_id: int,
        pos: np.ndarray,
        members: Sequence[np.ndarray],
        ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Sorted indices of a region's training particles, given each region's owned indices.

        Only regions whose boxes come within the margin can contribute, so this touches the
        neighbours' particles rather than the whole galaxy. A tapered or thinned region keeps a
        margin particle when a hash of its id (``ids``, by index), the plan's seed and the region
        falls below ``margin_keep`` times its taper (:meth:`Region.margin_taper`, 1 untapered):
        the same particles whatever the order or the number of ranks.
        """
        region = self.regions[region_id]
        if self.kind == "sphere":
            return np.sort(members[region_id])
        near = [r.id for r in self.regions if r.id != region_id and _boxes_overlap(r, region)]
        margin = np.concatenate([members[i] for i in near]) if near else members[region_id][:0]
        margin = margin[region.expanded_contains(pos[margin])]
        if region.margin_keep < 1.0 or self.margin_taper:
            if ids is None:
                raise ValueError(f"region {region_id} tapers or thins its margin: pass the "
                                 "particle ids")
            margin = margin[margin_kept(ids[margin], self._keep(region, pos[margin]),
                                        self.holdout_seed, region_id)]
        return np.sort(np.concatenate([members[region_id], margin]))

    def _keep(self, region: Region, pos: np.ndarray) -> np.ndarray | float:
        """Keep probability of a region's margin particles: ``margin_keep``, times the taper."""
        if self.margin_taper:
            return region.margin_keep * region.margin_taper(pos)
        return region.margin_keep

    def training_weights(self, region_id: int, owner: np.ndarray) -> np.ndarray | None:
        """Training weight per training particle, given their owners: 1 for owned particles,
        ``1 / margin_keep`` for the margin's; ``None`` when every weight is 1.

        A thinned margin's kept particles stand for the dropped ones, so the weighted training
        set has the margin's density in expectation while the region trains on fewer rows.
        """
        keep = self.regions[region_id].margin_keep
        if keep >= 1.0:
            return None
        return np.where(np.asarray(owner) == region_id, 1.0, 1.0 / keep)

    def summary(self) -> str:
        """A table of regions for the terminal."""

        def fmt_bound(lo: float, hi: float) -> str:
            a = "-inf" if math.isinf(lo) else f"{lo:.2f}"
            b = "inf" if math.isinf(hi) else f"{hi:.2f}"
            return f"[{a},{b})"

        head = (
            f"{'id':>5} {'x [kpc]':>17} {'y [kpc]':>17} {'z [kpc]':>17} "
            f"{'owned':>9} {'training':>9} {'mass [Msun]':>12}"
        )
        lines = [head, "-" * len(head)]
        for r in self.regions:
            bounds = " ".join(f"{fmt_bound(lo, hi):>17}" for lo, hi in zip(r.lower, r.upper))
            lines.append(
                f"{r.id:>5} {bounds} {r.owned_particles:>9d} {r.training_particles:>9d} "
                f"{r.owned_mass:>12.4g}"
            )
        owned = [r.owned_particles for r in self.regions]
        lines.append("-" * len(head))
        lines.append(
            f"{len(self.regions)} region(s), {sum(owned)} of {self.n_particles} particles owned "
            f"(min {min(owned)}, max {max(owned)} per region), margin {self.margin_kpc} kpc"
            + (f" at most, {self.margin_fraction} of each region's extent"
               if self.margin_fraction is not None else "")
            + (f", margins thinned to at most {self.max_margin_ratio}x the owned particles in "
               f"{sum(r.margin_keep < 1 for r in self.regions)} region(s)"
               if self.max_margin_ratio is not None else "")
            + (", margins tapered" if self.margin_taper else "")
            + f"; training sets {sum(r.training_particles for r in self.regions)} particles"
            + (f", holdout fraction {self.holdout_fraction}" if self.holdout_fraction else "")
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "kind": self.kind,
            "n_particles": self.n_particles,
            "total_mass": self.total_mass,
            "margin_kpc": self.margin_kpc,
            "margin_fraction": self.margin_fraction,
            "max_margin_ratio": self.max_margin_ratio,
            "margin_taper": self.margin_taper,
            "target_particles": self.target_particles,
            "holdout_fraction": self.holdout_fraction,
            "holdout_seed": self.holdout_seed,
            "sphere_centre": self.sphere_centre,
            "sphere_radius": self.sphere_radius,
            "tree": asdict(self.tree) if self.tree is not None else None,
            "meta": self.meta,
            "regions": [
                {**asdict(r), "lower": _encode(r.lower), "upper": _encode(r.upper)}
                for r in self.regions
            ],
        }
        return data

    def write(self, path: str | Path) -> Path:
        """Write ``plan.json`` atomically (unbounded faces are written as null)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return Path(path)


def read_plan(path: str | Path) -> RegionPlan:
    """Load ``plan.json``; a missing, foreign or malformed file is a clear error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: region plan not found (run `galmock plan` first)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read region plan: {err}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a region plan is a JSON object, got {type(data).__name__}")
    if data.get("format") != PLAN_FORMAT:
        raise InputError(f"{path}: format = {data.get('format')!r}, expected {PLAN_FORMAT!r} "
                         "(run `galmock plan` again)")
    try:
        regions = tuple(
            Region(
                **{
                    **r,
                    "lower": _decode(r["lower"], -math.inf),
                    "upper": _decode(r["upper"], math.inf),
                    "centre": tuple(r["centre"]),
                    "margin_kpc": tuple(r["margin_kpc"]),
                }
            )
            for r in data["regions"]
        )
        tree = KDTree(**{k: tuple(v) for k, v in data["tree"].items()}) if data["tree"] else None
        plan = RegionPlan(
            kind=data["kind"],
            regions=regions,
            n_particles=data["n_particles"],
            total_mass=data["total_mass"],
            margin_kpc=data["margin_kpc"],
            margin_fraction=data["margin_fraction"],
            max_margin_ratio=data["max_margin_ratio"],
            margin_taper=data["margin_taper"],
            target_particles=data["target_particles"],
            tree=tree,
            sphere_centre=tuple(data["sphere_centre"]) if data["sphere_centre"] else None,
            sphere_radius=data["sphere_radius"],
            holdout_fraction=data["holdout_fraction"],
            holdout_seed=data["holdout_seed"],
            meta=data.get("meta", {}),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: malformed region plan: {err!r}") from None
    problem = _inconsistency(plan)
    if problem:
        raise InputError(f"{path}: inconsistent region plan: {problem} (run `galmock plan` again)")
    return plan


def _inconsistency(plan: RegionPlan) -> str | None:
    """What makes a (hand-edited or damaged) plan unusable, or None: ids out of order, counts
    or masses that cannot be, and for a k-d plan boxes that are not exactly the split tree's
    leaves (overlapping or duplicated regions would double-count or lose stars)."""
    n = len(plan.regions)
    if n == 0:
        return "no regions"
    for i, r in enumerate(plan.regions):
        if r.id != i:
            return f"region {i} has id {r.id}"
        if min(r.owned_particles, r.training_particles, r.holdout_particles) < 0:
            return f"region {i} has a negative particle count"
        if not (math.isfinite(r.owned_mass) and r.owned_mass >= 0):
            return f"region {i} has owned_mass {r.owned_mass}"
        if not all(m >= 0 and math.isfinite(m) for m in r.margin_kpc):
            return f"region {i} has margin_kpc {list(r.margin_kpc)}"
        if not 0.0 < r.margin_keep <= 1.0:
            return f"region {i} has margin_keep {r.margin_keep}"
    owned = sum(r.owned_mass for r in plan.regions)
    if not math.isclose(owned, plan.total_mass, rel_tol=1e-9) and plan.kind == "kdtree":
        return f"the regions own {owned:.6g} Msun of total_mass {plan.total_mass:.6g}"
    if plan.kind == "sphere":
        return None if n == 1 else f"a sphere plan has one region, not {n}"
    if plan.tree is None:
        return "a k-d plan without its split tree"
    try:
        boxes = _leaf_boxes(plan.tree)
    except (IndexError, ValueError) as err:
        return f"the split tree is broken ({err})"
    if sorted(boxes) != list(range(n)):
        return f"the split tree's leaves name regions {sorted(boxes)}, not 0..{n - 1} once each"
    for r in plan.regions:
        if (tuple(r.lower), tuple(r.upper)) != boxes[r.id]:
            return f"region {r.id}'s box is not its leaf of the split tree"
    return None


def _leaf_boxes(tree: KDTree) -> dict[int, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Each leaf's box (region id -> (lower, upper)) from the split tree, root = all space."""
    boxes: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    stack = [(0, (-math.inf,) * 3, (math.inf,) * 3)]
    seen = 0
    while stack:
        node, lo, hi = stack.pop()
        seen += 1
        if seen > len(tree.axis):
            raise ValueError("it has a cycle")
        if tree.region[node] >= 0:
            if tree.region[node] in boxes:
                raise ValueError(f"region {tree.region[node]} is two leaves")
            boxes[tree.region[node]] = (lo, hi)
            continue
        axis, value = tree.axis[node], tree.value[node]
        left_hi = tuple(value if a == axis else v for a, v in enumerate(hi))
        right_lo = tuple(value if a == axis else v for a, v in enumerate(lo))
        stack.append((tree.left[node], lo, left_hi))
        stack.append((tree.right[node], right_lo, hi))
    return boxes


def holdout_mask(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Per-particle held-out flag from a hash of (seed, id): independent of order and ranks."""
    if fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    return _uniform_hash(np.asarray(ids, dtype=np.int64), seed) < fraction


def margin_kept(
    ids: np.ndarray, keep: float | np.ndarray, seed: int, region_id: int
) -> np.ndarray:
    """Which of a thinned region's margin particles (by id) train: a hash of (seed, region,
    id) below ``keep`` (one probability, or one per particle), independent of order, ranks and
    the held-out draw."""
    return _uniform_hash(np.asarray(ids, dtype=np.int64), derive_seed(seed, "margin",
                                                                       region_id)) < keep


def build_kdtree_plan(
    pos: np.ndarray,
    mass: np.ndarray,
    ids: np.ndarray,
    target_particles: int,
    margin_kpc: float,
    holdout_fraction: float = 0.0,
    seed: int = 0,
    margin_fraction: float | None = None,
    max_margin_ratio: float | None = None,
    margin_taper: bool = False,
) -> RegionPlan:
    """Split at medians along the widest (5–95 percentile) axis until cells own <= target.

    Each region's margin is ``margin_kpc`` per axis, or with ``margin_fraction`` that fraction
    of its owned particles' 5-95 percentile range per axis, capped at ``margin_kpc``. With
    ``margin_taper``, margin particles train with a probability falling from 1 at the face to
    0 at the margin's edge (:meth:`Region.margin_taper`), unweighted. With
    ``max_margin_ratio``, a region whose (kept) margin holds more than that many times its
    owned training particles trains on a random subset of them of that size, weighted up to
    stand for the rest (``margin_keep``).
    """
    pos = np.asarray(pos, dtype=np.float64)
    axes: list[int] = []
    values: list[float] = []
    lefts: list[int] = []
    rights: list[int] = []
    leaf_region: list[int] = []
    leaves: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (index, lower, upper)

    def new_node() -> int:
        for lst, v in ((axes, -1), (values, 0.0), (lefts, -1), (rights, -1), (leaf_region, -1)):
            lst.append(v)
        return len(axes) - 1

    # Iterative (explicit stack) so deep trees on 1e7+ particles cannot hit recursion limits.
    root = new_node()
    stack = [(root, np.arange(len(pos)), np.full(3, -np.inf), np.full(3, np.inf))]
    while stack:
        node, idx, lower, upper = stack.pop()
        split = _median_split(pos[idx]) if len(idx) > target_particles else None
        if split is None:
            leaf_region[node] = len(leaves)
            leaves.append((idx, lower, upper))
            continue
        axis, value = split
        go_left = pos[idx, axis] < value
        left_upper, right_lower = upper.copy(), lower.copy()
        left_upper[axis] = value
        right_lower[axis] = value
        axes[node], values[node] = axis, value
        lefts[node], rights[node] = new_node(), new_node()
        # Push right first so regions are numbered in depth-first, left-to-right order.
        stack.append((rights[node], idx[~go_left], right_lower, upper))
        stack.append((lefts[node], idx[go_left], lower, left_upper))

    tree = KDTree(tuple(axes), tuple(values), tuple(lefts), tuple(rights), tuple(leaf_region))
    owner = np.empty(len(pos), dtype=np.int32)
    for rid, (idx, _, _) in enumerate(leaves):
        owner[idx] = rid
    boxes = [(lo, hi) for _, lo, hi in leaves]
    return _finish_plan(
        "kdtree", pos, mass, ids, owner, boxes, margin_kpc, holdout_fraction, seed,
        margin_fraction=margin_fraction, max_margin_ratio=max_margin_ratio,
        margin_taper=margin_taper, target_particles=target_particles, tree=tree,
    )  # fmt: skip


def build_sphere_plan(
    pos: np.ndarray,
    mass: np.ndarray,
    ids: np.ndarray,
    centre: Sequence[float],
    radius: float,
    holdout_fraction: float = 0.0,
    seed: int = 0,
) -> RegionPlan:
    """One region: the particles with |r - centre| < radius (the GalaxyFlow set-up)."""
    pos = np.asarray(pos, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)
    inside = _within(pos, c, radius)
    if not inside.any():
        raise InputError(
            f"plan: no particles within {radius} kpc of {tuple(c.tolist())} (empty selection)"
        )
    owner = np.where(inside, 0, -1).astype(np.int32)
    boxes = [(c - radius, c + radius)]
    return _finish_plan(
        "sphere", pos, mass, ids, owner, boxes, 0.0, holdout_fraction, seed,
        sphere_centre=tuple(c.tolist()), sphere_radius=float(radius),
    )  # fmt: skip


def _finish_plan(
    kind: Literal["kdtree", "sphere"],
    pos: np.ndarray,
    mass: np.ndarray,
    ids: np.ndarray,
    owner: np.ndarray,
    boxes: list[tuple[np.ndarray, np.ndarray]],
    margin_kpc: float,
    holdout_fraction: float,
    seed: int,
    **extra: Any,
) -> RegionPlan:
    held = holdout_mask(ids, holdout_fraction, seed)
    provisional = RegionPlan(
        kind=kind,
        regions=tuple(
            Region(i, tuple(lo), tuple(hi), 0, 0, 0, 0.0, (0.0, 0.0, 0.0), 0.0)
            for i, (lo, hi) in enumerate(boxes)
        ),
        n_particles=len(pos),
        total_mass=float(np.sum(mass)),
        margin_kpc=margin_kpc,
        holdout_fraction=holdout_fraction,
        holdout_seed=seed,
        **extra,
    )
    owned_counts = np.bincount(owner[owner >= 0], minlength=len(boxes))
    owned_mass = np.bincount(owner[owner >= 0], weights=mass[owner >= 0], minlength=len(boxes))
    members = owned_indices(owner, len(boxes))
    fraction = extra.get("margin_fraction")
    provisional = replace(provisional, regions=tuple(
        replace(r, margin_kpc=_margin(pos[members[r.id]], margin_kpc, fraction))
        for r in provisional.regions
    ))  # fmt: skip
    ratio = extra.get("max_margin_ratio")
    regions = []
    for r in tqdm(provisional.regions, desc="plan: regions", unit="region", disable=None):
        train = provisional.training_indices(r.id, pos, members, ids)
        use = train[~held[train]]
        if len(use) == 0:
            raise InputError(f"plan: region {r.id} has no training particles")
        keep = _margin_keep(int((owner[use] == r.id).sum()), int((owner[use] != r.id).sum()),
                            ratio)
        if keep < 1.0:  # as training_indices does with this margin_keep
            margin = train[owner[train] != r.id]
            kept = provisional._keep(replace(r, margin_keep=keep), pos[margin])
            margin = margin[margin_kept(ids[margin], kept, seed, r.id)]
            train = np.sort(np.concatenate([members[r.id], margin]))
            use = train[~held[train]]
        centre, radius = _enclosing_ball(pos[use])
        regions.append(
            Region(
                id=r.id,
                lower=tuple(float(v) for v in r.lower),
                upper=tuple(float(v) for v in r.upper),
                owned_particles=int(owned_counts[r.id]),
                training_particles=len(use),
                holdout_particles=len(train) - len(use),
                owned_mass=float(owned_mass[r.id]),
                centre=centre,
                radius=radius,
                margin_kpc=r.margin_kpc,
                margin_keep=keep,
            )
        )
    return RegionPlan(**{**provisional.__dict__, "regions": tuple(regions)})


def _margin_keep(owned: int, margin: int, max_ratio: float | None) -> float:
    """The fraction of a region's margin particles it trains on: all of them, unless they
    outnumber ``max_ratio`` times its owned ones.

    Example:
        >>> _margin_keep(1000, 300, 0.4), _margin_keep(1000, 800, 0.4), _margin_keep(10, 9, None)
        (1.0, 0.5, 1.0)
        >>> _margin_keep(0, 50, 0.4)  # every owned particle held out: thinning has no scale
        1.0
    """
    if max_ratio is None or margin <= max_ratio * owned or owned == 0:
        return 1.0  # (a region with every owned particle held out keeps its whole margin)
    return max_ratio * owned / margin


def owned_indices(owner: np.ndarray, n_regions: int) -> list[np.ndarray]:
    """Indices owned by each region (unowned, -1, dropped)."""
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner[owner >= 0], minlength=n_regions)
    start = int((owner < 0).sum())
    return np.split(order[start:], np.cumsum(counts)[:-1])


def _median_split(points: np.ndarray) -> tuple[int, float] | None:
    """(axis, value) splitting ``points`` in half along the widest axis; None if degenerate."""
    lo, hi = np.percentile(points, [5.0, 95.0], axis=0)
    k = len(points) // 2
    for axis in np.argsort(hi - lo)[::-1]:
        vals = np.partition(points[:, axis], [k - 1, k])
        a, b = vals[k - 1], vals[k]
        value = 0.5 * (a + b)
        if b > a and a < value <= b:  # value strictly separates the two halves
            return int(axis), float(value)
        if b == a and (points[:, axis] < a).any():
            return int(axis), float(a)  # ties: all equal values go right
    return None


def _enclosing_ball(points: np.ndarray) -> tuple[tuple[float, float, float], float]:
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre = 0.5 * (lo + hi)
    radius = float(np.sqrt(((points - centre) ** 2).sum(axis=1).max()))
    # Slack of 1e-9 relative: other code (torch norms in the flows' preprocessing) may compute
    # the farthest particle's distance an ulp larger; the ball must still contain it.
    return tuple(float(v) for v in centre), radius * (1.0 + 1e-9)


def _within(pos: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return ((pos - centre) ** 2).sum(axis=1) < radius * radius


def _margin(
    owned: np.ndarray, margin_kpc: float, fraction: float | None
) -> tuple[float, float, float]:
    """A region's margin on every axis: ``margin_kpc``, or ``fraction`` of its size (the widest
    5-95 percentile range of its owned particles; percentiles, so a few far-flung particles in
    an unbounded outer region do not widen it) capped at ``margin_kpc``.

    The size is the widest axis, not each axis: a flow's blur at a hard edge follows the
    region's scale as a whole (a thin slab with a margin of 5% of its own thickness loses a
    fifth of its stars at the face, measured on the demo)."""
    if fraction is None or len(owned) == 0:
        return (float(margin_kpc),) * 3  # type: ignore[return-value]
    lo, hi = np.percentile(owned, [5.0, 95.0], axis=0)
    return (float(min(margin_kpc, fraction * float((hi - lo).max()))),) * 3  # type: ignore[return-value]


def _boxes_overlap(a: Region, b: Region) -> bool:
    """Whether ``a``'s box reaches into ``b``'s training volume (its box plus its margin)."""
    return all(
        a_lo < b_hi + m and a_hi > b_lo - m
        for a_lo, a_hi, b_lo, b_hi, m in zip(a.lower, a.upper, b.lower, b.upper, b.margin_kpc)
    )


def _encode(bound: Sequence[float]) -> list[float | None]:
    return [None if math.isinf(v) else float(v) for v in bound]


def _decode(bound: Sequence[float | None], fill: float) -> tuple[float, float, float]:
    return tuple(fill if v is None else float(v) for v in bound)  # type: ignore[return-value]


def _uniform_hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (id, seed) mapped to [0, 1): a counter-based, order-free random number."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(
            0x9E3779B97F4A7C15
        )
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
