"""Preprocessing between physical phase space and the flows' unbounded, standardised space.

Positions live in a ball (the region's ``centre`` and ``radius`` = r_c, r_max) whose edge is a
sharp cut in the data; a flow on R^3 cannot model that edge well, so the ball is first mapped onto
R^3 (GalaxyFlow, eqs. 9–11):

(i)   u = (r − r_c) / (r_max · c),  c slightly above 1 so no particle sits on the unit sphere;
(ii)  w = u · artanh|u| / |u|  (the radial expansion; smooth at the origin);
(iii) y = (w − μ) / σ  per coordinate, with the training mean and standard deviation.

A whole galaxy has no edge but spans six decades in radius (a disk of a few kpc, a halo to
hundreds, stray particles to Mpc), and a region's ball would be set by its farthest particle. The
*log-radial* map used for k-d regions instead compresses positions about the galaxy centre:

(i')  u = (r − r_c) / a  with a scale ``a`` (kpc; ``flows.training.log_radial_scale_kpc``);
(ii') w = u · asinh|u| / |u|  (linear inside ~a, logarithmic outside; smooth at the origin);
(iii) as above.

It maps R^3 onto R^3, so there is no ball to truncate to (``r_max`` is infinite) and no distant
particle sets any region's scale.

Velocities have no edge and are only standardised. Everything here is float64: positions feed
astrometry, and float32 would quantise a kpc-scale offset to ~0.1 pc. Each map has an exact
inverse and a log |det Jacobian| so densities convert between the two spaces:
log p_phys(r) = log p_pre(y) + log |det ∂y/∂r|.

Example:
    >>> rng = np.random.default_rng(0)
    >>> offset = rng.uniform(-2, 2, (1000, 3))
    >>> pos = np.array([-8.1, 0.0, 0.02]) + offset[np.linalg.norm(offset, axis=1) < 2]
    >>> pre = PositionPreprocessing.fit(pos, centre=(-8.1, 0.0, 0.02), radius=3.5)
    >>> y = pre.forward(torch.as_tensor(pos))          # (n, 3) float64
    >>> y.dtype, torch.allclose(pre.inverse(y), torch.as_tensor(pos))
    (torch.float64, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from galmock.errors import InputError

# Below this |u|^2 the series forms are used: their truncation error (~|u|^8) is < 1e-24 there,
# while the closed forms lose all digits to 0/0 (and their gradients are NaN) at the origin.
_SMALL_S2 = 1e-6


def _as_f64(x: Tensor | np.ndarray, device: torch.device | None = None) -> Tensor:
    t = torch.as_tensor(x)
    return t.to(dtype=torch.float64, device=device if device is not None else t.device)


def _vector(values: Sequence[float] | np.ndarray, name: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise InputError(f"preprocessing: {name} must be 3 finite numbers, got {values!r}")
    return out  # type: ignore[return-value]


def _standardisation(x: np.ndarray, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)  # population std (ddof=0), as the paper's "width of the distribution"
    if not np.all(np.isfinite(std)) or np.any(std <= 0):
        raise InputError(
            f"preprocessing: {name} have zero or non-finite spread per axis {std.tolist()}; "
            "need at least two distinct, finite values on every axis"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def radial_expand(u: Tensor) -> tuple[Tensor, Tensor]:
    """Map the open unit ball onto R^3: ``w = u · artanh|u| / |u|``; also log |det ∂w/∂u|.

    The 3-D Jacobian determinant is ``(artanh s / s)^2 / (1 − s^2)`` with ``s = |u|``: the
    radial direction stretches by d artanh(s)/ds = 1/(1 − s^2), each tangential one by
    artanh(s)/s. Points with ``s >= 1`` give non-finite values.
    """
    s2 = (u * u).sum(dim=-1, keepdim=True)
    small = s2 < _SMALL_S2
    # The unused branch of torch.where still gets a gradient (times 0): keep it finite by
    # substituting a harmless |u| = 0.5 where the series is used.
    s = torch.sqrt(torch.where(small, torch.full_like(s2, 0.25), s2))
    series = 1 + s2 / 3 + s2 * s2 / 5 + s2 * s2 * s2 / 7  # artanh(s)/s
    ratio = torch.where(small, series, torch.atanh(s) / s)
    log_ratio = torch.where(small, torch.log1p(s2 / 3 + s2 * s2 / 5), torch.log(ratio))
    logdet = 2 * log_ratio - torch.log1p(-s2)
    return u * ratio, logdet.squeeze(-1)


def radial_contract(w: Tensor) -> Tensor:
    """Inverse of :func:`radial_expand`: ``u = w · tanh|w| / |w|``."""
    rho2 = (w * w).sum(dim=-1, keepdim=True)
    small = rho2 < _SMALL_S2
    rho = torch.sqrt(torch.where(small, torch.full_like(rho2, 0.25), rho2))
    series = 1 - rho2 / 3 + 2 * rho2 * rho2 / 15 - 17 * rho2 * rho2 * rho2 / 315  # tanh(ρ)/ρ
    return w * torch.where(small, series, torch.tanh(rho) / rho)


def log_radial_expand(u: Tensor, power: float = 1.0) -> tuple[Tensor, Tensor]:
    """``w = u · f(|u|) / |u|`` with ``f(s) = asinh(s^q) / q`` (q = ``power``) on R^3; also
    log |det ∂w/∂u|.

    f is logarithmic far out (f(s) ≈ log s + log 2 / q). With q = 1 it is asinh, linear near 0
    and odd, so the map is smooth at the origin: the radial direction stretches by
    1/sqrt(1 + s^2), each tangential one by asinh(s)/s. With q < 1 it also opens up the centre
    (f ≈ s^q / q): a density cusp ρ ∝ r^-γ becomes ∝ |w|^(3 - γ - 3q) in w, flat for
    q = (3 - γ)/3 (2/3 for a Hernquist bulge's 1/r), where a flow can follow it; with q = 1 the
    flow sees the cusp itself and smooths it away.

    Example:
        >>> u = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
        >>> w, logdet = log_radial_expand(u)
        >>> [round(float(v), 6) for v in torch.linalg.vector_norm(w, dim=1)]
        [0.0, 2.312438]
        >>> bool(torch.allclose(log_radial_contract(w), u))
        True
        >>> w, logdet = log_radial_expand(u, power=2 / 3)
        >>> bool(torch.allclose(log_radial_contract(w, power=2 / 3), u))
        True
    """
    if power != 1.0:
        return _power_radial_expand(u, power)
    s2 = (u * u).sum(dim=-1, keepdim=True)
    small = s2 < _SMALL_S2
    # As in radial_expand: keep the unused branch finite for the gradient.
    s = torch.sqrt(torch.where(small, torch.full_like(s2, 0.25), s2))
    series = 1 - s2 / 6 + 3 * s2 * s2 / 40 - 5 * s2 * s2 * s2 / 112  # asinh(s)/s
    ratio = torch.where(small, series, torch.asinh(s) / s)
    log_ratio = torch.where(small, torch.log(series), torch.log(ratio))
    logdet = 2 * log_ratio - 0.5 * torch.log1p(s2)
    return u * ratio, logdet.squeeze(-1)


def _power_radial_expand(u: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """:func:`log_radial_expand` for q != 1 (w = 0 and an infinite log-det at u = 0)."""
    s = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    sq = s**q
    f = torch.asinh(sq) / q
    zero = s == 0
    safe = torch.where(zero, torch.ones_like(s), s)
    ratio = torch.where(zero, torch.zeros_like(s), f / safe)
    # log |det| = 2 log(f/s) + log f'(s), f'(s) = s^(q-1) / sqrt(1 + s^(2q))
    logdet = 2 * torch.log(f / safe) + (q - 1) * torch.log(safe) - 0.5 * torch.log1p(sq * sq)
    logdet = torch.where(zero, torch.full_like(s, math.inf), logdet)
    return u * ratio, logdet.squeeze(-1)


def log_radial_contract(w: Tensor, power: float = 1.0) -> Tensor:
    """Inverse of :func:`log_radial_expand`: ``u = w · sinh|w| / |w|`` (q = 1), else
    ``|u| = sinh(q |w|)^(1/q)``."""
    if power != 1.0:
        rho = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        s = torch.sinh(power * rho) ** (1.0 / power)
        zero = rho == 0
        return w * torch.where(zero, torch.zeros_like(rho), s / torch.where(zero, 1.0, rho))
    rho2 = (w * w).sum(dim=-1, keepdim=True)
    small = rho2 < _SMALL_S2
    rho = torch.sqrt(torch.where(small, torch.full_like(rho2, 0.25), rho2))
    series = 1 + rho2 / 6 + rho2 * rho2 / 120 + rho2 * rho2 * rho2 / 5040  # sinh(ρ)/ρ
    return w * torch.where(small, series, torch.sinh(rho) / rho)


@dataclass(frozen=True)
class PositionPreprocessing:
    """Positions → standardised R^3 (float64, invertible): the ball of radius ``r_max`` around
    ``centre`` (the paper's map), or with a ``scale`` the log-radial map about ``centre``
    (:meth:`fit_log_radial`; ``r_max`` is then infinite).

    Example:
        >>> pos = np.random.default_rng(1).uniform(-5, 5, (100, 3))
        >>> pre = PositionPreprocessing.fit(pos, centre=(0, 0, 0), radius=10.0)
        >>> logdet = pre.log_abs_det(torch.as_tensor(pos))   # log |det ∂y/∂r| per row
        >>> logdet.shape
        torch.Size([100])
        >>> PositionPreprocessing.from_dict(pre.to_dict()) == pre
        True
    """

    centre: tuple[float, float, float]
    r_max: float
    c: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float | None = None  # the log-radial map's scale a (kpc); None: the ball map
    power: float = 1.0  # the log-radial map's q (log_radial_expand)

    @classmethod
    def fit_log_radial(
        cls, pos: np.ndarray | Tensor, centre: Sequence[float] | np.ndarray, scale: float,
        power: float = 1.0,
    ) -> PositionPreprocessing:
        """Constants of the log-radial map about ``centre`` with scale ``scale`` (kpc) and
        power ``power`` (:func:`log_radial_expand`).

        Example:
            >>> pos = np.random.default_rng(1).standard_cauchy((500, 3))  # far-flung tails
            >>> pre = PositionPreprocessing.fit_log_radial(pos, (0, 0, 0), scale=1.0)
            >>> y = pre.forward(pos)
            >>> bool(torch.allclose(pre.inverse(y), torch.as_tensor(pos), rtol=1e-9))
            True
            >>> pre.r_max, PositionPreprocessing.from_dict(pre.to_dict()) == pre
            (inf, True)
        """
        pos64 = _as_f64(pos, torch.device("cpu"))
        centre3 = _vector(centre, "centre")
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"preprocessing: scale must be a positive number, got {scale!r}")
        if pos64.ndim != 2 or pos64.shape[1] != 3 or len(pos64) < 2:
            shape = tuple(pos64.shape)
            raise InputError(f"preprocessing: positions must be (n >= 2, 3), got {shape}")
        if not 0 < power <= 1:
            raise InputError(f"preprocessing: power must be in (0, 1], got {power!r}")
        u = (pos64 - torch.tensor(centre3, dtype=torch.float64)) / scale
        w, _ = log_radial_expand(u, power)
        mean, std = _standardisation(w.numpy(), "log-radial positions")
        return cls(centre3, math.inf, 1.0, mean, std, float(scale),  # type: ignore[arg-type]
                   float(power))

    @classmethod
    def fit(
        cls,
        pos: np.ndarray | Tensor,
        centre: Sequence[float] | np.ndarray,
        radius: float,
        c: float = 1.000001,
    ) -> PositionPreprocessing:
        """Constants for training positions ``pos`` (n, 3) in the ball (``centre``, ``radius``)."""
        pos64 = _as_f64(pos, torch.device("cpu"))
        centre3 = _vector(centre, "centre")
        if not (math.isfinite(radius) and radius > 0):
            raise InputError(f"preprocessing: radius must be a positive number, got {radius!r}")
        if not c > 1:
            raise InputError(f"preprocessing: c must be > 1, got {c!r}")
        if pos64.ndim != 2 or pos64.shape[1] != 3 or len(pos64) < 2:
            shape = tuple(pos64.shape)
            raise InputError(f"preprocessing: positions must be (n >= 2, 3), got {shape}")
        dist = torch.linalg.vector_norm(pos64 - torch.tensor(centre3, dtype=torch.float64), dim=1)
        if float(dist.max()) > radius:
            raise InputError(
                f"preprocessing: a position lies {float(dist.max())!r} from the centre {centre3}, "
                f"outside the region's radius {radius!r}"
            )
        u = (pos64 - torch.tensor(centre3, dtype=torch.float64)) / (radius * c)
        w, _ = radial_expand(u)
        mean, std = _standardisation(w.numpy(), "expanded positions")
        return cls(centre3, float(radius), float(c), mean, std)  # type: ignore[arg-type]

    def _constants(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kw = {"dtype": torch.float64, "device": like.device}
        return torch.tensor(self.centre, **kw), torch.tensor(self.mean, **kw), torch.tensor(
            self.std, **kw
        )

    def forward(self, pos: Tensor | np.ndarray) -> Tensor:
        """Physical positions (n, 3) → preprocessed (n, 3), float64."""
        return self.forward_and_log_abs_det(pos)[0]

    def forward_and_log_abs_det(self, pos: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """``(y, log |det ∂y/∂r|)``; both non-finite for positions outside the ball."""
        pos = _as_f64(pos)
        centre, mean, std = self._constants(pos)
        if self.scale is not None:
            scale = self.scale
            w, logdet = log_radial_expand((pos - centre) / scale, self.power)
        else:
            scale = self.r_max * self.c
            w, logdet = radial_expand((pos - centre) / scale)
        logdet = logdet - 3 * math.log(scale) - torch.log(std).sum()
        return (w - mean) / std, logdet

    def log_abs_det(self, pos: Tensor | np.ndarray) -> Tensor:
        """log |det ∂y/∂r| per row (n,), float64."""
        return self.forward_and_log_abs_det(pos)[1]

    def inverse(self, y: Tensor | np.ndarray) -> Tensor:
        """Preprocessed (n, 3) → physical positions (n, 3), float64 (offset added in float64)."""
        y = _as_f64(y)
        centre, mean, std = self._constants(y)
        if self.scale is not None:
            return log_radial_contract(y * std + mean, self.power) * self.scale + centre
        return radial_contract(y * std + mean) * (self.r_max * self.c) + centre

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready constants (floats round-trip exactly through JSON)."""
        if self.scale is not None:
            return {"map": "log-radial", "centre": list(self.centre), "scale_kpc": self.scale,
                    "power": self.power, "mean": list(self.mean), "std": list(self.std)}
        return {
            "centre": list(self.centre),
            "r_max": self.r_max,
            "c": self.c,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PositionPreprocessing:
        if data.get("map", "ball") == "log-radial":
            return cls(centre=_vector(data["centre"], "centre"), r_max=math.inf, c=1.0,
                       mean=_vector(data["mean"], "mean"), std=_vector(data["std"], "std"),
                       scale=float(data["scale_kpc"]), power=float(data.get("power", 1.0)))
        return cls(
            centre=_vector(data["centre"], "centre"),
            r_max=float(data["r_max"]),
            c=float(data["c"]),
            mean=_vector(data["mean"], "mean"),
            std=_vector(data["std"], "std"),
        )


@dataclass(frozen=True)
class VelocityPreprocessing:
    """Standardisation of velocities: ``y = (v − μ) / σ`` per component (float64).

    Example:
        >>> vel = np.random.default_rng(2).normal(0, 40, (100, 3))
        >>> pre = VelocityPreprocessing.fit(vel)
        >>> torch.allclose(pre.inverse(pre.forward(vel)), torch.as_tensor(vel))
        True
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def fit(cls, vel: np.ndarray | Tensor) -> VelocityPreprocessing:
        vel64 = _as_f64(vel, torch.device("cpu"))
        if vel64.ndim != 2 or vel64.shape[1] != 3 or len(vel64) < 2:
            shape = tuple(vel64.shape)
            raise InputError(f"preprocessing: velocities must be (n >= 2, 3), got {shape}")
        mean, std = _standardisation(vel64.numpy(), "velocities")
        return cls(mean, std)  # type: ignore[arg-type]

    def _constants(self, like: Tensor) -> tuple[Tensor, Tensor]:
        kw = {"dtype": torch.float64, "device": like.device}
        return torch.tensor(self.mean, **kw), torch.tensor(self.std, **kw)

    def forward(self, vel: Tensor | np.ndarray) -> Tensor:
        vel = _as_f64(vel)
        mean, std = self._constants(vel)
        return (vel - mean) / std

    def inverse(self, y: Tensor | np.ndarray) -> Tensor:
        y = _as_f64(y)
        mean, std = self._constants(y)
        return y * std + mean

    def log_abs_det(self) -> float:
        """log |det ∂y/∂v| (a constant: −Σ log σ)."""
        return -sum(math.log(s) for s in self.std)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VelocityPreprocessing:
        return cls(mean=_vector(data["mean"], "mean"), std=_vector(data["std"], "std"))
