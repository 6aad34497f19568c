"""Radial calibration (galmock.flows.radial): an exact bijection with an exact Jacobian, that
gives a model the particles' radial distribution, tails included; and its wiring into the
region flows' training, artifacts and sampling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from galmock.config import FlowsConfig
from galmock.errors import InputError
from galmock.flows.artifact import load_artifact, save_artifact
from galmock.flows.radial import RadialCalibration, quantile_levels, weighted_quantiles
from galmock.flows.training import fit_ensemble

pytestmark = pytest.mark.usefixtures("one_thread")

CENTRE = (1.0, -2.0, 0.5)


def radii(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.linalg.norm(np.asarray(x) - np.asarray(CENTRE), axis=1)


def gaussian(n: int, sigma: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, (n, 3)) + np.asarray(CENTRE)


@pytest.fixture(scope="module")
def calibration() -> RadialCalibration:
    """A model too compact by 2x (sigma 1) calibrated to particles with sigma 2."""
    cal = RadialCalibration.fit(radii(gaussian(400_000, 1.0, 1)), radii(gaussian(50_000, 2.0, 2)),
                                CENTRE)
    assert cal is not None
    return cal


def test_map_is_an_exact_bijection_with_the_autograd_jacobian(calibration) -> None:
    # Points inside the knots, beyond both ends, and on knots themselves.
    rng = np.random.default_rng(3)
    direction = rng.normal(size=(12, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r = np.concatenate([np.exp(np.array(calibration.log_r_model[:3])),
                        [1e-4, 0.05, 0.7, 1.3, 2.9, 6.0, 40.0, 1e3, 1e5]])
    x = torch.as_tensor(np.asarray(CENTRE) + direction * r[:, None])
    moved, logdet = calibration.forward_and_log_abs_det(x)
    back, inv_logdet = calibration.inverse_and_log_abs_det(moved)
    assert torch.allclose(back, x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(inv_logdet, -logdet, rtol=1e-10, atol=1e-10)
    for row in range(len(x)):
        jac = torch.autograd.functional.jacobian(calibration.forward, x[row:row + 1])
        expected = torch.linalg.slogdet(jac.reshape(3, 3))[1]
        assert abs(float(expected - logdet[row])) < 1e-9, (r[row], float(expected))


def test_map_is_monotone_and_smooth_in_radius(calibration) -> None:
    lr = torch.linspace(-8.0, 8.0, 20_001, dtype=torch.float64)
    h, slope = calibration._h(lr)
    assert (torch.diff(h) > 0).all() and (slope > 0).all()
    # Continuous derivative across every knot (a jump would be a step in the density).
    knots = torch.tensor(calibration.log_r_model, dtype=torch.float64)
    left, right = calibration._h(knots - 1e-9)[1], calibration._h(knots + 1e-9)[1]
    assert float((left - right).abs().max()) < 1e-6


def test_calibrated_model_has_the_particles_radii_and_an_exact_density(calibration) -> None:
    # Fresh model draws, moved: their radii follow the particles' distribution (sigma 2).
    x = torch.as_tensor(gaussian(100_000, 1.0, 4))
    moved, logdet = calibration.forward_and_log_abs_det(x)
    target = radii(gaussian(100_000, 2.0, 5))
    got = radii(moved)
    n = m = 100_000
    ks = np.abs(np.searchsorted(np.sort(got), np.sort(np.concatenate([got, target])), "right") / n
                - np.searchsorted(np.sort(target), np.sort(np.concatenate([got, target])), "right")
                / m).max()
    assert ks < 1.95 * math.sqrt((n + m) / (n * m)), ks  # two-sample KS, alpha = 0.001
    # The tail beyond the particles' 99.9th percentile: binomial count within 4 sd.
    edge = np.quantile(target, 0.999)
    beyond = (got > edge).sum()
    assert abs(beyond - 100) < 4 * math.sqrt(100), beyond
    # The calibrated density p(x') = p_model(x) / |det| is the sigma-2 Gaussian's.
    def log_normal(v: torch.Tensor, sigma: float) -> torch.Tensor:
        d = v - torch.tensor(CENTRE, dtype=torch.float64)
        return -0.5 * (d * d).sum(1) / sigma**2 - 3 * math.log(sigma) - 1.5 * math.log(2 * math.pi)

    inside = torch.as_tensor(got < np.quantile(target, 0.99))
    err = (log_normal(x, 1.0) - logdet - log_normal(moved, 2.0))[inside]
    # Knot radii are quantiles of 50k particles (~0.5% each); the log density inherits ~3x that.
    assert float(err.abs().median()) < 0.03, float(err.abs().median())


def test_weights_count_like_repeated_particles() -> None:
    rng = np.random.default_rng(6)
    values = rng.exponential(size=2000)
    weight = np.where(values > 1.0, 3.0, 1.0)
    levels = quantile_levels(2000)
    repeated = np.concatenate([values, values[values > 1.0], values[values > 1.0]])
    assert np.allclose(weighted_quantiles(values, levels, weight),
                       weighted_quantiles(repeated, levels), rtol=0.02)


def test_levels_leave_particles_beyond_the_last_knot() -> None:
    for n in (12, 100, 40_000, 10**7):
        levels = quantile_levels(n)
        assert (n * levels[0] >= 5) and (n * (1 - levels[-1]) >= 5)
        assert n * levels[0] < 10 or levels[0] == 0.5**63 / 32
    assert RadialCalibration.fit(np.ones(100), np.ones(9), CENTRE) is None  # no two knots


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.update(slope=[-1.0] * len(d["slope"])), "slopes be positive"),
    (lambda d: d.update(log_r=d["log_r"][::-1]), "knots must increase"),
    (lambda d: d.update(log_r=d["log_r"][:-1]), "equally many"),
    (lambda d: d.pop("centre"), "malformed"),
])
def test_damaged_knots_are_refused(calibration, edit, problem) -> None:
    data = calibration.to_dict()
    edit(data)
    with pytest.raises(InputError, match=problem):
        RadialCalibration.from_dict(data)


def heavy_tailed(n: int, rng: np.random.Generator) -> np.ndarray:
    """A thick disk of scale length 3 kpc in a sparse halo to ~100 kpc (ρ ∝ r^-3.5, 5%)."""
    disk = np.column_stack([rng.normal(0, 3.0, n), rng.normal(0, 3.0, n), rng.normal(0, 0.5, n)])
    u = rng.uniform(size=n)
    r = 5.0 * (1 - u * (1 - (5.0 / 100.0) ** 0.5)) ** -2.0  # ρ ∝ r^-3.5 between 5 and 100 kpc
    d = rng.normal(size=(n, 3))
    halo = r[:, None] * d / np.linalg.norm(d, axis=1, keepdims=True)
    return np.where((rng.uniform(size=n) < 0.05)[:, None], halo, disk) + np.asarray(CENTRE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(7)
    pos = heavy_tailed(6000, rng)
    vel = rng.normal(0, 50, pos.shape) + 0.01 * pos
    cfg = FlowsConfig.from_defaults(
        kind="cnf", hidden_features=16, hidden_layers=2, device="cpu",
        training={"batches_per_epoch": 10, "batch_rows": 256, "max_epochs": 5,
                  "patience_epochs": 5, "ensemble_size": 2})
    ensemble = fit_ensemble(pos, vel, cfg.spec(), cfg.training, 3, CENTRE, None,
                            runtime=cfg.runtime())
    path = save_artifact(ensemble, tmp_path_factory.mktemp("radial") / "region-0000")
    return pos, vel, cfg, ensemble, path


def test_a_briefly_trained_region_flow_gets_the_particles_radii(trained) -> None:
    pos, _, _, ensemble, _ = trained
    members = list(ensemble.members)
    assert all(m.radial is not None for m in members)
    assert members[0].radial != members[1].radial  # each member calibrates its own flow
    drawn, _, _ = ensemble.sample(60_000, torch.Generator().manual_seed(8))
    levels = np.array([0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
    want, got = np.quantile(radii(pos), levels), np.quantile(radii(drawn), levels)
    # Quantile SE from the 6000 particles: sqrt(p(1-p)/n) / density, via the empirical CDF's
    # slope; 4 SE (the flow's draws are 10x more and add little).
    eps = 4 * np.sqrt(levels * (1 - levels) / len(pos))
    lo = np.quantile(radii(pos), np.clip(levels - eps, 0, 1))
    hi = np.quantile(radii(pos), np.clip(levels + eps, 0, 1))
    assert ((got >= lo) & (got <= hi)).all(), (want, got)


def test_calibrated_artifacts_round_trip_and_refuse_damaged_knots(trained) -> None:
    pos, vel, _, ensemble, path = trained
    loaded = load_artifact(path)
    assert [m.radial for m in loaded.members] == [m.radial for m in ensemble.members]
    p, v = pos[:500], vel[:500]
    assert torch.equal(loaded.log_prob(p, v), ensemble.log_prob(p, v))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["members"][1]["radial_calibration"]["slope"][0] = -1.0
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"member-01\.safetensors: radial calibration"):
        load_artifact(path)


def test_calibration_is_off_when_asked_and_for_the_papers_ball(trained) -> None:
    pos, vel, cfg, _, _ = trained
    off = cfg.training.model_copy(update={"radial_calibration": False, "ensemble_size": 1})
    ensemble = fit_ensemble(pos, vel, cfg.spec(), off, 3, CENTRE, None, runtime=cfg.runtime())
    assert ensemble.members[0].radial is None
    one = cfg.training.model_copy(update={"ensemble_size": 1})
    ball = fit_ensemble(pos, vel, cfg.spec(), one, 3, CENTRE, float(radii(pos).max()) * 1.01,
                        runtime=cfg.runtime())
    assert ball.members[0].radial is None
