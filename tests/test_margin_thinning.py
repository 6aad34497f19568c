"""Thinned and tapered margins. Thinned (plan.max_margin_ratio): a region whose margin
outnumbers its own particles trains on a weighted random subset of the margin. Tapered
(plan.margin_taper): margin particles train with a probability falling from 1 at the face to 0
at the margin's edge, unweighted. The plan must bound the training sets, keep the same particles
whatever their order, and weigh them so the weighted set has the margin's density. (That
training fits the weighted density: tests/test_flow_matching.py.)"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from galmock.config import FlowsConfig, default_config
from galmock.demo import demo_particles
from galmock.flows.training import _mean_nll, _weighted_draw, new_flow
from galmock.plan import build_kdtree_plan, holdout_mask, read_plan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo256():
    """256 regions of the demo galaxy, whole (untapered) margins of 5% of each region's size."""
    c = demo_particles(400_000, seed=1).columns
    pos = np.column_stack([c["x"], c["y"], c["z"]])
    mass, ids = np.asarray(c["mass"]), np.arange(len(pos)) * 7 + 3
    target = len(pos) // 256 + 1
    full = build_kdtree_plan(pos, mass, ids, target, 0.5, margin_fraction=0.05)
    thin = build_kdtree_plan(pos, mass, ids, target, 0.5, margin_fraction=0.05,
                             max_margin_ratio=0.4)
    return pos, mass, ids, full, thin


def test_thinning_bounds_the_training_sets_at_256_regions(demo256) -> None:
    """The issue's target: training sets <= 1.5x the particles in sum (all margins: 1.69x)."""
    _, mass, _, full, thin = demo256
    assert len(thin.regions) == 256
    owned = np.array([r.owned_particles for r in thin.regions])
    training = np.array([r.training_particles for r in thin.regions])
    full_training = np.array([r.training_particles for r in full.regions])
    assert full_training.sum() / owned.sum() > 1.6  # what thinning is for
    assert training.sum() / owned.sum() <= 1.5, training.sum() / owned.sum()
    # Each region: owned + at most 0.4x owned, up to the binomial noise of the kept draw
    # (sd <= sqrt(0.4 * owned) ~ 28 for 1,563 owned: 5 sd of slack).
    excess = training - 1.4 * owned
    assert (excess <= 5 * np.sqrt(0.4 * owned)).all(), excess.max()
    thinned = [r for r in thin.regions if r.margin_keep < 1]
    assert len(thinned) > 128
    # Thinning changes training sets, never ownership: every particle's mass in one region.
    assert [r.owned_mass for r in thin.regions] == [r.owned_mass for r in full.regions]
    assert math.isclose(sum(r.owned_mass for r in thin.regions), mass.sum(), rel_tol=1e-12)


def test_kept_margin_is_a_weighted_stand_in_for_the_whole_margin(demo256) -> None:
    pos, _, ids, full, thin = demo256
    owner = thin.owner(pos)
    worst = min(thin.regions, key=lambda r: r.margin_keep)
    assert worst.margin_keep < 0.3
    full_margin = full.training_mask(worst.id, pos, owner) & (owner != worst.id)
    mask = thin.training_mask(worst.id, pos, owner, ids)
    kept = mask & (owner != worst.id)
    assert (mask & (owner == worst.id)).sum() == (owner == worst.id).sum()  # owned all kept
    assert not (kept & ~full_margin).any()  # only margin particles
    # Kept ~ Binomial(margin, keep): the weighted count stands for the margin within 4 sd.
    n, p = int(full_margin.sum()), worst.margin_keep
    assert abs(kept.sum() - n * p) < 4 * math.sqrt(n * p * (1 - p)), (kept.sum(), n * p)
    weight = thin.training_weights(worst.id, owner[mask])
    assert set(np.unique(weight)) == {1.0, 1.0 / p}
    # The kept set depends on ids, not on the particles' order (nor the ranks reading them).
    perm = np.random.default_rng(0).permutation(len(pos))
    again = thin.training_mask(worst.id, pos[perm], owner[perm], ids[perm])
    assert set(ids[perm][again]) == set(ids[mask])
    # Independent of the held-out draw: the kept fraction of held-out particles is keep too.
    held = holdout_mask(ids, 0.5, thin.holdout_seed)
    frac_held = kept[full_margin & held].sum() / (full_margin & held).sum()
    assert abs(frac_held - p) < 4 * math.sqrt(p * (1 - p) / (full_margin & held).sum())


