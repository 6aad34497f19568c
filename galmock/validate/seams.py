"""Seam diagnostics: is the upsampled density continuous across the k-d plan's internal faces?

Each region's flows are trained and sampled separately, so a mismatch would show as a jump in
star density at a face. For every split of the k-d tree (a plane ``x_axis = value`` inside the
split node's box) count stars and particles in slabs of width ``w`` on either side. With
``s_L, s_R`` stars and ``p_L, p_R`` particles, ``log(s_L / s_R) - log(p_L / p_R)`` is 0 for a
seamless catalog up to Poisson noise, whose standard error is
``sqrt(1/s_L + 1/s_R + 1/p_L + 1/p_R)``.

That comparison carries the particles' own Poisson noise, which no number of stars removes.
The *step* measures the jump of the star density alone. With star counts ``L2, L1 | R1, R2`` in
four adjacent slabs of width ``w`` (``L1`` and ``R1`` touching the face), a log-density with
slope ``g`` and a jump ``J`` at the face gives ``log(R1/L1) = g w + J`` and
``log(R2/L2) = 3 g w + J`` (to O(w^2 f''')), so
``step = 1.5 (log(R1/L1) - log(R2/L2) / 3)`` estimates ``J = log(rho_R / rho_L)`` whatever the
smooth gradient, with standard error ``1.5 sqrt(1/L1 + 1/R1 + (1/L2 + 1/R2) / 9)``: it shrinks
with the number of stars read. Where the log-density is not smooth on the slab scale (a cusp,
the disk's mid-plane) the estimator has a bias of its own, which a sample of the same density
without seams has too: :func:`seam_excess` subtracts the step of such a *reference* (the true
density's draws where it is known, else the particles) and reports the difference, the seam
the tiling added.

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
    >>> steps = seam_steps(faces, star_pos, width=0.25)
    >>> [abs(r["step"]) < 4 * r["step_stderr"] for r in steps]
    [True, True, True]
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


def _slab_counts(face: Face, pos: np.ndarray, width: float, offset: int = 0) -> tuple[int, int]:
    """Counts in the slabs ``offset`` slab widths away from the face on its left and right."""
    others = [a for a in range(3) if a != face.axis]
    lo, hi = np.asarray(face.lower), np.asarray(face.upper)
    within = np.all((pos[:, others] >= lo[others]) & (pos[:, others] < hi[others]), axis=1)
    x = pos[:, face.axis]
    near, far = face.value - offset * width, face.value + offset * width
    left = within & (x >= near - width) & (x < near)
    right = within & (x >= far) & (x < far + width)
    return int(left.sum()), int(right.sum())


def seam_steps(faces: list[Face], samples: np.ndarray, width: float) -> list[dict[str, Any]]:
    """Per face: the star density's jump ``step`` = log(rho_R / rho_L) and its standard error,
    from the samples alone (see the module docstring); None where a slab is empty."""
    rows = []
    for face in faces:
        l1, r1 = _slab_counts(face, samples, width, 0)
        l2, r2 = _slab_counts(face, samples, width, 1)
        if min(l1, r1, l2, r2) > 0:
            step = 1.5 * (math.log(r1 / l1) - math.log(r2 / l2) / 3)
            se = 1.5 * math.sqrt(1 / l1 + 1 / r1 + (1 / l2 + 1 / r2) / 9)
        else:
            step = se = None
        rows.append({"node": face.node, "axis": "xyz"[face.axis], "value_kpc": face.value,
                     "slab_counts": [l2, l1, r1, r2], "step": step, "step_stderr": se})
    return rows


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


def seam_excess(
    faces: list[Face], samples: np.ndarray, reference: np.ndarray, width: float
) -> list[dict[str, Any]]:
    """Per face: the samples' step, the reference's step, and their difference ``excess`` with
    its standard error (both Poisson errors in quadrature); None where a slab is empty."""
    rows = []
    for mine, ref in zip(seam_steps(faces, samples, width), seam_steps(faces, reference, width),
                         strict=True):
        ok = mine["step"] is not None and ref["step"] is not None
        rows.append({**mine, "reference_slab_counts": ref["slab_counts"],
                     "reference_step": ref["step"], "reference_step_stderr": ref["step_stderr"],
                     "excess": mine["step"] - ref["step"] if ok else None,
                     "excess_stderr": math.hypot(mine["step_stderr"], ref["step_stderr"])
                     if ok else None})
    return rows
