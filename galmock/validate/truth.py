"""Absolute tests where the galaxy's true phase-space density is known (the demo galaxy).

The demo's exact density (:meth:`galmock.demo.DemoGalaxy.log_prob`) lives in the generator's
frame; ingest may then have centred and rotated the particles, so :class:`DemoTruth` maps
through the transform recorded in ``particles.zarr`` (a rotation: unit Jacobian). True draws
restricted to a selection S estimate P_true(S), which normalises the truth to S exactly as the
fraction of a flow's draws landing in S normalises the flow, so held-out log-likelihoods of the
two are comparable: their paired difference estimates -KL(p_true,S || p_model,S) on the test set.

Example:
    >>> from galmock.particles import read_particle_store
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=2000"])
    >>> store = read_particle_store(run_ingest(job))
    >>> truth = DemoTruth.from_attrs(store.attrs)
    >>> pos, vel = truth.sample(1000, np.random.default_rng(0))
    >>> truth.log_prob(pos, vel).shape
    (1000,)
    >>> bool(np.isfinite(truth.log_prob(store.positions(), store.velocities())).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from galmock.config import JobConfig
from galmock.demo import COMPONENT_NAMES, DemoGalaxy
from galmock.errors import ConfigError


@dataclass(frozen=True)
class DemoTruth:
    """The demo galaxy in the particle store's frame: ``x_store = R (x_demo - c)``."""

    galaxy: DemoGalaxy
    rotation: np.ndarray  # (3, 3)
    centre: np.ndarray  # (3,) kpc
    centre_velocity: np.ndarray  # (3,) km/s

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> DemoTruth:
        """From ``particles.zarr`` attributes written by ingest of ``galaxy.source: demo``."""
        fractions = attrs["source_meta"]["fractions"]
        return cls(
            DemoGalaxy.from_fractions({k: fractions.get(k, 0.0) for k in COMPONENT_NAMES}),
            np.asarray(attrs.get("rotation_matrix", np.eye(3)), dtype=np.float64),
            np.asarray(attrs.get("centre_kpc", np.zeros(3)), dtype=np.float64),
            np.asarray(attrs.get("centre_velocity_kms", np.zeros(3)), dtype=np.float64),
        )

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` true draws (mixture over components by mass fraction), store frame, shuffled."""
        counts = rng.multinomial(n, np.asarray(self.galaxy.fractions))
        pos_parts, vel_parts = [], []
        for comp, k in zip(self.galaxy.components, counts, strict=True):
            if k:
                pos, vel = comp.sample(int(k), rng)
                pos_parts.append(pos)
                vel_parts.append(vel)
        order = rng.permutation(n)
        pos = np.concatenate(pos_parts)[order]
        vel = np.concatenate(vel_parts)[order]
        return (pos - self.centre) @ self.rotation.T, (vel - self.centre_velocity) @ self.rotation.T

    def log_prob(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        """Exact log density in (kpc km/s)^-3 at store-frame positions and velocities."""
        pos = np.asarray(pos, np.float64) @ self.rotation + self.centre
        vel = np.asarray(vel, np.float64) @ self.rotation + self.centre_velocity
        return self.galaxy.log_prob(pos, vel)


def truth_for(job: JobConfig, attrs: Mapping[str, Any]) -> tuple[DemoTruth | None, str]:
    """The known truth for this run, or ``None`` with the reason (``validate.truth``).

    Raises:
        ConfigError: ``validate.truth: true`` but the source has no known density.
    """
    setting = job.validation.truth
    if setting is False:
        return None, "validate.truth = false"
    source = attrs.get("source")
    if source == "demo" and "fractions" in attrs.get("source_meta", {}):
        return DemoTruth.from_attrs(attrs), "demo galaxy: exact density (galmock.demo)"
    if setting is True:
        raise ConfigError(
            f"validate.truth = true, but the particles come from galaxy.source = {source!r}, "
            "whose true density is unknown (only the demo galaxy has one); set validate.truth "
            "to auto or false"
        )
    return None, f"galaxy.source = {source!r}: true density unknown"


def truth_draws(
    truth: DemoTruth, inside: Callable[[np.ndarray], np.ndarray], n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """``n`` true draws inside the selection; ``(pos, vel, P_true(S) estimate, drawn)``."""
    rng = np.random.default_rng(seed)
    pos_parts, vel_parts = [], []
    got = drawn = passed = 0
    acceptance = 0.1
    while got < n:
        m = min(2_000_000, math.ceil((n - got) / acceptance * 1.05) + 64)
        pos, vel = truth.sample(m, rng)
        keep = np.flatnonzero(inside(pos))
        drawn += m
        passed += len(keep)
        if passed == 0 and drawn >= 1_000_000:
            raise ConfigError("validate: no true draw falls inside the selection")
        take = keep[: n - got]
        pos_parts.append(pos[take])
        vel_parts.append(vel[take])
        got += len(take)
        acceptance = max(passed / drawn, 1e-4)
    return np.concatenate(pos_parts), np.concatenate(vel_parts), passed / drawn, drawn


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error (ddof=1)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def heldout_loglikelihood(
    model_logp: np.ndarray, true_logp: np.ndarray, true_inside_fraction: float, true_drawn: int
) -> dict[str, Any]:
    """Mean held-out log-likelihoods of a model and of the truth, normalised to the selection.

    ``model_logp`` is already normalised to S (galmock flows: by the fraction of their draws in
    S); the truth is normalised here by ``true_inside_fraction`` = P_true(S). Test particles
    where the model has no support (-inf: outside its flows' balls) are counted and left out
    of all three means, so the numbers stay finite and paired.
    """
    model_logp = np.asarray(model_logp, dtype=np.float64)
    truth = np.asarray(true_logp, dtype=np.float64) - math.log(true_inside_fraction)
    ok = np.isfinite(model_logp) & np.isfinite(truth)
    model_mean, model_se = mean_and_stderr(model_logp[ok])
    true_mean, true_se = mean_and_stderr(truth[ok])
    diff_mean, diff_se = mean_and_stderr(model_logp[ok] - truth[ok])
    f = true_inside_fraction
    return {
        "model_mean": model_mean,
        "model_stderr": model_se,
        "truth_mean": true_mean,
        "truth_stderr": true_se,
        "difference_mean": diff_mean,
        "difference_stderr": diff_se,
        "truth_log_normalisation": math.log(f),
        "truth_log_normalisation_stderr": math.sqrt((1 - f) / (f * true_drawn)),
        "test_particles": int(ok.sum()),
        "test_particles_without_support": int((~ok).sum()),
    }
