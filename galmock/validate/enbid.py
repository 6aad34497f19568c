"""Simplified EnBiD: the entropy-based box tree and the Gaussian kernel upsampler built on it.

This is the kernel-smoothing baseline behind today's public mocks (Aurigaia, Ananke), in the
simplified form the GalaxyFlow paper uses (Lim et al. 2022, section 4); it is *not* the full
EnBiD of Sharma & Steinmetz (2006): no boundary correction, no kernel smoothing of the density,
no anisotropic kernels. ``build_enbid_tree`` partitions the points into boxes holding one point
each:

1. The root box is the points' bounding box, unpadded (extremal points lie on its faces).
2. For a box holding ``N_p >= 2`` points, the Shannon entropy along each axis ``j`` is
   ``H_j = -sum_k p_k ln p_k`` of the histogram of ``N_p`` equal bins over the *box's* extent
   ``[lo_j, hi_j]`` on that axis (``p_k = count_k / N_p``); a point's bin is
   ``min(floor((x_j - lo_j) / (hi_j - lo_j) * N_p), N_p - 1)``.
3. The axis of minimum entropy is split (ties: the lowest axis index). Axes on which all the
   box's points share one value cannot be split into two non-empty boxes and are skipped; when
   every axis is like that the box holds exact duplicates and an ``InputError`` names them.
4. Split reading: with ``m`` the mean of the box's points on that axis, ``a`` the largest
   coordinate ``<= m`` and ``b`` the smallest ``> m`` (the nearest lower and upper neighbours of
   the mean), the box is cut at ``s = (a + b) / 2``; points ``<= m`` go to the lower child, the
   rest to the upper one, so both children are non-empty and ``a < s < b`` (only for ``a``, ``b``
   adjacent floats can ``s`` round onto one of them; membership still follows ``m``).
5. Repeat until every box holds one point.

The split choice depends only on each axis's histogram shape, so it is invariant to per-axis
scaling and no standardisation is needed. All boxes of one tree level are processed at once
(per-axis bin counts with one ``np.bincount`` over box offsets), so 10^6 six-dimensional points
take tens of seconds on one core; a tree is ``O(n log n)`` for ordinary data, but degenerate
data (e.g. exponentially spaced coordinates, where the mean split peels one point per level) can
take ``O(n)`` levels.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> tree = build_enbid_tree(rng.normal(size=(1000, 6)))
    >>> bool(np.isclose(tree.volumes.sum(), np.prod(tree.root_upper - tree.root_lower)))
    True
    >>> up = EnbidUpsampler.fit(rng.normal(size=(500, 3)), rng.normal(size=(500, 3)))
    >>> pos, vel = up.sample(2000, seed=1)
    >>> pos.shape, vel.shape
    ((2000, 3), (2000, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from galmock.errors import InputError

__all__ = ["EnbidSplits", "EnbidTree", "EnbidUpsampler", "build_enbid_tree"]

_SAMPLE_CHUNK = 1 << 20  # rows per Gaussian draw in EnbidUpsampler.sample


@dataclass(frozen=True)
class EnbidSplits:
    """Every split of the tree, one row per split, in the order they were made (level by level).

    ``lower``/``upper`` are the split box's corners, ``count`` its points, ``entropy`` the
    per-axis entropies (``inf`` for axes that cannot be split), ``axis`` the axis cut at
    ``value``; ``depth`` is the box's level (root: 0).
    """

    depth: np.ndarray  # (s,) int
    count: np.ndarray  # (s,) int
    axis: np.ndarray  # (s,) int
    value: np.ndarray  # (s,) float64
    entropy: np.ndarray  # (s, d) float64
    lower: np.ndarray  # (s, d)
    upper: np.ndarray  # (s, d)

    def __len__(self) -> int:
        return len(self.axis)


@dataclass(frozen=True)
class EnbidTree:
    """The leaf box of every point: row ``i`` of ``lower``/``upper`` is the box of ``points[i]``."""

    lower: np.ndarray  # (n, d) float64
    upper: np.ndarray  # (n, d) float64
    root_lower: np.ndarray  # (d,)
    root_upper: np.ndarray  # (d,)
    splits: EnbidSplits | None  # None when built with record_splits=False
    depth: int  # number of levels (the deepest leaf's depth)

    @property
    def side_lengths(self) -> np.ndarray:
        """(n, d) box side lengths ``L_i``."""
        return self.upper - self.lower

    @property
    def volumes(self) -> np.ndarray:
        """(n,) box volumes (product of the side lengths)."""
        return np.prod(self.side_lengths, axis=1)

    def density(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(n,) EnBiD density, per unit volume of the points' space, normalised to unit total.

        Each box holds probability ``1/n`` (or ``w_i / sum(w)`` with ``weights``), so
        ``density = 1 / (n * volume)`` and ``sum(density * volumes) == 1``. Multiply by ``n``
        (or the total mass) for a number (mass) density, as EnBiD itself reports.
        """
        if weights is None:
            return 1.0 / (len(self.lower) * self.volumes)
        w = np.asarray(weights, dtype=np.float64)
        return w / (w.sum() * self.volumes)


