"""Thinned margins (plan.max_margin_ratio): a region whose margin outnumbers its own particles
trains on a weighted random subset of the margin. The plan must bound the training sets, keep
the same particles whatever their order, and weigh them so the weighted set has the margin's
density. (That training fits the weighted density: tests/test_flow_matching.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from galmock.config import FlowsConfig
from galmock.demo import demo_particles
from galmock.flows.training import _mean_nll, _weighted_draw, new_flow
from galmock.plan import build_kdtree_plan, holdout_mask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo256():
    """256 regions of the demo galaxy, margins of 5% of each region's size (the defaults)."""
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
