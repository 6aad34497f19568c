"""Centring and alignment math."""

import numpy as np
import pytest

from galmock.orient import (
    angular_momentum,
    bulk_velocity,
    disk_alignment_matrix,
    rotation_about_z,
    rotation_to,
    shrinking_sphere_centre,
)


def random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("seed", range(5))
def test_rotation_to_is_proper_and_maps_a_to_b(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = random_unit(rng), random_unit(rng)
    for target in (b, -a, a):  # generic, antiparallel, identical
        rot = rotation_to(a, target)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(rot @ a, target, atol=1e-12)


def test_rotation_about_z_is_counter_clockwise() -> None:
    np.testing.assert_allclose(rotation_about_z(90) @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-15)


def test_tilted_offset_disk_is_recovered() -> None:
    rng = np.random.default_rng(2)
    n = 50_000
    r = rng.gamma(2.0, 2.5, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    pos = np.column_stack([r * np.cos(phi), r * np.sin(phi), rng.normal(0, 0.3, n)])
    # counter-clockwise rotation seen from +z: angular momentum along +z before alignment
    vel = 220.0 * np.column_stack([-np.sin(phi), np.cos(phi), np.zeros(n)])
    vel += rng.normal(0, 20, (n, 3))
    mass = np.ones(n)
    tilt = rotation_to(np.array([0, 0, 1.0]), np.array([0.3, -0.5, 0.8]))
    centre, v0 = np.array([1000.0, -250.0, 40.0]), np.array([-80.0, 30.0, 5.0])
    obs_pos, obs_vel = pos @ tilt.T + centre, vel @ tilt.T + v0

    found = shrinking_sphere_centre(obs_pos, mass)
    # the shrinking sphere ends on ~0.1% of the particles: its centre is good to a small
    # fraction of the disk scale length
    assert np.linalg.norm(found - centre) < 0.3
    rel = obs_pos - found
    bulk = bulk_velocity(rel, obs_vel, mass, radius=10.0)
    # mean of ~40k velocities with 20 km/s noise: a few km/s at most (centre error included)
    assert np.linalg.norm(bulk - v0) < 5.0
    rot = disk_alignment_matrix(rel, obs_vel - bulk, mass, radius=10.0)
    spin = angular_momentum(rel @ rot.T, (obs_vel - bulk) @ rot.T, mass)
    np.testing.assert_allclose(spin / np.linalg.norm(spin), [0, 0, -1], atol=1e-3)


def test_alignment_needs_particles_and_spin() -> None:
    pos = np.array([[100.0, 0, 0]])
    with pytest.raises(ValueError, match="no particles within"):
        disk_alignment_matrix(pos, np.zeros((1, 3)), np.ones(1), radius=1.0)
    with pytest.raises(ValueError, match="no net angular momentum"):
        disk_alignment_matrix(pos, np.zeros((1, 3)), np.ones(1), radius=1000.0)