def build_enbid_tree(points: np.ndarray, record_splits: bool = True) -> EnbidTree:
    """Partition ``points`` (n, d) into n boxes of one point each by minimum-entropy splits.

    See the module docstring for the exact rules. ``record_splits=False`` skips the split record
    (it costs ~(3d + 4) floats per point), e.g. for the upsampler on millions of particles.

    Example:
        >>> tree = build_enbid_tree(np.array([[0.0, 0.0], [1.0, 3.0], [3.0, 1.0]]))
        >>> tree.volumes.round(3).tolist()
        [1.5, 4.5, 3.0]
    """
    pts = _check_points(points)
    n, d = pts.shape
    root_lower, root_upper = pts.min(axis=0), pts.max(axis=0)
    flat = np.flatnonzero(root_upper <= root_lower)
    if flat.size:
        raise InputError(
            f"EnBiD points: column {int(flat[0])} has the same value {root_lower[flat[0]]!r} "
            "for every point, so the bounding box has zero volume"
        )
    leaf_lower = np.empty((n, d))
    leaf_upper = np.empty((n, d))
    record: list[tuple[np.ndarray, ...]] = []
    # Active state: point ids grouped by box (contiguous), and per-box count and corners.
    ids = np.arange(n)
    counts = np.array([n])
    lo, hi = root_lower[None, :].copy(), root_upper[None, :].copy()
    depth = 0
    while ids.size:
        x = pts[ids]
        m = ids.size
        k = counts.size
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        box = np.repeat(np.arange(k), counts)  # box of each active point
        entropy = _entropies(x, box, starts, counts, lo, hi)
        spread_min = np.minimum.reduceat(x, starts, axis=0)
        spread_max = np.maximum.reduceat(x, starts, axis=0)
        entropy[spread_max <= spread_min] = np.inf  # axes that cannot give two non-empty boxes
        stuck = np.flatnonzero(np.isinf(entropy).all(axis=1))
        if stuck.size:
            dup = np.sort(ids[starts[stuck[0]] : starts[stuck[0]] + counts[stuck[0]]])
            raise InputError(
                f"EnBiD points: rows {dup[:10].tolist()} are exact duplicates "
                f"({pts[dup[0]].tolist()}); remove or jitter them"
            )
        axis = np.argmin(entropy, axis=1)
        v = x[np.arange(m), axis[box]]
        lo_ax, hi_ax = spread_min[np.arange(k), axis], spread_max[np.arange(k), axis]
        mean = np.bincount(box, weights=v, minlength=k) / counts
        # Rounding can put the computed mean on max; keep it below so the upper child is not empty.
        mean = np.clip(mean, lo_ax, np.nextafter(hi_ax, -np.inf))
        upper_side = v > mean[box]
        below = np.maximum.reduceat(np.where(upper_side, -np.inf, v), starts)
        above = np.minimum.reduceat(np.where(upper_side, v, np.inf), starts)
        value = 0.5 * (below + above)
        if record_splits:
            record.append(
                (np.full(k, depth), counts.copy(), axis, value, entropy, lo.copy(), hi.copy())
            )
        # Children: lower child takes the box's slot order first, then the upper child.
        n_up = np.bincount(box, weights=upper_side, minlength=k).astype(np.int64)
        n_low = counts - n_up
        order = _partition(upper_side, box, starts, n_low)
        ids = ids[order]
        child_counts = np.column_stack([n_low, n_up]).ravel()
        child_lo = np.repeat(lo, 2, axis=0)
        child_hi = np.repeat(hi, 2, axis=0)
        rows = np.arange(k)
        child_hi[2 * rows, axis] = value
        child_lo[2 * rows + 1, axis] = value
        # Finished boxes (one point) leave the active set.
        done = child_counts == 1
        child_starts = np.concatenate([[0], np.cumsum(child_counts)[:-1]])
        leaf_ids = ids[child_starts[done]]
        leaf_lower[leaf_ids] = child_lo[done]
        leaf_upper[leaf_ids] = child_hi[done]
        keep = ~done
        ids = ids[np.repeat(keep, child_counts)]
        counts, lo, hi = child_counts[keep], child_lo[keep], child_hi[keep]
        depth += 1
    splits = None
    if record_splits:
        cols = [np.concatenate(c) for c in zip(*record)] if record else _empty_record(d)
        splits = EnbidSplits(*cols)
    return EnbidTree(leaf_lower, leaf_upper, root_lower, root_upper, splits, depth)


