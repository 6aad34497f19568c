"""Region plan: exact tiling, balance, overlap margins, the single-sphere plan, the file."""

from pathlib import Path

import numpy as np
import pytest

from galmock.demo import demo_particles
from galmock.errors import InputError
from galmock.plan import (
    build_kdtree_plan,
    build_sphere_plan,
    holdout_mask,
    read_plan,
)


def galaxy_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A disk, a dense bulge, a sparse halo and a tight clump: very uneven densities."""
    rng = np.random.default_rng(seed)
    n_disk, n_bulge, n_clump = int(0.6 * n), int(0.25 * n), int(0.05 * n)
    n_halo = n - n_disk - n_bulge - n_clump
    r = rng.gamma(2.0, 2.6, n_disk)
    phi = rng.uniform(0, 2 * np.pi, n_disk)
    disk = np.column_stack([r * np.cos(phi), r * np.sin(phi), rng.normal(0, 0.3, n_disk)])
    bulge = rng.normal(0, 0.5, (n_bulge, 3))
    halo = rng.standard_cauchy((n_halo, 3)) * 5.0
    clump = rng.normal([17.5, 2.5, -6.5], 0.2, (n_clump, 3))
    pos = np.concatenate([disk, bulge, halo, clump])
    mass = rng.uniform(1e3, 2e3, n)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    return pos, mass, ids


def brute_force_owners(plan, pos: np.ndarray) -> np.ndarray:
    inside = np.stack([r.contains(pos) for r in plan.regions], axis=1)
    return inside.sum(axis=1), np.argmax(inside, axis=1)


@pytest.fixture(scope="module")
def particles():
    return galaxy_like(40_000)


@pytest.fixture(scope="module", params=[None, 0.05], ids=["fixed-margin", "margin-fraction"])
def plan(particles, request):
    pos, mass, ids = particles
    return build_kdtree_plan(pos, mass, ids, target_particles=3000, margin_kpc=0.4,
                             margin_fraction=request.param)  # fmt: skip


def test_every_particle_owned_exactly_once(plan, particles) -> None:
    pos, mass, _ = particles
    n_owners, first = brute_force_owners(plan, pos)
    assert np.all(n_owners == 1)
    np.testing.assert_array_equal(plan.owner(pos), first)
    owned = np.array([r.owned_particles for r in plan.regions])
    assert owned.sum() == len(pos)
    np.testing.assert_array_equal(owned, np.bincount(first, minlength=len(plan.regions)))
    masses = np.array([r.owned_mass for r in plan.regions])
    assert masses.sum() == pytest.approx(mass.sum(), rel=1e-12)


def test_whole_space_is_tiled(plan) -> None:
    """Stars sampled anywhere, far outside the particles too, have exactly one owner."""
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 30, (20_000, 3)), rng.uniform(-1e4, 1e4, (1000, 3))])
    n_owners, first = brute_force_owners(plan, points)
    assert np.all(n_owners == 1)
    np.testing.assert_array_equal(plan.owner(points), first)


def test_balance_bound(plan) -> None:
    owned = np.array([r.owned_particles for r in plan.regions])
    assert owned.max() <= 2 * 3000
    assert owned.min() >= 1
    assert len(plan.regions) > 8  # the galaxy really was split


def test_overlap_margins(plan, particles) -> None:
    pos, _, _ = particles
    owner = plan.owner(pos)
    for r in plan.regions:
        m = np.asarray(r.margin_kpc)
        if plan.margin_fraction is None:
            assert r.margin_kpc == (plan.margin_kpc,) * 3
        else:
            lo, hi = np.percentile(pos[owner == r.id], [5, 95], axis=0)
            expected = min(plan.margin_kpc, plan.margin_fraction * (hi - lo).max())
            np.testing.assert_allclose(m, np.full(3, expected))
        train = plan.training_mask(r.id, pos, owner)
        lo, hi = np.asarray(r.lower) - m, np.asarray(r.upper) + m
        expected = np.all((pos >= lo) & (pos < hi), axis=1)
        np.testing.assert_array_equal(train, expected)
        assert np.all(train[owner == r.id])  # own particles always train
        assert r.training_particles == int(train.sum())
        # a margin means neighbours' particles near the faces are included
        if r.owned_particles < r.training_particles:
            outside = train & (owner != r.id)
            d = np.maximum(np.asarray(r.lower) - pos[outside], pos[outside] - np.asarray(r.upper))
            assert np.all(d <= m)
    assert any(r.training_particles > r.owned_particles for r in plan.regions)


def test_training_ball_encloses_training_particles(plan, particles) -> None:
    pos, _, _ = particles
    owner = plan.owner(pos)
    for r in plan.regions[:5]:
        train = pos[plan.training_mask(r.id, pos, owner)]
        d = np.sqrt(((train - np.asarray(r.centre)) ** 2).sum(axis=1))
        assert d.max() <= r.radius


def test_ties_and_duplicates_still_tile() -> None:
    rng = np.random.default_rng(3)
    pos = np.round(rng.normal(0, 1, (5000, 3)), 1)  # many equal coordinates
    pos[:500] = 0.0  # and identical positions
    ids = np.arange(5000)
    plan = build_kdtree_plan(pos, np.ones(5000), ids, target_particles=400, margin_kpc=0.1)
    n_owners, _ = brute_force_owners(plan, pos)
    assert np.all(n_owners == 1)
    assert sum(r.owned_particles for r in plan.regions) == 5000


def test_sphere_plan_selects_exactly_the_ball(particles) -> None:
    pos, mass, ids = particles
    centre, radius = (-8.122, 0.0, 0.0208), 3.5
    plan = build_sphere_plan(pos, mass, ids, centre, radius)
    expected = np.linalg.norm(pos - np.asarray(centre), axis=1) < radius
    np.testing.assert_array_equal(plan.owner(pos) == 0, expected)
    np.testing.assert_array_equal(plan.training_mask(0, pos), expected)
    (region,) = plan.regions
    assert region.owned_particles == expected.sum() == region.training_particles
    assert region.owned_mass == pytest.approx(mass[expected].sum(), rel=1e-12)
    assert np.all(plan.owner(pos)[~expected] == -1)


def test_sphere_plan_empty_is_an_error(particles) -> None:
    pos, mass, ids = particles
    with pytest.raises(InputError, match=r"no particles within 0.001 kpc .*\(empty selection\)"):
        build_sphere_plan(pos, mass, ids, (500.0, 500.0, 500.0), 0.001)


def test_holdout_split_is_by_id(particles) -> None:
    pos, mass, ids = particles
    held = holdout_mask(ids, 0.5, seed=11)
    n = len(ids)
    # binomial: |k - n/2| < 5 sigma with sigma = sqrt(n)/2
    assert abs(held.sum() - n / 2) < 5 * np.sqrt(n) / 2
    perm = np.random.default_rng(0).permutation(n)
    np.testing.assert_array_equal(holdout_mask(ids[perm], 0.5, seed=11), held[perm])
    assert not np.array_equal(holdout_mask(ids, 0.5, seed=12), held)
    plan = build_sphere_plan(pos, mass, ids, (-8.122, 0, 0.0208), 3.5, 0.5, seed=11)
    (region,) = plan.regions
    inside = plan.owner(pos) == 0
    assert region.holdout_particles == int((inside & held).sum())
    assert region.training_particles == int((inside & ~held).sum())


def test_plan_file_round_trip_and_determinism(plan, particles, tmp_path: Path) -> None:
    pos, mass, ids = particles
    path = plan.write(tmp_path / "plan.json")
    again = read_plan(path)
    assert again == plan
    np.testing.assert_array_equal(again.owner(pos), plan.owner(pos))
    rebuilt = build_kdtree_plan(pos, mass, ids, target_particles=3000, margin_kpc=0.4,
                                margin_fraction=plan.margin_fraction)
    assert rebuilt.write(tmp_path / "again.json").read_text() == path.read_text()
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON for other tools


def test_bad_plan_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="region plan not found"):
        read_plan(tmp_path / "plan.json")
    (tmp_path / "plan.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="format = 'other'"):
        read_plan(tmp_path / "plan.json")


def test_an_edited_or_damaged_plan_is_refused(plan, tmp_path: Path) -> None:
    """A plan whose regions overlap, repeat or own impossible masses would upsample with exit 0
    and double-count or lose stars (#16): each is refused, naming what is wrong."""
    import json

    good = plan.to_dict()

    def refused(data, match: str) -> None:
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=match):
            read_plan(path)

    overlapping = json.loads(json.dumps(good))
    overlapping["regions"][0]["upper"][0] = 1e3  # region 0's box now reaches into others
    refused(overlapping, "region 0's box is not its leaf of the split tree")
    duplicated = json.loads(json.dumps(good))
    duplicated["regions"].append({**duplicated["regions"][1], "id": len(good["regions"])})
    refused(duplicated, "the regions own .* Msun of total_mass")  # double-counted
    duplicated["total_mass"] += duplicated["regions"][1]["owned_mass"]
    refused(duplicated, "the split tree's leaves name regions")
    negative = json.loads(json.dumps(good))
    negative["regions"][2]["owned_mass"] = -5.0
    refused(negative, "region 2 has owned_mass -5.0")
    reordered = json.loads(json.dumps(good))
    reordered["regions"].reverse()
    refused(reordered, "region 0 has id")
    refused([good], "a region plan is a JSON object, got list")


