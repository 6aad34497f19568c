"""PhaseSpaceFlow and FlowEnsemble in physical units: normalisation, sampling, rejection, mixture.

Untrained flows (small nets, fixed seeds) suffice: these properties hold for any weights. The
physical density is checked against samples through importance sampling with a proposal q(r, v)
uniform in the ball times a broad Gaussian in velocity, so the preprocessing Jacobians and
inverses are exercised end to end.
"""

import math

import numpy as np
import pytest
import torch

from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.families import NetworkOptions, build_flow
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing

CENTRE = (1.0, -2.0, 0.5)
R_MAX = 3.0


# Small tensors: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


NETWORK = NetworkOptions(hidden_features=16, hidden_layers=2, activation="gelu")
OPTIONS = {"cnf": {"rk4_steps": 4}, "maf": {"transforms": 2},
           "nsf": {"transforms": 2, "spline_bins": 6}}  # a new family: its defaults


def toy_particles(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 1.0, (4 * n, 3))
    d = d[np.linalg.norm(d, axis=1) < R_MAX][:n]
    vel = rng.normal(0, 30, (n, 3)) + 80 * np.column_stack([-d[:, 1], d[:, 0], 0 * d[:, 2]])
    return np.asarray(CENTRE) + d, vel


def make_model(kind: str = "cnf", seed: int = 0) -> PhaseSpaceFlow:
    pos, vel = toy_particles()
    torch.manual_seed(seed)
    position = build_flow(kind, 3, 0, NETWORK, OPTIONS.get(kind))
    velocity = build_flow(kind, 3, 3, NETWORK, OPTIONS.get(kind))
    v_max = float(np.linalg.norm(vel, axis=1).max())
    return PhaseSpaceFlow(position, velocity, PositionPreprocessing.fit(pos, CENTRE, R_MAX),
                          VelocityPreprocessing.fit(vel), v_max, chunk_rows=4096)


