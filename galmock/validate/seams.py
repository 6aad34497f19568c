"""Seam diagnostics: is the upsampled density continuous across the k-d plan's internal faces?

Each region's flows are trained and sampled separately, so a mismatch would show as a jump in
star density at a face. For every split of the k-d tree (a plane ``x_axis = value`` inside the
split node's box) count stars and particles in slabs of width ``w`` on either side. With
``s_L, s_R`` stars and ``p_L, p_R`` particles, ``log(s_L / s_R) - log(p_L / p_R)`` is 0 for a
seamless catalog up to Poisson noise, whose standard error is
``sqrt(1/s_L + 1/s_R + 1/p_L + 1/p_R)``.

Example:
    >>> from galmock.plan import build_kdtree_plan
    >>> rng = np.random.default_rng(0)
    >>> particle_pos = rng.normal(0.0, 3.0, (4000, 3))
    >>> plan = build_kdtree_plan(particle_pos, np.ones(4000), np.arange(4000), 1000, 0.5)
    >>> faces = internal_faces(plan)  # 4 regions: the root split and one in each half
    >>> [(f.node, "xyz"[f.axis]) for f in faces]
    [(0, 'x'), (1, 'z'), (2, 'y')]
    >>> star_pos = rng.normal(0.0, 3.0, (40000, 3))  # seamless: the particles' own density
    >>> rows = seam_counts(faces, star_pos, particle_pos, width=0.25)
    >>> [(r["samples_left"], r["particles_left"], round(r["z"], 2)) for r in rows]
    [(1350, 130, -1.05), (641, 64, 0.08), (669, 65, -1.93)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from galmock.plan import RegionPlan


@dataclass(frozen=True)
class Face:
    """The plane ``x[axis] = value`` within ``[lower, upper)`` on the other two axes."""

    node: int
    axis: int
    value: float
    lower: tuple[float, float, float]
    upper: tuple[float, float, float]


def internal_faces(plan: RegionPlan) -> list[Face]:
    """Every split plane of a k-d plan, with the box of the node it splits (none for a sphere
    plan or a single region)."""
    if plan.kind != "kdtree" or plan.tree is None or len(plan.regions) < 2:
        return []
    tree = plan.tree
    faces: list[Face] = []
    stack = [(0, np.full(3, -np.inf), np.full(3, np.inf))]
    while stack:
        node, lo, hi = stack.pop()
        if tree.region[node] >= 0:
            continue
        axis, value = tree.axis[node], tree.value[node]
        faces.append(Face(node, axis, value, tuple(lo.tolist()), tuple(hi.tolist())))
        left_hi, right_lo = hi.copy(), lo.copy()
        left_hi[axis] = value
        right_lo[axis] = value
        stack.append((tree.right[node], right_lo, hi))
        stack.append((tree.left[node], lo, left_hi))
    return faces


def _slab_counts(face: Face, pos: np.ndarray, width: float) -> tuple[int, int]:
    others = [a for a in range(3) if a != face.axis]
    lo, hi = np.asarray(face.lower), np.asarray(face.upper)
    within = np.all((pos[:, others] >= lo[others]) & (pos[:, others] < hi[others]), axis=1)
    x = pos[:, face.axis]
    left = within & (x >= face.value - width) & (x < face.value)
    right = within & (x >= face.value) & (x < face.value + width)
    return int(left.sum()), int(right.sum())


def seam_counts(
    faces: list[Face], samples: np.ndarray, particles: np.ndarray, width: float
) -> list[dict[str, Any]]:
    """Per face: slab counts, the log-ratio statistic, its standard error and z-score."""
    rows = []
    for face in faces:
        s_left, s_right = _slab_counts(face, samples, width)
        p_left, p_right = _slab_counts(face, particles, width)
        counts = (s_left, s_right, p_left, p_right)
        if min(counts) > 0:
            stat = math.log(s_left / s_right) - math.log(p_left / p_right)
            se = math.sqrt(sum(1.0 / c for c in counts))
            z = stat / se
        else:
            stat = se = z = None
        rows.append({
            "node": face.node,
            "axis": "xyz"[face.axis],
            "value_kpc": face.value,
            "samples_left": s_left,
            "samples_right": s_right,
            "particles_left": p_left,
            "particles_right": p_right,
            "log_ratio_difference": stat,
            "stderr": se,
            "z": z,
        })  # fmt: skip
    return rows
