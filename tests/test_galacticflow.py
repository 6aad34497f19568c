"""The GalacticFlow conditional NSF: normalisation, exact inverse and Jacobian, the learning-rate
schedule, and galaxy-model artifacts through the model registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from galmock.cli import main
from galmock.config import default_config, validate_job
from galmock.errors import InputError
from galmock.flows import registry
from galmock.flows.artifact import load_artifact
from galmock.flows.conditional_nsf import ConditionalNSF
from galmock.flows.galaxy_model import (
    COLUMNS,
    PARAMETERS,
    GalaxyModel,
    ZScore,
    global_parameters,
    load_galaxy_model,
    save_galaxy_model,
)
from galmock.flows.galaxy_training import learning_rate

# Small tensors: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed_flow(features: int, context: int, seed: int = 0, scale: float = 0.1):
    """A float64 flow away from the identity (fresh networks start near it)."""
    torch.manual_seed(seed)
    flow = ConditionalNSF(features, context, layers=3, hidden_features=16, hidden_layers=2,
                          bins=10).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


@pytest.mark.slow
def test_log_prob_integrates_to_one_in_2d_for_fixed_context():
    flow = perturbed_flow(2, 3)
    context = torch.tensor([[0.3, -1.2, 0.7]], dtype=torch.float64)
    # ±15 holds all but ~e^-20 of a flow whose tails are the N(0, 1) base mapped by an
    # identity-outside-the-splines transform with O(1) linear maps.
    g = torch.linspace(-15.0, 15.0, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.ravel(), yy.ravel()], dim=1)
    with torch.no_grad():
        logp = torch.cat([flow.log_prob(p, context.expand(len(p), 3)) for p in pts.split(200_000)])
    total = float(logp.exp().sum()) * float(g[1] - g[0]) ** 2
    # Midpoint-rule error of a smooth density on a 0.05 grid: well below 1e-3.
    assert total == pytest.approx(1.0, abs=2e-3)


def test_inverse_is_exact_and_log_det_matches_autograd():
    flow = perturbed_flow(5, 2, seed=1)
    gen = torch.Generator().manual_seed(3)
    x = 1.5 * torch.randn(40, 5, generator=gen, dtype=torch.float64)
    c = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    z, logdet = flow.transform(x, c)
    assert torch.allclose(flow.inverse(z, c), x, rtol=0, atol=1e-10)
    for i in range(3):
        def one(v, i=i):
            return flow.transform(v[None], c[i : i + 1])[0][0]

        jac = torch.autograd.functional.jacobian(one, x[i])
        expected = float(logdet[i].detach())
        assert float(torch.linalg.slogdet(jac)[1].detach()) == pytest.approx(expected, abs=1e-9)
    # The condition matters: another context maps x elsewhere.
    z2, _ = flow.transform(x, c.flip(0))
    assert not torch.allclose(z, z2)


def test_paper_defaults_size_and_context_check():
    flow = ConditionalNSF(9, 4)
    n_params = sum(p.numel() for p in flow.parameters())
    # Wolf & Buck: "about 3 · 10^6 trainable parameters" for 14 layers, 3 × 128, K = 10.
    assert 2.5e6 < n_params < 3.5e6
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(torch.zeros(3, 9), torch.zeros(3, 2))


def test_learning_rate_schedule_follows_the_paper():
    suite = validate_job(default_config()).suite
    assert learning_rate(0, suite) == 9e-5
    assert learning_rate(9, suite) == 9e-5
    assert learning_rate(10, suite) == pytest.approx(9e-5 * 0.998)
    # 3e-6 is reached after ceil(ln(3e-6/9e-5)/ln 0.998) = 1699 decays (step 16990); from then
    # on one decay per 120 steps.
    k = math.ceil(math.log(3e-6 / 9e-5) / math.log(0.998))
    s = k * 10
    assert learning_rate(s, suite) < 3e-6 <= learning_rate(s - 10, suite)
    assert learning_rate(s + 119, suite) == learning_rate(s, suite)
    assert learning_rate(s + 120, suite) == pytest.approx(learning_rate(s, suite) * 0.998)


def test_global_parameters_are_weighted_quantiles():
    age = np.array([1.0, 2.0, 3.0, 4.0])
    p = global_parameters(np.array([1.0, 1.0, 1.0, 5.0]), age, np.array([0.0, 0, 0, -1]))
    assert p["stellar_mass_msun"] == 8.0
    # Midpoint CDF (0.0625, 0.1875, 0.3125, 0.6875), interpolated at 0.5 and 0.1.
    assert p["tau50_gyr"] == pytest.approx(3.5)
    assert p["tau10_gyr"] == pytest.approx(1.3)
    ages = np.random.default_rng(0).uniform(0, 13, 101)
    same = global_parameters(np.ones(101), ages, np.zeros(101))
    assert same["tau50_gyr"] == pytest.approx(np.median(ages))
    assert p["mean_feh"] == pytest.approx(-5 / 8)


def small_model(seed: int = 0) -> GalaxyModel:
    torch.manual_seed(seed)
    flow = ConditionalNSF(len(COLUMNS), len(PARAMETERS), layers=2, hidden_features=8,
                          hidden_layers=1, bins=4)
    rng = np.random.default_rng(seed)
    data = ZScore.fit(rng.normal(size=(100, 9)) * np.arange(1, 10), "data")
    cond = ZScore.fit(rng.normal(size=(5, 4)) + np.array([10, 5, 1, 0]), "conditions")
    return GalaxyModel(flow, data, cond, {"training": {"seed": seed}})


PARAMS = {"stellar_mass_msun": 1e10, "tau50_gyr": 5.0, "tau10_gyr": 1.0, "mean_feh": -0.2}


def test_artifact_round_trip_registry_and_refusals(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GALMOCK_MODEL_REGISTRY", str(tmp_path / "models.json"))
    model = small_model()
    path = save_galaxy_model(model, tmp_path / "suite" / "model")
    stars = model.sample(500, PARAMS, torch.Generator().manual_seed(1))
    assert stars.shape == (500, 9) and stars.dtype == np.float64
    again = model.sample(500, PARAMS, torch.Generator().manual_seed(1))
    assert np.array_equal(stars, again)  # deterministic for a seed

    assert main(["models", "register", "gal-test", str(path)]) == 0
    assert main(["models", "list"]) == 0
    assert "gal-test" in capsys.readouterr().out
    assert main(["models", "show", "gal-test"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["artifact"] == "galaxy_model" and shown["columns"] == list(COLUMNS)

    loaded = registry.load_galaxy_model("gal-test", device="cpu")
    assert np.array_equal(loaded.log_prob(stars, PARAMS), model.log_prob(stars, PARAMS))
    assert np.array_equal(loaded.sample(500, PARAMS, torch.Generator().manual_seed(1)), stars)

    # A region-model loader refuses a galaxy model by name, and vice versa.
    with pytest.raises(InputError, match="galaxy_model artifact, not a region model"):
        load_artifact(path)
    with pytest.raises(InputError, match=r"galaxy\.model = 'nope'"):
        registry.load_galaxy_model("nope")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(InputError, match="sha256"):
        load_galaxy_model(path)


def test_log_prob_is_in_physical_units():
    """Scaling the data by the z-score widths shifts log p by −Σ log σ exactly."""
    model = small_model(2)
    stars = model.sample(50, PARAMS, torch.Generator().manual_seed(0))
    y, c = model.encode(stars, np.broadcast_to([PARAMS[k] for k in PARAMETERS], (50, 4)))
    with torch.no_grad():
        flow_logp = model.flow.log_prob(y, c).double().numpy()
    expected = flow_logp - np.log(model.data_pre.std).sum()
    assert np.allclose(model.log_prob(stars, PARAMS), expected, rtol=0, atol=1e-9)