def test_summary_lists_every_region(plan) -> None:
    text = plan.summary()
    assert f"{len(plan.regions)} region(s)" in text
    assert "-inf" in text
    assert len(text.splitlines()) == len(plan.regions) + 4


def test_margins_scale_with_regions_so_training_sets_stay_near_the_particle_count() -> None:
    """256 regions of the demo galaxy: a fixed 0.5 kpc margin is wider than the small central
    regions and multiplies the training sets (8.4x in sum, one region 25x); margins of 5% of
    each region's size keep the sum under 1.75x and every region under 4x (1.69x and 3.5x:
    the geometry is deterministic, these bounds are the design's)."""
    source = demo_particles(400_000, seed=1)
    c = source.columns
    pos = np.column_stack([c["x"], c["y"], c["z"]])
    mass, ids = np.asarray(c["mass"]), np.arange(len(pos))
    target = len(pos) // 256 + 1  # the k-d tree halves cells: 256 leaves

    def ratios(fraction):
        plan = build_kdtree_plan(pos, mass, ids, target, 0.5, margin_fraction=fraction)
        assert len(plan.regions) == 256
        training = np.array([r.training_particles for r in plan.regions])
        owned = np.array([r.owned_particles for r in plan.regions])
        return training.sum() / owned.sum(), (training / owned).max()

    total, worst = ratios(0.05)
    assert total < 1.75 and worst < 4.0, (total, worst)
    fixed_total, fixed_worst = ratios(None)
    assert fixed_total > 5 and fixed_worst > 10, (fixed_total, fixed_worst)  # the problem