def proposal(n: int, model: PhaseSpaceFlow, seed: int) -> tuple[torch.Tensor, ...]:
    """Draws from q = uniform ball x N(mean_v, (2 std_v)^2), and log q."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d *= (R_MAX * rng.uniform(0, 1, n) ** (1 / 3) / np.linalg.norm(d, axis=1))[:, None]
    mean, std = np.asarray(model.velocity_pre.mean), 2 * np.asarray(model.velocity_pre.std)
    vel = rng.normal(mean, std, (n, 3))
    log_q = -math.log(4 / 3 * math.pi * R_MAX**3) + (
        -0.5 * ((vel - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)
    ).sum(1)
    return torch.as_tensor(np.asarray(CENTRE) + d), torch.as_tensor(vel), torch.as_tensor(log_q)


def test_physical_density_is_normalised(flow_kind) -> None:
    model = make_model(flow_kind)
    pos, vel, log_q = proposal(20_000, model, seed=1)
    w = (model.log_prob(pos, vel) - log_q).exp()
    estimate, error = float(w.mean()), float(w.std() / math.sqrt(len(w)))
    # ~2% statistical error; a wrong Jacobian factor would be off by orders of magnitude.
    assert error < 0.05
    assert abs(estimate - 1) < 4 * error, (estimate, error)


def test_samples_agree_with_physical_density() -> None:
    model = make_model()
    g = torch.Generator().manual_seed(5)
    pos_s, vel_s = model.propose(20_000, g)
    pos_q, vel_q, log_q = proposal(30_000, model, seed=2)
    w = (model.log_prob(pos_q, vel_q) - log_q).exp()
    w = w / w.sum()

    def cells(pos, vel):
        r = torch.linalg.vector_norm(pos - torch.tensor(CENTRE, dtype=torch.float64), dim=1)
        v = torch.linalg.vector_norm(vel, dim=1)
        r_bin = torch.bucketize(r, torch.tensor([1.0, 1.5, 2.0, 2.5], dtype=torch.float64))
        v_bin = torch.bucketize(v, torch.tensor([80.0, 140.0], dtype=torch.float64))
        return r_bin * 3 + v_bin  # 15 cells in radius x speed

    sample_cells, prop_cells = cells(pos_s, vel_s), cells(pos_q, vel_q)
    for cell in range(15):
        p_s = float((sample_cells == cell).double().mean())
        hit = (prop_cells == cell).double()
        p_q = float((w * hit).sum())
        var = p_s * (1 - p_s) / len(sample_cells) + float((w**2 * (hit - p_q) ** 2).sum())
        assert abs(p_s - p_q) < 4.5 * math.sqrt(var) + 1e-4, (cell, p_s, p_q)


def test_rejection_keeps_the_ball_and_speed_limit() -> None:
    model = make_model()
    n = 20_000
    pos, vel, rate = model.sample(n, torch.Generator().manual_seed(7))
    assert pos.shape == (n, 3) and vel.shape == (n, 3)
    assert pos.dtype == torch.float64 and vel.dtype == torch.float64
    r = torch.linalg.vector_norm(pos - torch.tensor(CENTRE, dtype=torch.float64), dim=1)
    assert float(r.max()) <= R_MAX
    assert float(torch.linalg.vector_norm(vel, dim=1).max()) <= model.v_max
    # The untruncated flow puts some mass above the training sample's maximum speed.
    _, vel_p = model.propose(50_000, torch.Generator().manual_seed(8))
    outside = float((torch.linalg.vector_norm(vel_p, dim=1) > model.v_max).double().mean())
    assert 0 < rate < 0.5
    assert rate == pytest.approx(outside, abs=4 * math.sqrt(outside / 20_000) + 2e-3)
    # Reproducible with the same generator seed; n = 0 works.
    again = model.sample(n, torch.Generator().manual_seed(7))
    assert torch.equal(again[0], pos) and again[2] == rate
    empty = model.sample(0, torch.Generator().manual_seed(7))
    assert empty[0].shape == (0, 3) and empty[2] == 0.0


def test_log_prob_outside_the_ball_is_minus_infinity() -> None:
    model = make_model()
    pos = torch.tensor([CENTRE, (CENTRE[0] + 1.01 * R_MAX, CENTRE[1], CENTRE[2])],
                       dtype=torch.float64)
    logp = model.log_prob(pos, torch.zeros(2, 3, dtype=torch.float64))
    assert math.isfinite(float(logp[0])) and float(logp[1]) == -math.inf


def test_ensemble_density_is_the_mixture() -> None:
    members = [make_model(seed=s) for s in range(3)]
    ensemble = FlowEnsemble(members)
    pos, vel, _ = members[0].sample(500, torch.Generator().manual_seed(1))
    each = torch.stack([m.log_prob(pos, vel) for m in members])
    expected = torch.log(each.exp().mean(dim=0))
    assert torch.allclose(ensemble.log_prob(pos, vel), expected, rtol=0, atol=1e-12)
    assert torch.allclose(
        ensemble.log_prob(pos, vel), torch.logsumexp(each, 0) - math.log(3), rtol=0, atol=1e-12
    )
    assert float((each[0] - each[1]).abs().max()) > 0.1  # the members really differ


def test_ensemble_draws_members_uniformly() -> None:
    ensemble = FlowEnsemble([make_model(seed=s) for s in range(4)])
    n = 12_000
    pos, vel, member, rate = ensemble.sample_with_members(n, torch.Generator().manual_seed(3))
    counts = torch.bincount(member, minlength=4).double()
    # Binomial(n, 1/4) per member: 4.5 sigma (the members' acceptance rates differ by < 1%).
    sigma = math.sqrt(n * 0.25 * 0.75)
    assert float((counts - n / 4).abs().max()) < 4.5 * sigma, counts
    assert float(torch.linalg.vector_norm(vel, dim=1).max()) <= ensemble.v_max
    assert 0 <= rate < 0.5
    # Every member's stars lie where that member puts them: its log_prob beats the others' on
    # average (the members are distinct flows).
    mine = torch.stack([m.log_prob(pos[:2000], vel[:2000]) for m in ensemble.members])
    own = mine.gather(0, member[:2000][None]).mean()
    assert float(own) > float(mine.mean())


def test_ensemble_refuses_members_of_different_regions() -> None:
    a = make_model()
    b = make_model(seed=1)
    b.v_max = a.v_max * 2
    with pytest.raises(ValueError, match="different region"):
        FlowEnsemble([a, b])