def test_weighted_draws_follow_the_weights() -> None:
    weight = torch.tensor([1.0, 3.0, 0.5, 0.5], dtype=torch.float64)
    draws = _weighted_draw(torch.cumsum(weight, 0), 100_000, torch.Generator().manual_seed(0))
    freq = np.bincount(draws.numpy(), minlength=4) / 100_000
    expected = (weight / weight.sum()).numpy()
    # Multinomial sd <= sqrt(0.25 / 1e5) = 0.0016: 4 sd.
    np.testing.assert_allclose(freq, expected, atol=4 * 0.0016)


def test_weighted_likelihood_loss_is_that_of_the_repeated_rows() -> None:
    flow = new_flow(FlowsConfig.from_defaults(kind="maf", hidden_features=8, hidden_layers=1,
                                              maf={"transforms": 1}).spec(), 3, 0, seed=0)
    x = torch.randn(50, 3)
    reps = torch.randint(1, 4, (50,), generator=torch.Generator().manual_seed(1))
    weighted = _mean_nll(flow, x, None, 7, reps.double())
    repeated = _mean_nll(flow, x.repeat_interleave(reps, 0), None, 7)
    assert math.isclose(weighted, repeated, rel_tol=1e-6)


def test_a_region_with_every_owned_particle_held_out_keeps_its_margin() -> None:
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(2000, 3))
    plan = build_kdtree_plan(pos, np.ones(2000), np.arange(2000), 4, 0.5, holdout_fraction=0.5,
                             seed=1, max_margin_ratio=0.4)
    owner = plan.owner(pos)
    held = holdout_mask(np.arange(2000), 0.5, 1)
    empty = [r for r in plan.regions if not (~held & (owner == r.id)).any()]
    assert empty and all(r.margin_keep == 1.0 for r in empty)


# -- tapered margins (plan.margin_taper) ------------------------------------------------------


@pytest.fixture(scope="module")
def tapered256(demo256):
    """The same galaxy and regions with the default margins: tapered, 7% of each region's
    size, at most 1 kpc."""
    pos, mass, ids, _, _ = demo256
    target = len(pos) // 256 + 1
    plan = default_config()["plan"]
    assert plan["margin_taper"] and (plan["margin_fraction"], plan["margin_kpc"]) == (0.07, 1.0)
    return build_kdtree_plan(pos, mass, ids, target, plan["margin_kpc"],
                             margin_fraction=plan["margin_fraction"], margin_taper=True)


def test_tapered_margins_bound_the_training_sets_at_256_regions(demo256, tapered256) -> None:
    """The issue's target, <= 1.5x in sum, with every kept margin particle weighing 1: each
    region's training set is its owned particles plus a Bernoulli(taper) draw of its margin."""
    pos, _, _, full, _ = demo256
    plan = tapered256
    owner = plan.owner(pos)
    owned = np.array([r.owned_particles for r in plan.regions])
    training = np.array([r.training_particles for r in plan.regions])
    assert training.sum() / owned.sum() <= 1.5, training.sum() / owned.sum()
    assert sum(r.training_particles for r in full.regions) / owned.sum() > 1.6
    assert all(r.margin_keep == 1.0 for r in plan.regions)
    assert plan.training_weights(0, owner) is None  # kept particles are unweighted
    # Per region: kept margin ~ Poisson-binomial(taper); its mean and sd from the tapers.
    members = [np.flatnonzero(owner == r.id) for r in plan.regions]
    wide = replace(plan, margin_taper=False)
    z = []
    for r in plan.regions[::16]:
        margin = wide.training_indices(r.id, pos, members)
        margin = margin[owner[margin] != r.id]
        t = r.margin_taper(pos[margin])
        kept = r.training_particles - r.owned_particles
        z.append((kept - t.sum()) / math.sqrt(max((t * (1 - t)).sum(), 1.0)))
    assert np.abs(z).max() < 4.5, z  # 16 regions: 4.5 sd


