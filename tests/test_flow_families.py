"""The table of flow families: a new family is one module and its registration.

This module *is* such a module: a diagonal affine Gaussian flow with one option, defined and
registered here, without touching galmock's source. Once registered it is configured
(``flows.kind: diag`` and a ``flows.diag`` section), trained by ``fit_ensemble``, saved and
loaded as an artifact, sampled, and goes stale like any other family's models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pydantic
import pytest
import torch
from torch import Tensor, nn

from galmock.config import default_config, load_job
from galmock.errors import ConfigError, InputError
from galmock.flows import (
    Family,
    FamilyOptions,
    NetworkOptions,
    family,
    family_names,
    flow_from_architecture,
    register_family,
    unregister_family,
)
from galmock.flows.artifact import load_artifact
from galmock.flows.base import ACTIVATIONS, Activation, DensityFlow, standard_normal_log_prob
from galmock.flows.training import fit_ensemble
from galmock.sections import PositiveFloat

# -- the family: one module's worth --------------------------------------------------------------


class DiagonalGaussian(DensityFlow):
    """x = loc + exp(log_scale) · z, loc and log_scale affine in the context."""

    kind = "diag"

    def __init__(self, features: int = 3, context: int = 0, init_scale: float = 1.0) -> None:
        super().__init__(features, context)
        self.init_scale = float(init_scale)
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.full((features,), math.log(init_scale)))
        self.condition = nn.Linear(context, 2 * features) if context else None

    def _affine(self, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.condition is None:
            return self.loc, self.log_scale
        shift, log_stretch = self.condition(context).chunk(2, dim=-1)
        return self.loc + shift, self.log_scale + log_stretch

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_context(x, context)
        loc, log_scale = self._affine(context)
        z = (x - loc) * torch.exp(-log_scale)
        return standard_normal_log_prob(z) - log_scale.expand_as(x).sum(dim=-1)

    def generate(self, z: Tensor, context: Tensor | None = None, chunk_rows: int = 16384,
                 compile: bool = False) -> Tensor:
        self._check_context(z, context)
        param = self.loc
        with torch.no_grad():
            c = None if context is None else context.to(param.device, param.dtype)
            loc, log_scale = self._affine(c)
            return loc + torch.exp(log_scale) * z.to(param.device, param.dtype)

    def architecture(self) -> dict[str, Any]:
        return {"kind": self.kind, "features": self.features, "context": self.context,
                "init_scale": self.init_scale}

    @classmethod
    def from_architecture(cls, arch: Mapping[str, Any]) -> DiagonalGaussian:
        return cls(arch["features"], arch["context"], arch["init_scale"])


class DiagonalOptions(FamilyOptions):
    """``flows.diag``: the initial scale of every axis."""

    init_scale: PositiveFloat

    def build(self, features: int, context: int, network: NetworkOptions) -> DiagonalGaussian:
        return DiagonalGaussian(features, context, self.init_scale)


DIAG = Family("diag", DiagonalGaussian, DiagonalOptions, {"init_scale": 1.0})

# -- the tests -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _diag_registered() -> Iterator[None]:
    # Registered for this module only: other tests (and subprocesses) see the built-ins.
    register_family(DIAG)
    yield
    unregister_family("diag")


def particles(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.normal(0, 1.0, (3 * n, 3))
    pos = pos[np.linalg.norm(pos, axis=1) < 2.5][:n]
    return pos, rng.normal(0, 20, (n, 3)) + 30 * pos[:, [1, 0, 2]]


def job_file(tmp_path: Path, flows: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(f"name: diag\nflows:\n{flows}")
    return path


def test_the_table_lists_builtins_first_then_the_new_family() -> None:
    assert family_names() == ("cnf", "maf", "nsf", "diag")
    assert family("diag") is DIAG
    assert register_family(DIAG) is DIAG  # registering the same record again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_family(Family("diag", DiagonalGaussian, DiagonalOptions, {"init_scale": 2.0}))
    with pytest.raises(ValueError, match="kind 'diag'"):
        Family("gauss", DiagonalGaussian, DiagonalOptions, {"init_scale": 1.0})
    with pytest.raises(pydantic.ValidationError, match="init_scale"):
        Family("diag", DiagonalGaussian, DiagonalOptions, {})  # defaults must be complete
    with pytest.raises(InputError, match=r"unknown flow kind 'glow' \(known: cnf, maf, nsf, diag"):
        family("glow")


def test_configured_with_its_own_section(tmp_path: Path) -> None:
    assert default_config()["flows"]["diag"] == {"init_scale": 1.0}  # from the record
    job = load_job(job_file(tmp_path, "  kind: diag\n  diag:\n    init_scale: 2.0\n"))
    assert job.flows.options() == DiagonalOptions(init_scale=2.0)
    assert job.flows.recipe()["diag"] == {"init_scale": 2.0} and "cnf" not in job.flows.recipe()
    job = load_job(job_file(tmp_path, "  kind: diag\n"), ["flows.diag.init_scale=3"])
    assert job.flows.spec().build(3, 0).architecture()["init_scale"] == 3.0
    with pytest.raises(ConfigError, match=r"flows\.diag\.init_scale = -1 \(line 5\): Input"):
        load_job(job_file(tmp_path, "  kind: diag\n  diag:\n    init_scale: -1\n"))
    # The resolved job round-trips, family section included.
    (tmp_path / "again.yaml").write_text(job.to_yaml())
    assert load_job(tmp_path / "again.yaml") == job


def test_trained_saved_loaded_and_sampled(tmp_path: Path) -> None:
    job = load_job(job_file(tmp_path, "  kind: diag\n  diag:\n    init_scale: 0.5\n"
                                      "  training:\n    ensemble_size: 2\n    max_epochs: 30\n"
                                      "    patience_epochs: 5\n    learning_rate: 5.0e-2\n"
                                      "  device: cpu\n"))
    pos, vel = particles()
    cfg = job.flows
    ensemble = fit_ensemble(pos, vel, cfg.spec(), cfg.training, 4, (0.0, 0.0, 0.0), 2.5,
                            tmp_path / "work", tmp_path / "model", runtime=cfg.runtime())
    assert ensemble.kind == "diag" and len(ensemble) == 2
    loaded = load_artifact(tmp_path / "model")
    assert loaded.kind == "diag"
    assert loaded.metadata["training"]["config"] == cfg.recipe()
    assert cfg.stale_keys(loaded.metadata["training"]["config"]) == []
    test_pos, test_vel = particles(200, seed=1)
    assert torch.equal(loaded.log_prob(test_pos, test_vel), ensemble.log_prob(test_pos, test_vel))
    pos_s, vel_s, _ = loaded.sample(500, torch.Generator().manual_seed(0))
    again = loaded.sample(500, torch.Generator().manual_seed(0))
    assert torch.equal(pos_s, again[0]) and torch.equal(vel_s, again[1])
    assert float(torch.linalg.vector_norm(pos_s, dim=1).max()) <= 2.5
    # Training helped: held-out particles are likelier than under the initial weights.
    initial = cfg.spec().build(3, 0)
    pre = loaded.members[0].position_pre
    y = pre.forward(torch.as_tensor(test_pos)).float()
    with torch.no_grad():
        trained = loaded.members[0].position.log_prob(y).mean()
        assert trained > initial.log_prob(y).mean()
    # Another option value makes the model stale.
    other = load_job(job_file(tmp_path, "  kind: diag\n"), ["flows.diag.init_scale=0.7"])
    assert "diag.init_scale" in other.flows.stale_keys(loaded.metadata["training"]["config"])


def test_rebuilt_from_its_architecture() -> None:
    flow = DIAG.build(3, 3, NetworkOptions(hidden_features=1, hidden_layers=1, activation="relu"))
    again = flow_from_architecture(flow.architecture())
    assert isinstance(again, DiagonalGaussian) and again.architecture() == flow.architecture()


def test_activation_names_agree() -> None:
    assert set(get_args(Activation)) == set(ACTIVATIONS)
