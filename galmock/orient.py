"""Centring and orienting a galaxy: pure functions on arrays.

galmock's frame is astropy's Galactocentric: the stellar disk's angular momentum points along
-z, so with the Sun on the -x axis local disk stars move towards +y.

Example:
    >>> rng, n = np.random.default_rng(0), 5000  # a thin disk, spinning along +z, then tilted
    >>> r, phi = rng.exponential(3.0, n), rng.uniform(0.0, 2 * np.pi, n)
    >>> disk = np.column_stack([r * np.cos(phi), r * np.sin(phi), rng.normal(0.0, 0.1, n)])
    >>> circ = 200.0 * np.column_stack([-np.sin(phi), np.cos(phi), np.zeros(n)])
    >>> tilt = rotation_to([0.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    >>> pos, vel = disk @ tilt.T + [3.0, -2.0, 1.0], circ @ tilt.T + [10.0, 0.0, 0.0]
    >>> mass = np.ones(n)
    >>> centre = shrinking_sphere_centre(pos, mass)
    >>> centre.round(1)
    array([ 3., -2.,  1.])
    >>> bulk = bulk_velocity(pos - centre, vel, mass, radius=10.0)
    >>> rot = disk_alignment_matrix(pos - centre, vel - bulk, mass, radius=10.0)
    >>> aligned = (pos - centre) @ rot.T
    >>> round(float(aligned[:, 2].std()), 2)  # the disk's thickness again
    0.1
    >>> spin = angular_momentum(aligned, (vel - bulk) @ rot.T, mass)
    >>> (spin / np.linalg.norm(spin)).round(3) + 0.0  # along -z
    array([ 0.,  0., -1.])
"""

from __future__ import annotations

import numpy as np


def shrinking_sphere_centre(
    pos: np.ndarray,
    mass: np.ndarray,
    shrink: float = 0.9,
    min_particles: int = 100,
    min_fraction: float = 0.001,
) -> np.ndarray:
    """Mass-weighted shrinking-sphere centre (Power et al. 2003).

    Start from the centre of mass and a sphere holding every particle; shrink the radius by
    ``shrink`` and recentre on the particles inside until fewer than
    ``max(min_particles, min_fraction * N)`` remain.
    """
    pos = np.asarray(pos, dtype=np.float64)
    mass = np.asarray(mass, dtype=np.float64)
    centre = np.average(pos, axis=0, weights=mass)
    radius = float(np.sqrt(((pos - centre) ** 2).sum(axis=1).max()))
    floor = max(min_particles, int(min_fraction * len(pos)))
    inside = np.ones(len(pos), dtype=bool)
    while inside.sum() > floor and radius > 0:
        radius *= shrink
        r2 = ((pos - centre) ** 2).sum(axis=1)
        new_inside = r2 < radius * radius
        if new_inside.sum() < max(2, floor // 2):
            break
        inside = new_inside
        centre = np.average(pos[inside], axis=0, weights=mass[inside])
    return centre


def bulk_velocity(
    pos: np.ndarray, vel: np.ndarray, mass: np.ndarray, radius: float
) -> np.ndarray:
    """Mass-weighted mean velocity of particles within ``radius`` of the origin."""
    inside = (np.asarray(pos) ** 2).sum(axis=1) < radius * radius
    if not inside.any():
        raise ValueError(f"no particles within {radius} kpc of the centre")
    return np.average(np.asarray(vel)[inside], axis=0, weights=np.asarray(mass)[inside])


def angular_momentum(pos: np.ndarray, vel: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Total angular momentum sum m (r x v)."""
    return (np.asarray(mass)[:, None] * np.cross(pos, vel)).sum(axis=0)


def rotation_to(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The proper rotation matrix R with R @ a parallel to b (smallest angle, Rodrigues)."""
    a = np.asarray(a, dtype=np.float64) / np.linalg.norm(a)
    b = np.asarray(b, dtype=np.float64) / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-12:
        # Antiparallel: rotate by pi about any axis perpendicular to a.
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def disk_alignment_matrix(
    pos: np.ndarray, vel: np.ndarray, mass: np.ndarray, radius: float
) -> np.ndarray:
    """Rotation taking the angular momentum of particles within ``radius`` onto -z.

    ``pos`` and ``vel`` must already be centred.
    """
    inside = (np.asarray(pos) ** 2).sum(axis=1) < radius * radius
    if not inside.any():
        raise ValueError(f"no particles within {radius} kpc of the centre")
    spin = angular_momentum(pos[inside], vel[inside], mass[inside])
    if np.linalg.norm(spin) == 0:
        raise ValueError("the particles have no net angular momentum to align")
    return rotation_to(spin, np.array([0.0, 0.0, -1.0]))


def rotation_about_z(angle_deg: float) -> np.ndarray:
    """Counter-clockwise rotation by ``angle_deg`` about +z."""
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