def _entropies(
    x: np.ndarray,
    box: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """(k, d) Shannon entropy (nats) of each box's N_p-bin histogram along each axis.

    The N_p bins of box b are slots ``starts[b] .. starts[b] + N_p - 1`` of one array of length
    ``m`` (the active points), so one ``bincount`` per axis counts every box at once.
    """
    m, d = x.shape
    k = counts.size
    n_p = counts[box].astype(np.float64)
    out = np.empty((k, d))
    for j in range(d):
        width = (hi[:, j] - lo[:, j])[box]
        b = np.floor((x[:, j] - lo[box, j]) / width * n_p)
        b = np.clip(b, 0, n_p - 1).astype(np.int64)
        hist = np.bincount(starts[box] + b, minlength=m)
        p = hist / n_p  # slot i belongs to box[i], so n_p lines up with the slots
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(hist > 0, -p * np.log(p), 0.0)
        out[:, j] = np.bincount(box, weights=terms, minlength=k)
    return out


def _partition(
    upper_side: np.ndarray, box: np.ndarray, starts: np.ndarray, n_low: np.ndarray
) -> np.ndarray:
    """Stable in-box partition: the permutation putting each box's lower points before its
    upper ones, keeping boxes contiguous and in order (O(m), no sort)."""
    up = upper_side.astype(np.int64)
    low = 1 - up
    # Exclusive running counts within each box.
    low_rank = np.cumsum(low) - low
    up_rank = np.cumsum(up) - up
    low_rank -= low_rank[starts][box]
    up_rank -= up_rank[starts][box]
    dest = np.where(upper_side, starts[box] + n_low[box] + up_rank, starts[box] + low_rank)
    order = np.empty_like(dest)
    order[dest] = np.arange(dest.size)
    return order


def _empty_record(d: int) -> list[np.ndarray]:
    ints = np.zeros(0, dtype=np.int64)
    return [ints, ints, ints, np.zeros(0), np.zeros((0, d)), np.zeros((0, d)), np.zeros((0, d))]


def _check_points(points: np.ndarray) -> np.ndarray:
    a = np.asarray(points)
    if a.ndim != 2 or a.shape[1] < 1:
        raise InputError(f"EnBiD points: expected an (n, d) array, got shape {a.shape}")
    if a.shape[0] < 2:
        raise InputError(f"EnBiD points: need at least 2 points, got {a.shape[0]}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(
            f"EnBiD points: {int(bad.sum())} non-finite values, first at row {row}, "
            f"column {col} ({a[row, col]!r})"
        )
    return a


class EnbidUpsampler:
    """Kernel-smoothing upsampler fitted on particles (the Aurigaia/Ananke baseline).

    Each particle is the centre of a 6-D Gaussian with per-axis dispersion
    ``sigma_i = bandwidth_factor * L_i / 2``, ``L_i`` its EnBiD box side lengths (the paper's
    simplified EnBiD: ``sigma_i^2 ∝ (L_i/2)^2``; ``bandwidth_factor=1`` is that proportionality
    with constant 1). Phase-space points are ``(x, y, z, vx, vy, vz)`` in kpc and km/s; the tree
    is scale-invariant per axis, so the units do not change the boxes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> up = EnbidUpsampler.fit(rng.normal(size=(100, 3)), rng.normal(size=(100, 3)))
        >>> up.log_prob(*up.sample(5, seed=0)).shape
        (5,)
    """

    def __init__(
        self,
        centres: np.ndarray,
        sigma: np.ndarray,
        tree: EnbidTree,
        weights: np.ndarray | None = None,
    ) -> None:
        self.centres = centres
        self.sigma = sigma
        self.tree = tree
        self.weights = weights  # normalised to sum 1, or None for uniform parents

    @classmethod
    def fit(
        cls,
        pos: np.ndarray,
        vel: np.ndarray,
        bandwidth_factor: float = 1.0,
        weights: np.ndarray | None = None,
    ) -> EnbidUpsampler:
        """Build the EnBiD tree of the particles' phase-space points and set the kernels."""
        pos, vel = np.asarray(pos, dtype=np.float64), np.asarray(vel, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3 or vel.shape != pos.shape:
            raise InputError(
                f"EnBiD fit: pos and vel must both be (n, 3), got {pos.shape} and {vel.shape}"
            )
        if not (np.isfinite(bandwidth_factor) and bandwidth_factor > 0):
            raise InputError(
                f"EnBiD fit: bandwidth_factor must be positive, got {bandwidth_factor!r}"
            )
        w = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            valid = w.shape == (len(pos),) and np.all(np.isfinite(w)) and np.all(w >= 0)
            if not valid or w.sum() <= 0:
                raise InputError(
                    f"EnBiD fit: weights must be {len(pos)} finite non-negative values with a "
                    f"positive sum, got shape {w.shape}"
                )
            w = w / w.sum()
        centres = np.hstack([pos, vel])
        tree = build_enbid_tree(centres, record_splits=False)
        sigma = bandwidth_factor * tree.side_lengths / 2.0
        return cls(centres, sigma, tree, w)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws: parents uniform (or by weight), one Gaussian draw each; (n, 3) kpc and
        (n, 3) km/s float64, the same for the same seed."""
        if n < 0:
            raise InputError(f"EnBiD sample: n must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        k = len(self.centres)
        parents = rng.choice(k, size=n, p=self.weights) if self.weights is not None else (
            rng.integers(0, k, size=n)
        )
        pos, vel = np.empty((n, 3)), np.empty((n, 3))
        # Chunks bound the temporaries; the normals come from one stream in a fixed order, so
        # the draws do not depend on the chunk size.
        for s in range(0, n, _SAMPLE_CHUNK):
            p = parents[s : s + _SAMPLE_CHUNK]
            draws = rng.standard_normal((len(p), 6))
            draws *= self.sigma[p]
            draws += self.centres[p]
            pos[s : s + len(p)], vel[s : s + len(p)] = draws[:, :3], draws[:, 3:]
        return pos, vel

    def log_prob(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        """(m,) exact log-density of the Gaussian mixture at ``(pos, vel)``, in
        ln(kpc^-3 (km/s)^-3).

        Brute force over all components, ``O(m * n * 6)``, in query chunks of ~4e6 pair
        elements (~0.2 GB): meant for modest particle counts (10^4 x 10^4 takes seconds).
        """
        x = np.hstack([np.asarray(pos, dtype=np.float64), np.asarray(vel, dtype=np.float64)])
        if x.ndim != 2 or x.shape[1] != 6:
            raise InputError(f"EnBiD log_prob: expected (m, 3) pos and vel, got {x.shape}")
        k = len(self.centres)
        inv = 1.0 / self.sigma
        log_norm = -np.log(self.sigma).sum(axis=1) - 3.0 * np.log(2.0 * np.pi)
        if self.weights is not None:
            with np.errstate(divide="ignore"):
                log_norm = log_norm + np.log(self.weights)
        else:
            log_norm = log_norm - np.log(k)
        chunk = max(1, 4_000_000 // (6 * k))
        out = np.empty(len(x))
        for s in range(0, len(x), chunk):
            # Direct differences (not |x|^2 - 2x.c + |c|^2) keep float64 accuracy near centres.
            z = (x[s : s + chunk, None, :] - self.centres[None, :, :]) * inv[None, :, :]
            out[s : s + chunk] = logsumexp(log_norm[None, :] - 0.5 * np.sum(z * z, axis=2), axis=1)
        return out
