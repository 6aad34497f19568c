"""Position/velocity preprocessing: exact inverses, log-Jacobians, the origin, the ball's edge."""

import math

import numpy as np
import pytest
import torch

from galmock.errors import InputError
from galmock.flows.preprocess import (
    PositionPreprocessing,
    VelocityPreprocessing,
    radial_contract,
    radial_expand,
)

CENTRE = (-8.122, 0.0, 0.0208)
R_MAX = 3.5


# Small tensors: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def ball(n: int, seed: int = 0) -> np.ndarray:
    """Points filling the ball, denser towards the centre, plus a few right at its edge."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = R_MAX * rng.uniform(0, 1, n) ** 0.6
    r[:5] = R_MAX * (1 - np.array([0, 1e-12, 1e-9, 1e-6, 1e-3]))
    return np.asarray(CENTRE) + d * r[:, None]


@pytest.fixture(scope="module")
def pre() -> PositionPreprocessing:
    return PositionPreprocessing.fit(ball(5000), CENTRE, R_MAX)


def test_position_round_trip(pre) -> None:
    pos = torch.as_tensor(ball(20_000, seed=1))
    y = pre.forward(pos)
    assert y.dtype == torch.float64 and torch.isfinite(y).all()
    # Standardised: the training set's expanded coordinates have mean 0 and std 1.
    y_train = pre.forward(ball(5000))
    assert torch.allclose(y_train.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y_train.std(0, correction=0), torch.ones(3, dtype=torch.float64))
    back = pre.inverse(y)
    assert (back - pos).abs().max() < 1e-10  # kpc; includes points 1e-12 r_max from the edge
    # The edge maps far out but finite (c > 1 keeps |u| < 1).
    assert y[:5].norm(dim=1).max() > 5


def test_position_log_jacobian_matches_autograd(pre) -> None:
    pos = torch.as_tensor(ball(40, seed=2))
    pos[5] = torch.tensor(CENTRE, dtype=torch.float64)  # the origin of the radial map exactly
    pos[6] = pos[5] + 1e-9  # inside the series branch
    pos[7] = pos[5] + 2e-3  # just outside it
    logdet = pre.log_abs_det(pos)
    for i in range(len(pos)):
        jac = torch.autograd.functional.jacobian(lambda r: pre.forward(r[None])[0], pos[i])
        expected = torch.linalg.slogdet(jac).logabsdet
        assert float(logdet[i]) == pytest.approx(float(expected), abs=1e-9), i


def test_radial_map_closed_form_and_origin() -> None:
    u = torch.tensor([[0.0, 0.0, 0.0], [1e-8, 0, 0], [0.3, -0.4, 0.0], [0.0, 0.0, 0.999]],
                     dtype=torch.float64, requires_grad=True)
    w, logdet = radial_expand(u)
    s = u.detach().norm(dim=1)
    expected = torch.where(
        s > 0,
        2 * torch.log(torch.atanh(s) / s.clamp_min(1e-300)) - torch.log1p(-s * s),
        torch.zeros_like(s),
    )
    assert torch.allclose(logdet[1:], expected[1:], atol=1e-12)
    assert float(logdet[0].detach()) == 0.0
    assert torch.equal(w[0].detach(), torch.zeros(3).double())
    # Gradients are finite at the origin (the series branch), as training needs.
    (w.sum() + logdet.sum()).backward()
    assert torch.isfinite(u.grad).all()
    assert torch.allclose(radial_contract(w.detach()), u.detach(), atol=1e-15, rtol=1e-12)


def test_outside_ball_is_not_finite(pre) -> None:
    outside = torch.tensor([[CENTRE[0] + R_MAX * 1.01, 0.0, 0.0208]], dtype=torch.float64)
    y, logdet = pre.forward_and_log_abs_det(outside)
    assert not torch.isfinite(y).all() or not torch.isfinite(logdet).all()


def test_velocity_round_trip_and_jacobian() -> None:
    rng = np.random.default_rng(3)
    vel = rng.normal([10, 220, -5], [40, 30, 20], (3000, 3))
    pre = VelocityPreprocessing.fit(vel)
    v = torch.as_tensor(vel)
    assert (pre.inverse(pre.forward(v)) - v).abs().max() < 1e-10
    jac = torch.autograd.functional.jacobian(lambda x: pre.forward(x[None])[0], v[0])
    assert pre.log_abs_det() == pytest.approx(float(torch.linalg.slogdet(jac).logabsdet), abs=1e-12)
    assert pre.log_abs_det() == pytest.approx(-math.log(np.prod(vel.std(axis=0))))


def test_dict_round_trip_is_exact(pre) -> None:
    assert PositionPreprocessing.from_dict(pre.to_dict()) == pre
    import json

    assert PositionPreprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


def test_fit_refuses_bad_input() -> None:
    pos = ball(100)
    with pytest.raises(InputError, match="outside the region's radius"):
        PositionPreprocessing.fit(pos, CENTRE, R_MAX * 0.5)
    with pytest.raises(InputError, match="spread"):
        VelocityPreprocessing.fit(np.ones((10, 3)))
    with pytest.raises(InputError, match=r"\(n >= 2, 3\)"):
        PositionPreprocessing.fit(pos[:, :2], CENTRE, R_MAX)


def galaxy(n: int, seed: int = 0) -> np.ndarray:
    """A disk of a few kpc plus stray particles out to 20 Mpc (as zoom snapshots keep)."""
    rng = np.random.default_rng(seed)
    disk = rng.normal(0, [3.0, 3.0, 0.3], (n, 3))
    far = rng.normal(size=(n // 100, 3))
    far *= (10 ** rng.uniform(2.5, 4.3, len(far)) / np.linalg.norm(far, axis=1))[:, None]
    return np.vstack([disk, far])


@pytest.mark.parametrize("power", [1.0, 2 / 3])
def test_log_radial_map_round_trip_jacobian_and_no_distant_scale(power) -> None:
    pos = galaxy(4000)
    pre = PositionPreprocessing.fit_log_radial(pos, (0.0, 0.0, 0.0), scale=1.0, power=power)
    assert pre.r_max == math.inf
    y = pre.forward(pos)
    assert torch.isfinite(y).all()
    back = pre.inverse(y)
    # float64 round trip, relative to the radius (20 Mpc points included).
    rel = ((back - torch.as_tensor(pos)).norm(dim=1) / torch.as_tensor(pos).norm(dim=1)).max()
    assert rel < 1e-12
    # The disk keeps its shape: its standardised spread is O(1), not crushed to a point by the
    # 20 Mpc particles (the ball map puts the whole disk within ~1e-3 of the centre).
    disk = pre.forward(pos[:4000])
    assert float(disk.std(0).min()) > 0.2
    r_far = float(np.linalg.norm(pos, axis=1).max())
    ball_pre = PositionPreprocessing.fit(pos, (0.0, 0.0, 0.0), r_far)
    assert float(ball_pre.forward(pos[:4000]).std(0).max()) < 0.01  # what the ball map does
    # log |det| against autograd, at the origin (q = 1: smooth there; q < 1: the stretch is
    # infinite at the single point r = 0), in the series branch, and far out.
    points = [[0.0, 0.0, 0.0]] if power == 1.0 else []
    probe = torch.as_tensor(np.vstack([*points, [1e-9, 0, 0], [2e-3, 0, 0], pos[::500]]))
    logdet = pre.log_abs_det(probe)
    if power != 1.0:
        assert pre.log_abs_det(torch.zeros(1, 3, dtype=torch.float64)).item() == math.inf
    for i in range(len(probe)):
        jac = torch.autograd.functional.jacobian(lambda r: pre.forward(r[None])[0], probe[i])
        expected = torch.linalg.slogdet(jac).logabsdet
        assert float(logdet[i]) == pytest.approx(float(expected), abs=1e-8), i
    assert PositionPreprocessing.from_dict(pre.to_dict()) == pre