def test_tapered_margin_keeps_a_raised_cosine_of_the_depth(demo256, tapered256) -> None:
    """Kept fraction per depth bin beyond a face follows 1/2 (1 + cos(pi d / m)) within the
    binomial error, from 1 at the face to 0 at the margin's edge; nothing beyond the margin."""
    pos, _, ids, _, _ = demo256
    plan = tapered256
    owner = plan.owner(pos)
    members = [np.flatnonzero(owner == r.id) for r in plan.regions]
    wide = replace(plan, margin_taper=False)
    depth_all, kept_all = [], []
    for r in plan.regions:
        margin = wide.training_indices(r.id, pos, members)
        margin = margin[owner[margin] != r.id]
        kept = np.isin(margin, plan.training_indices(r.id, pos, members, ids))
        d = np.maximum(np.maximum(np.asarray(r.lower) - pos[margin],
                                  pos[margin] - np.asarray(r.upper)), 0) / r.margin_kpc[0]
        one_face = (d > 0).sum(axis=1) == 1  # past a single face: the taper is of one depth
        depth_all.append(d[one_face].max(axis=1))
        kept_all.append(kept[one_face])
    depth, kept = np.concatenate(depth_all), np.concatenate(kept_all)
    edges = np.linspace(0, 1, 11)
    bins = np.digitize(depth, edges) - 1
    for b in range(10):
        sel = bins == b
        mid = 0.5 * (edges[b] + edges[b + 1])
        # Within a bin the taper varies; compare with the mean taper of the bin's own depths.
        p = (0.5 * (1 + np.cos(np.pi * depth[sel]))).mean()
        n = sel.sum()
        assert n > 1000, (mid, n)
        assert abs(kept[sel].mean() - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (mid, p)
    # The kept set depends on ids, not on the particles' order (nor the ranks reading them).
    r = plan.regions[100]
    perm = np.random.default_rng(0).permutation(len(pos))
    again = plan.training_mask(r.id, pos[perm], owner[perm], ids[perm])
    assert set(ids[perm][again]) == set(ids[plan.training_mask(r.id, pos, owner, ids)])


def test_tapered_plan_round_trips_and_thins_on_top(tmp_path, demo256) -> None:
    """margin_taper is part of plan.json; with max_margin_ratio the kept tapered margin is
    thinned further (keep x taper), weighted by 1 / keep."""
    pos, mass, ids, _, _ = demo256
    target = len(pos) // 256 + 1
    both = build_kdtree_plan(pos, mass, ids, target, 1.0, margin_fraction=0.07,
                             margin_taper=True, max_margin_ratio=0.2)
    assert read_plan(both.write(tmp_path / "plan.json")) == both
    owned = sum(r.owned_particles for r in both.regions)
    assert sum(r.training_particles for r in both.regions) <= 1.2 * owned + 5 * math.sqrt(owned)
    thinned = [r for r in both.regions if r.margin_keep < 1]
    assert thinned
    owner = both.owner(pos)
    r = thinned[0]
    rows = both.training_mask(r.id, pos, owner, ids)
    weight = both.training_weights(r.id, owner[rows])
    assert set(np.unique(weight)) == {1.0, 1.0 / r.margin_keep}
