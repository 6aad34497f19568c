"""The CNF: normalised densities, sampler/density agreement, RK4 accuracy, the fast sampler.

The nets are small and untrained, with weights scaled up (×1.8) so the flow is visibly
non-Gaussian (shifts and stretches of O(1)); every property tested here holds for any weights.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from galmock.flows.cnf import CNF
from galmock.flows.families import flow_from_architecture

# Small tensors: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def strong_cnf(features: int, context: int = 0, steps: int = 10, seed: int = 3) -> CNF:
    torch.manual_seed(seed)
    flow = CNF(features, context, hidden_features=16, hidden_layers=2, rk4_steps=steps)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(1.8)
    return flow.double()


def grid(features: int, half_width: float, cells: int) -> tuple[torch.Tensor, float]:
    edges = torch.linspace(-half_width, half_width, cells + 1, dtype=torch.float64)
    centres = (edges[1:] + edges[:-1]) / 2
    mesh = torch.meshgrid(*([centres] * features), indexing="ij")
    return torch.stack([m.ravel() for m in mesh], dim=1), float(edges[1] - edges[0])


@pytest.mark.parametrize(("features", "half_width", "cells"), [(2, 10.0, 100), (3, 8.0, 32)])
def test_density_integrates_to_one(features, half_width, cells) -> None:
    # Tolerance 1e-3: the log-density is the continuous flow's up to RK4's O(h^4) error
    # (h = 0.1, ~1e-4 here); the midpoint rule on this smooth density and the mass outside the
    # box add little more (measured: |integral - 1| ~ 1e-6 in 2-D, 1.5e-5 in 3-D).
    flow = strong_cnf(features)
    points, h = grid(features, half_width, cells)
    with torch.no_grad():
        logp = flow.log_prob(points)
    integral = float(logp.exp().sum()) * h**features
    assert integral == pytest.approx(1.0, abs=1e-3)
    # ...and it is not just the base Gaussian.
    base = -0.5 * (points**2).sum(1) - 0.5 * features * math.log(2 * math.pi)
    assert float((logp - base).abs().max()) > 1.0


def test_samples_follow_log_prob() -> None:
    flow = strong_cnf(2)
    n = 20_000
    x = flow.sample(n, generator=torch.Generator().manual_seed(11))
    # Expected counts per 0.5 x 0.5 bin from the density (4 x 4 midpoint sub-cells per bin).
    bins, sub = 16, 4
    points, h = grid(2, 4.0, bins * sub)
    with torch.no_grad():
        p = flow.log_prob(points).exp().reshape(bins, sub, bins, sub).sum(dim=(1, 3)) * h * h
    counts, _, _ = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=bins,
                                  range=[[-4, 4], [-4, 4]])
    expected = n * p.numpy()
    use = expected > 5
    outside_obs = n - counts[use].sum()
    outside_exp = n - expected[use].sum()
    chi2 = (((counts[use] - expected[use]) ** 2) / expected[use]).sum()
    chi2 += (outside_obs - outside_exp) ** 2 / outside_exp
    dof = int(use.sum())  # bins + the pooled rest − 1 constraint
    assert stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)


def test_rk4_inverse_of_forward() -> None:
    # Backward RK4 undoes forward RK4 only up to the solver error: O(h^4) globally (measured:
    # 3e-10 with 20 steps in float64 for these weights); halving h must cut it >= 12x (16x for
    # 4th order). In float32 rounding (~1e-7 per step) dominates instead.
    z = torch.randn(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = torch.randn(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors = []
    for steps in (10, 20):
        flow = strong_cnf(3, context=3, steps=steps)
        x = flow.generate(z, c)
        assert float((x - z).abs().max()) > 0.5  # the map itself is far from identity
        with torch.no_grad():
            back = flow.odeint(x, c, reverse=True)
        errors.append(float((back - z).abs().max()))
    assert errors[1] < 1e-6
    assert errors[0] / errors[1] > 12
    flow32 = strong_cnf(3, context=3, steps=20).float()
    with torch.no_grad():
        back = flow32.odeint(flow32.generate(z.float(), c.float()), c.float(), reverse=True)
    assert float((back - z.float()).abs().max()) < 1e-5


def test_fast_sampler_matches_plain_rk4() -> None:
    flow = strong_cnf(3, context=3, steps=8).float()
    z = torch.randn(5000, 3, generator=torch.Generator().manual_seed(2))
    c = torch.randn(5000, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = flow.odeint(z, c)
    fast = flow.generate(z, c, chunk_rows=1024)  # several chunks plus a short last one
    assert float((fast - plain).abs().max()) < 1e-5  # float32 rounding only
    assert torch.equal(flow.generate(z, c, chunk_rows=1024), fast)  # deterministic
    assert z.shape == fast.shape and fast.dtype == torch.float32


def test_log_prob_matches_change_of_variables_for_a_linear_field() -> None:
    # F(y) = A y integrates to y(1) = exp(A) y(0): log p(x) = log N(exp(-A) x) - tr(A).
    flow = CNF(3, 0, hidden_features=4, hidden_layers=1, activation="tanh", rk4_steps=20).double()
    a = torch.tensor([[0.3, -0.5, 0.1], [0.5, 0.2, 0.0], [0.0, 0.1, -0.4]], dtype=torch.float64)
    with torch.no_grad():
        # tanh is ~linear near 0: tiny first layer, large last layer, product ~ A.
        first, last = flow.field.net[0], flow.field.net[2]
        first.weight.zero_()
        first.bias.zero_()
        last.bias.zero_()
        first.weight[:3, :3] = torch.eye(3) * 1e-4
        last.weight.zero_()
        last.weight[:, :3] = a * 1e4
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logp = flow.log_prob(x)
    z = x @ torch.linalg.matrix_exp(-a).T
    expected = -0.5 * (z**2).sum(1) - 1.5 * math.log(2 * math.pi) - torch.trace(a)
    assert torch.allclose(logp, expected, atol=1e-6)


def test_context_is_checked_and_architecture_round_trips() -> None:
    flow = CNF(3, 3, hidden_features=8, hidden_layers=2, rk4_steps=3)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="context"):
        flow.generate(torch.zeros(4, 3), torch.zeros(5, 3))
    twin = flow_from_architecture(flow.architecture())
    assert twin.architecture() == flow.architecture()
    twin.load_state_dict(flow.state_dict())
    x, c = torch.randn(6, 3), torch.randn(6, 3)
    with torch.no_grad():
        assert torch.equal(twin.log_prob(x, c), flow.log_prob(x, c))
