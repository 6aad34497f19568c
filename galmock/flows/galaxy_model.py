"""A conditional galaxy model: p(star | global galaxy parameters), with its preprocessing and
artifact I/O (GalacticFlow, Wolf & Buck 2023).

Star space (9-D, :data:`COLUMNS`): position (kpc), velocity (km/s), age (Gyr), [Fe/H] and
[O/Fe] (dex). The paper's 10th dimension, total metallicity Z, is not in galmock's particle
store; deriving it from [Fe/H] and [O/Fe] would make it a deterministic function of the other
dimensions, a density concentrated on a 9-D surface, which a flow cannot represent. Conditions
(:data:`PARAMETERS`): stellar mass M* (Msun; the flow sees log10 M*), median and 10th-percentile
stellar ages τ50 and τ10 (Gyr) and the mass-weighted mean [Fe/H] (dex). Stars and conditions
are z-scored with the training suite's mean and std, stored in the manifest; ``log_prob``
includes the z-scoring's Jacobian, so densities are per kpc³ (km/s)³ Gyr dex².

On disk a galaxy model is an artifact directory like a region model's (same format string,
so ``galmock models register/list/show`` handle it), with ``"artifact": "galaxy_model"`` in
its manifest and one safetensors weights file whose sha256 is checked on load.

Example:
    >>> import tempfile
    >>> rng = np.random.default_rng(0)
    >>> flow = ConditionalNSF(len(COLUMNS), len(PARAMETERS), layers=1, hidden_features=8,
    ...                       hidden_layers=1, bins=4)
    >>> params = np.array([[1e10, 7.0, 11.0, -0.3], [1e11, 9.0, 12.0, 0.1]])
    >>> model = GalaxyModel(flow, ZScore.fit(rng.normal(size=(100, 9)), "stars"),
    ...                     ZScore.fit(condition_features(params), "conditions"))
    >>> path = save_galaxy_model(model, f"{tempfile.mkdtemp()}/model")
    >>> model = load_galaxy_model(path)
    >>> stars = model.sample(1000, {"stellar_mass_msun": 1e10, "tau50_gyr": 7.0,
    ...                             "tau10_gyr": 11.0, "mean_feh": -0.3},
    ...                      generator=torch.Generator().manual_seed(0))
    >>> stars.shape, stars.dtype
    ((1000, 9), dtype('float64'))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from galmock.errors import InputError
from galmock.flows.artifact import (
    MANIFEST,
    WeightsFile,
    build_module,
    load_weights,
    manifest_header,
    members_of,
    module_tensors,
    open_artifact,
    write_artifact,
)
from galmock.flows.conditional_nsf import ConditionalNSF

ARTIFACT_TYPE = "galaxy_model"
WEIGHTS = "model.safetensors"
COLUMNS = ("x", "y", "z", "vx", "vy", "vz", "age", "feh", "ofe")
PARAMETERS = ("stellar_mass_msun", "tau50_gyr", "tau10_gyr", "mean_feh")


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` weighted by ``weights`` (midpoint CDF, no interpolation
    beyond the data): equal weights give numpy's ``median`` for q = 0.5 and odd n."""
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, np.float64)[order], np.asarray(weights, np.float64)[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return float(np.interp(q, cdf, v))


def global_parameters(mass: np.ndarray, age: np.ndarray, feh: np.ndarray) -> dict[str, float]:
    """A galaxy's conditions from its star particles: M* = Σ m, mass-weighted median age
    (τ50), 10th-percentile age (τ10, the *young* end) and mean [Fe/H].

    Example:
        >>> global_parameters(np.ones(3), np.array([1., 2., 3.]), np.zeros(3))["tau50_gyr"]
        2.0
    """
    mass = np.asarray(mass, np.float64)
    return {
        "stellar_mass_msun": float(mass.sum()),
        "tau50_gyr": weighted_quantile(age, mass, 0.5),
        "tau10_gyr": weighted_quantile(age, mass, 0.1),
        "mean_feh": float(np.average(np.asarray(feh, np.float64), weights=mass)),
    }


def parameter_vector(params: Mapping[str, float] | Sequence[float], where: str) -> np.ndarray:
    """(4,) float64 in :data:`PARAMETERS` order from a mapping (or sequence); ``where`` names
    the config key in errors."""
    if isinstance(params, Mapping):
        missing = [k for k in PARAMETERS if params.get(k) is None]
        if missing:
            raise InputError(f"{where}: missing parameter(s) {', '.join(missing)} "
                             f"(need {', '.join(PARAMETERS)})")
        values = [params[k] for k in PARAMETERS]
    else:
        values = list(params)
    vec = np.asarray(values, dtype=np.float64)
    if vec.shape != (len(PARAMETERS),) or not np.all(np.isfinite(vec)):
        raise InputError(f"{where}: parameters must be {len(PARAMETERS)} finite numbers "
                         f"({', '.join(PARAMETERS)}), got {values!r}")
    if vec[0] <= 0:
        raise InputError(f"{where}: stellar_mass_msun must be positive, got {vec[0]!r}")
    return vec


def condition_features(params: np.ndarray) -> np.ndarray:
    """Physical parameters (n, 4) → what the flow is conditioned on: log10 M*, the rest as is."""
    out = np.array(params, dtype=np.float64, ndmin=2)
    out[:, 0] = np.log10(out[:, 0])
    return out


@dataclass(frozen=True)
class ZScore:
    """Per-column ``(v − μ) / σ`` in float64, with its log |det| = −Σ log σ."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray, name: str) -> ZScore:
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=0)
        if not np.all(np.isfinite(std)) or np.any(std <= 0):
            raise InputError(f"{name}: zero or non-finite spread per column {std.tolist()}; "
                             "need at least two distinct, finite values in every column")
        return cls(tuple(float(v) for v in x.mean(axis=0)), tuple(float(v) for v in std))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - np.asarray(self.mean)) / np.asarray(self.std)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, np.float64) * np.asarray(self.std) + np.asarray(self.mean)

    def log_abs_det(self) -> float:
        return -sum(math.log(s) for s in self.std)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ZScore:
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))


class GalaxyModel(nn.Module):
    """A :class:`ConditionalNSF` over z-scored stars conditioned on z-scored parameters.

    ``chunk_rows`` only sets the sampler's memory, not its results.
    """

    def __init__(self, flow: ConditionalNSF, data_pre: ZScore, cond_pre: ZScore,
                 metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if flow.features != len(COLUMNS) or flow.context != len(PARAMETERS):
            raise ValueError(f"the galaxy flow must map {len(COLUMNS)} features with "
                             f"{len(PARAMETERS)} conditions")
        self.flow = flow
        self.data_pre = data_pre
        self.cond_pre = cond_pre
        self.metadata = dict(metadata or {})
        self.chunk_rows = 65536

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, stars: np.ndarray, params: np.ndarray) -> tuple[Tensor, Tensor]:
        """Physical stars (n, 9) and parameters (n, 4) → the flow's inputs (model dtype)."""
        y = torch.as_tensor(self.data_pre.forward(stars), dtype=self.dtype, device=self.device)
        c = self.cond_pre.forward(condition_features(params))
        return y, torch.as_tensor(c, dtype=self.dtype, device=self.device)

    def log_prob(self, stars: np.ndarray, params: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """log p(star | parameters) in physical units, float64 (n,). ``params``: one galaxy
        (mapping or (4,)) for every row, or (n, 4)."""
        stars = np.asarray(stars, dtype=np.float64)
        p = _rows_of(params, len(stars))
        out = np.empty(len(stars))
        with torch.no_grad():
            for start in range(0, len(stars), self.chunk_rows):
                sl = slice(start, start + self.chunk_rows)
                y, c = self.encode(stars[sl], p[sl])
                out[sl] = self.flow.log_prob(y, c).double().cpu().numpy()
        return out + self.data_pre.log_abs_det()

    def sample(
        self,
        n: int,
        params: Mapping[str, float] | np.ndarray,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """``n`` stars (n, 9) float64 for one galaxy's parameters. Base normals come from
        ``generator`` (on its device) in ``chunk_rows`` batches, so the result depends on the
        seed and ``chunk_rows`` only, not on the model's device."""
        cond = self.cond_pre.forward(condition_features(_rows_of(params, 1)))[0]
        c_row = torch.as_tensor(cond, dtype=self.dtype, device=self.device)
        out = np.empty((n, len(COLUMNS)))
        where = generator.device if generator is not None else self.device
        for start in range(0, n, self.chunk_rows):
            m = min(self.chunk_rows, n - start)
            z = torch.randn(m, len(COLUMNS), generator=generator, device=where, dtype=self.dtype)
            y = self.flow.generate(z.to(self.device), c_row.expand(m, -1), chunk_rows=m)
            out[start : start + m] = self.data_pre.inverse(y.double().cpu().numpy())
        return out


def _rows_of(params: Mapping[str, float] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(params, Mapping):
        return np.broadcast_to(parameter_vector(params, "parameters"), (n, len(PARAMETERS)))
    p = np.asarray(params, dtype=np.float64)
    return np.broadcast_to(p, (n, len(PARAMETERS))) if p.ndim == 1 else p


# -- artifact I/O -------------------------------------------------------------------------------


def save_galaxy_model(model: GalaxyModel, path: str | Path) -> Path:
    """Write ``model`` as an artifact directory at ``path`` (replaced atomically)."""
    manifest = {
        **manifest_header(model.flow.kind, ARTIFACT_TYPE),
        "architecture": model.flow.architecture(),
        "columns": list(COLUMNS),
        "parameters": list(PARAMETERS),
        "preprocessing": {"data": model.data_pre.to_dict(), "conditions": model.cond_pre.to_dict(),
                          "conditions_transform": "log10 of stellar_mass_msun, then z-score"},
        "training": model.metadata.get("training", {}),
        "suite": model.metadata.get("suite", {}),
    }
    return write_artifact(path, manifest, [WeightsFile(WEIGHTS, module_tensors({"": model.flow}))])


def load_galaxy_model(location: str | Path, device: str | torch.device = "cpu") -> GalaxyModel:
    """Load and verify a galaxy-model artifact (path or fsspec URL).

    Raises:
        InputError: not a galaxy model, malformed manifest, changed weights or tensor shapes.
    """
    root, manifest = open_artifact(location, ARTIFACT_TYPE)
    where = f"{root}/{MANIFEST}"
    try:
        if list(manifest["columns"]) != list(COLUMNS) or list(manifest["parameters"]) != list(
            PARAMETERS
        ):
            raise InputError(f"{where}: columns/parameters {manifest['columns']}/"
                             f"{manifest['parameters']} differ from this galmock's "
                             f"{list(COLUMNS)}/{list(PARAMETERS)}")
        data_pre = ZScore.from_dict(manifest["preprocessing"]["data"])
        cond_pre = ZScore.from_dict(manifest["preprocessing"]["conditions"])
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"{where}: malformed galaxy-model manifest "
                         f"({type(err).__name__}: {err})") from None
    flow = build_module(ConditionalNSF.from_architecture, manifest.get("architecture"), where)
    # The LU permutations and signs are drawn at initialisation: not fixed by the architecture.
    load_weights(root, members_of(manifest, where)[0], {"": flow}, where, fixed_buffers=False)
    meta = {k: v for k, v in manifest.items() if k not in ("members",)}
    return GalaxyModel(flow.eval(), data_pre, cond_pre, meta).to(device)
