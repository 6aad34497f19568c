"""Per-region upsampling math: seeded counts, the ownership cut, parents, masses and columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from galmock.config import UpsampleConfig, default_config
from galmock.errors import ConfigError, InputError
from galmock.imf import kroupa2001
from galmock.plan import Region, build_kdtree_plan, build_sphere_plan
from galmock.sampling import (
    ParentMatcher,
    Particles,
    build_imf,
    expected_stars,
    owned_batches,
    owned_volume,
    star_columns,
    star_counts,
    star_masses,
)
from galmock.store import STAR_COLUMNS


def upsample_config(**overrides) -> UpsampleConfig:
    data = default_config()["upsample"]
    data.update(overrides)
    return UpsampleConfig(**data)


def region(rid: int, owned_mass: float, owned: int, lower=(-1.0, -1.0, -1.0), upper=(1, 1, 1)):
    centre = (0.0, 0.0, 0.0)
    return Region(rid, tuple(lower), tuple(upper), owned, owned, 0, owned_mass, centre, 2.0)


def test_imf_counts_follow_owned_mass_with_poisson_scatter() -> None:
    cfg = upsample_config(sampling_fraction=1e-3)
    regions = [region(i, 1e8, 1000) for i in range(400)]
    lam = expected_stars(regions, cfg)
    assert lam[0] == pytest.approx(1e-3 * 1e8 / kroupa2001(0.08, 100.0).mean_mass())
    counts = star_counts(regions, cfg, seed=5)
    # Poisson: mean and variance both lambda (5 sigma bounds for 400 draws).
    assert abs(counts.mean() - lam[0]) < 5 * math.sqrt(lam[0] / 400)
    assert counts.var(ddof=1) == pytest.approx(lam[0], rel=0.4)
    # Each region's count depends on (seed, region id) only: not on the other regions.
    assert np.array_equal(star_counts(regions[7:9], cfg, seed=5), counts[7:9])
    assert not np.array_equal(star_counts(regions, cfg, seed=6), counts)


def test_fixed_mode_counts_per_particle_and_masses_from_parents() -> None:
    cfg = upsample_config(mode="fixed", stars_per_particle=500)
    lam = expected_stars([region(0, 1e9, 20), region(1, 1e9, 3)], cfg)
    assert lam.tolist() == [10_000.0, 1_500.0]
    parent_mass = np.array([1e4, 2e4])
    rng = np.random.default_rng(0)
    assert star_masses(cfg, 2, parent_mass, rng).tolist() == [20.0, 40.0]


def test_imf_masses_are_drawn_from_the_configured_range() -> None:
    cfg = upsample_config(mass_min_msun=0.5, mass_max_msun=8.0)
    masses = star_masses(cfg, 20_000, np.zeros(0), np.random.default_rng(1))
    assert masses.min() >= 0.5 and masses.max() <= 8.0
    assert masses.mean() == pytest.approx(kroupa2001(0.5, 8.0).mean_mass(), rel=0.03)
    with pytest.raises(ConfigError, match="mass_min_msun"):
        build_imf(upsample_config(mass_min_msun=0.001))


def uniform_proposer(seed: int, half: float = 2.0):
    """A stand-in flow: uniform positions in a cube, velocities = positions; seeded per batch."""

    def propose(m: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, batch])
        pos = rng.uniform(-half, half, (m, 3))
        return pos, pos * 10

    return propose


def test_owned_batches_keep_exactly_n_owned_stars_and_are_seeded() -> None:
    box = region(0, 1.0, 1, lower=(0, 0, 0), upper=(1, 1, 1))
    got = list(owned_batches(uniform_proposer(3), box.contains, 5000, batch_rows=4000, prior=0.5))
    pos = np.concatenate([p for _, p, _ in got])
    assert len(pos) == 5000 and box.contains(pos).all()
    assert [b for b, _, _ in got] == list(range(len(got))) and len(got) > 2  # batch-bounded
    again = list(owned_batches(uniform_proposer(3), box.contains, 5000, batch_rows=4000, prior=0.5))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(got, again))
    # Velocities stay paired with their positions through the cut.
    assert np.array_equal(np.concatenate([v for _, _, v in got]), pos * 10)
    assert list(owned_batches(uniform_proposer(3), box.contains, 0, 4000)) == []


def test_owned_batches_refuse_a_model_that_misses_the_region() -> None:
    far = region(0, 1.0, 1, lower=(50, 50, 50), upper=(51, 51, 51))
    with pytest.raises(InputError, match=r"region 9: only 0 of .* owned volume"):
        list(owned_batches(uniform_proposer(0), far.contains, 10, 50_000, label="region 9"))


def test_ownership_tiles_space_without_overlap() -> None:
    rng = np.random.default_rng(2)
    pos = rng.normal(0, 3, (4000, 3))
    plan = build_kdtree_plan(pos, np.ones(4000), np.arange(4000), 500, margin_kpc=0.3)
    stars = rng.normal(0, 5, (20_000, 3))
    owners = np.stack([owned_volume(plan, r.id)(stars) for r in plan.regions])
    assert (owners.sum(axis=0) == 1).all()  # every point owned exactly once
    assert np.array_equal(np.argmax(owners, axis=0), plan.owner(stars))
    sphere = build_sphere_plan(pos, np.ones(4000), np.arange(4000), (0, 0, 0), 2.0)
    inside = owned_volume(sphere, 0)(stars)
    assert np.array_equal(inside, np.linalg.norm(stars, axis=1) < 2.0)


def test_parent_is_the_nearest_particle_in_standardised_phase_space() -> None:
    rng = np.random.default_rng(4)
    pos, vel = rng.normal(0, 1, (500, 3)), rng.normal(0, 100, (500, 3))
    matcher = ParentMatcher(pos, vel)
    qp, qv = rng.normal(0, 1, (200, 3)), rng.normal(0, 100, (200, 3))
    scale = np.hstack([pos, vel]).std(axis=0)
    x = np.hstack([pos, vel]) / scale
    q = np.hstack([qp, qv]) / scale
    brute = np.argmin(((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2), axis=1)
    assert np.array_equal(matcher.query(qp, qv), brute)
    # The GPU path (exact brute force with torch), run here on the CPU, agrees.
    assert np.array_equal(ParentMatcher(pos, vel, brute=True).query(qp, qv), brute)
    # Velocities in km/s do not swamp positions in kpc: a star on top of a particle's position
    # with a velocity one dispersion off still picks a particle near it in both.
    assert matcher.query(pos[:1], vel[:1]).tolist() == [0]


def test_star_columns_have_the_catalog_dtypes_and_parent_properties() -> None:
    parts = Particles(
        pos=np.zeros((2, 3)), vel=np.zeros((2, 3)), id=np.array([10, 20]),
        mass=np.array([1.0, 2.0]), age=np.array([3.0, 9.0]), feh=np.array([-0.5, 0.1]),
    )  # fmt: skip
    pos = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    cols = star_columns(pos, -pos, np.array([1, 0]), parts, np.array([0.3, 0.7]), 4)
    assert list(cols) == list(STAR_COLUMNS)
    assert {c: v.dtype for c, v in cols.items()} == {c: s.dtype for c, s in STAR_COLUMNS.items()}
    assert cols["parent_id"].tolist() == [20, 10] and cols["age"].tolist() == [9.0, 3.0]
    assert cols["region"].tolist() == [4, 4] and cols["vz"].tolist() == [-3.0, -6.0]


def test_duplicated_particles_parent_the_lowest_row_on_both_paths() -> None:
    """The tie rule: a star nearest to a point that several particles share (snapshots do
    repeat particles) gets the first of them, from the tree and from the brute-force path (a
    k-d tree alone returns whichever copy its traversal meets first: here never row 0's)."""
    rng = np.random.default_rng(5)
    pos, vel = rng.normal(0, 1, (2000, 3)), rng.normal(0, 100, (2000, 3))
    rows = np.sort(rng.choice(2000, 40, replace=False))
    pos[rows], vel[rows] = pos[rows[0]], vel[rows[0]]
    qp = np.vstack([pos[rows[:1]] + 1e-6, rng.normal(0, 1, (300, 3))])
    qv = np.vstack([vel[rows[:1]], rng.normal(0, 100, (300, 3))])
    tree = ParentMatcher(pos, vel).query(qp, qv)
    brute = ParentMatcher(pos, vel, brute=True).query(qp, qv)
    assert tree[0] == rows[0]
    assert np.array_equal(tree, brute)
    assert not np.isin(tree, rows[1:]).any()  # never a later copy
