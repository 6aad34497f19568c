r"""Radial calibration: a monotone map of galactocentric radius that gives a region's position
flow the radial distribution of its training particles.

A position flow trained by flow matching follows the bulk of a region's particles closely but
pulls a sparse outer tail in: its loss weighs each place by how many particles are there, and
the few beyond the disk hardly count. On the demo galaxy every outer region's stars were 1.7-1.9×
too many at 20-30 kpc and 0.3× too few at 70-100 kpc, whatever the RK4 step count or the
log-radial power; three times the epochs only halved the error.

The calibration is the one-dimensional optimal transport between the flow's radii and the
particles': ``R(r) = F_particles^{-1}(F_flow(r))``, applied about the galaxy centre,
``x' = c + (x − c) R(r) / r``. It moves stars along their radius only, keeping the flow's
angular structure, and it is a bijection of R^3 with an exact Jacobian,
``|det ∂x'/∂x| = R'(r) (R / r)^2``, so flow and calibration together are still a normalising
flow with an exact density (:class:`galmock.flows.phase_space.PhaseSpaceFlow` applies it after
the position preprocessing's inverse).

``h = log R`` as a function of ``log r`` passes through knots at matching quantiles of the two
radius samples: :func:`quantile_levels` spaces them evenly in the bulk and geometrically into
both tails, down to ``min_tail`` particles beyond the last. Between knots ``h`` is a monotone
cubic Hermite spline (Fritsch & Butland 1984 slopes: continuous derivative, so the calibrated
density has no steps at the knots); beyond the end knots it continues linearly, a power law.

References:
    Fritsch & Butland (1984), "A method for constructing local monotone piecewise cubic
    interpolants", SIAM J. Sci. Stat. Comput. 5, 300.

Example:
    >>> rng = np.random.default_rng(0)
    >>> particles = rng.standard_normal((20_000, 3)) * 2.0        # the radii to reproduce
    >>> model = rng.standard_normal((80_000, 3))                  # a flow too compact by 2x
    >>> cal = RadialCalibration.fit(np.linalg.norm(model, axis=1),
    ...                             np.linalg.norm(particles, axis=1), (0.0, 0.0, 0.0))
    >>> x = torch.as_tensor(model)
    >>> moved = cal.forward(x)
    >>> ratio = torch.linalg.vector_norm(moved, dim=1) / torch.linalg.vector_norm(x, dim=1)
    >>> round(float(ratio.median()), 2)
    2.0
    >>> back, logdet = cal.inverse_and_log_abs_det(moved)
    >>> bool(torch.allclose(back, x, rtol=1e-12, atol=1e-12))
    True
    >>> RadialCalibration.from_dict(cal.to_dict()) == cal
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from galmock.errors import InputError

# Quantile levels evenly spaced in the bulk (1/32 of the particles between knots: a knot's
# radius is then known to ~0.3% of the mass for 40k particles) ...
BULK_LEVELS = 32
# ... and halving into each tail until this many particles lie beyond the last knot.
MIN_TAIL_PARTICLES = 5
# Bisection steps of the inverse within a knot interval: 2^-60 of the interval, below float64.
_BISECTION_STEPS = 60


def quantile_levels(n: float, bulk: int = BULK_LEVELS, min_tail: float = MIN_TAIL_PARTICLES
                    ) -> np.ndarray:
    """Quantile levels for ``n`` particles: ``j / bulk`` and ``2^-k / bulk`` from both ends,
    keeping those with at least ``min_tail`` particles beyond them.

    Example:
        >>> levels = quantile_levels(1000, bulk=4, min_tail=5)
        >>> levels[:7].tolist()
        [0.0078125, 0.015625, 0.03125, 0.0625, 0.125, 0.25, 0.5]
        >>> bool(1000 * (1 - levels[-1]) >= 5), len(levels)
        (True, 13)
    """
    tail = 0.5 ** np.arange(1, 64) / bulk
    levels = np.concatenate([np.arange(1, bulk) / bulk, tail, 1.0 - tail])
    levels = levels[n * np.minimum(levels, 1.0 - levels) >= min_tail]
    return np.unique(levels)


def weighted_quantiles(values: np.ndarray, levels: np.ndarray,
                       weight: np.ndarray | None = None) -> np.ndarray:
    """Quantiles of ``values`` (with ``weight``) at ``levels``: the weighted empirical CDF at
    the mid-points of each value's weight, interpolated linearly (``np.quantile``'s Hazen
    definition when the weights are equal)."""
    order = np.argsort(values, kind="stable")
    v = np.asarray(values, dtype=np.float64)[order]
    w = np.ones(len(v)) if weight is None else np.asarray(weight, dtype=np.float64)[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(levels, cdf, v)


def _monotone_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Butland slopes at knots with increasing ``x`` and ``y``: the weighted harmonic
    mean of the neighbouring secants inside (positive, at most 3x either secant, so every
    Hermite piece is monotone), the end secant at the ends."""
    h, delta = np.diff(x), np.diff(y) / np.diff(x)
    d = np.empty(len(x))
    d[0], d[-1] = delta[0], delta[-1]
    h0, h1, s0, s1 = h[:-1], h[1:], delta[:-1], delta[1:]
    d[1:-1] = 3 * (h0 + h1) / ((2 * h1 + h0) / s0 + (h1 + 2 * h0) / s1)
    return d


@dataclass(frozen=True)
class RadialCalibration:
    r"""The monotone radial map ``log r -> log R`` about ``centre`` (module docstring).

    Arguments:
        centre: the galaxy centre (kpc) the radii are measured from.
        log_r_model: knots in log radius of the model (the flow), increasing.
        log_r: the calibrated log radii at those knots, increasing.
        slope: d log R / d log r at the knots, positive.
    """

    centre: tuple[float, float, float]
    log_r_model: tuple[float, ...]
    log_r: tuple[float, ...]
    slope: tuple[float, ...]

    @classmethod
    def fit(
        cls,
        model_radii: np.ndarray,
        radii: np.ndarray,
        centre: Sequence[float],
        weight: np.ndarray | None = None,
    ) -> RadialCalibration | None:
        r"""The calibration that carries ``model_radii`` (draws from the flow) to ``radii``
        (the training particles', with training ``weight``); ``None`` when there are too few
        particles for two knots.

        The particles set the levels (:func:`quantile_levels` of their effective count
        ``(Σw)^2 / Σw^2``); draw several times more model radii than there are particles, so
        the model's own quantiles add little noise.
        """
        radii = np.asarray(radii, dtype=np.float64)
        model_radii = np.asarray(model_radii, dtype=np.float64)
        n = len(radii) if weight is None else float(np.sum(weight) ** 2 / np.sum(
            np.square(weight, dtype=np.float64)))
        levels = quantile_levels(n)
        if len(levels) < 2:
            return None
        x = np.log(np.quantile(model_radii[model_radii > 0], levels))
        y = np.log(weighted_quantiles(radii, levels, weight))
        # Strictly increasing knots (ties from repeated radii would make the map singular).
        keep = [0]
        for k in range(1, len(x)):
            if x[k] > x[keep[-1]] and y[k] > y[keep[-1]]:
                keep.append(k)
        if len(keep) < 2:
            return None
        x, y = x[keep], y[keep]
        c = tuple(float(v) for v in centre)
        return cls(c, tuple(map(float, x)), tuple(map(float, y)),  # type: ignore[arg-type]
                   tuple(map(float, _monotone_slopes(x, y))))

    # -- the map h(log r) and its inverse ---------------------------------------------------

    def _knots(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kw = {"dtype": torch.float64, "device": like.device}
        return (torch.tensor(self.log_r_model, **kw), torch.tensor(self.log_r, **kw),
                torch.tensor(self.slope, **kw))

    def _h(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        """``(h(lr), h'(lr))`` for log radii ``lr``."""
        x, y, d = self._knots(lr)
        i = (torch.searchsorted(x, lr) - 1).clamp(0, len(x) - 2)
        x0, dx = x[i], x[i + 1] - x[i]
        t = (lr - x0) / dx
        h, dh = _hermite(t, y[i], y[i + 1], d[i] * dx, d[i + 1] * dx)
        below, above = lr < x[0], lr > x[-1]
        h = torch.where(below, y[0] + d[0] * (lr - x[0]), h)
        h = torch.where(above, y[-1] + d[-1] * (lr - x[-1]), h)
        slope = torch.where(below, d[0], torch.where(above, d[-1], dh / dx))
        return h, slope

    def _h_inverse(self, lR: Tensor) -> Tensor:
        """``log r`` with ``h(log r) = lR`` (bisection inside the knots, exact outside)."""
        x, y, d = self._knots(lR)
        i = (torch.searchsorted(y, lR) - 1).clamp(0, len(y) - 2)
        dx = x[i + 1] - x[i]
        lo, hi = torch.zeros_like(lR), torch.ones_like(lR)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            value, _ = _hermite(mid, y[i], y[i + 1], d[i] * dx, d[i + 1] * dx)
            low = value < lR
            lo, hi = torch.where(low, mid, lo), torch.where(low, hi, mid)
        lr = x[i] + 0.5 * (lo + hi) * dx
        lr = torch.where(lR < y[0], x[0] + (lR - y[0]) / d[0], lr)
        return torch.where(lR > y[-1], x[-1] + (lR - y[-1]) / d[-1], lr)

    # -- the map on R^3 -----------------------------------------------------------------------

    def _split(self, pos: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """``(pos − centre, radius, centre)`` in float64 on ``pos``'s device."""
        pos = torch.as_tensor(pos).to(torch.float64)
        centre = torch.tensor(self.centre, dtype=torch.float64, device=pos.device)
        offset = pos - centre
        r = torch.linalg.vector_norm(offset, dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
        return offset, r, centre

    def forward(self, pos: Tensor | np.ndarray) -> Tensor:
        """Model positions (n, 3) → calibrated positions, float64."""
        return self.forward_and_log_abs_det(pos)[0]

    def forward_and_log_abs_det(self, pos: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """``(x', log |det ∂x'/∂x|)``, with ``log |det| = log h' + 3 (log R − log r)``."""
        offset, r, centre = self._split(pos)
        lr = torch.log(r)
        h, slope = self._h(lr)
        return (centre + offset * torch.exp(h - lr)[:, None],
                torch.log(slope) + 3 * (h - lr))

    def inverse_and_log_abs_det(self, pos: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """``(x, log |det ∂x/∂x'|)`` for calibrated positions ``x'``: what a density in model
        positions needs to become one in calibrated positions."""
        offset, R, centre = self._split(pos)
        lR = torch.log(R)
        lr = self._h_inverse(lR)
        _, slope = self._h(lr)
        return (centre + offset * torch.exp(lr - lR)[:, None],
                -(torch.log(slope) + 3 * (lR - lr)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready knots (floats round-trip exactly through JSON)."""
        return {"centre": list(self.centre), "log_r_model": list(self.log_r_model),
                "log_r": list(self.log_r), "slope": list(self.slope)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RadialCalibration:
        """Read :meth:`to_dict`'s output back, checked: equal lengths (at least 2), increasing
        knots, positive finite slopes; else :class:`InputError` naming the problem."""
        try:
            centre = tuple(float(v) for v in data["centre"])
            x, y, d = (tuple(float(v) for v in data[k]) for k in ("log_r_model", "log_r",
                                                                   "slope"))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"radial calibration: malformed ({type(err).__name__}: {err})"
                             ) from None
        values = np.array([x, y, d]) if len(x) == len(y) == len(d) else None
        if len(centre) != 3 or values is None or len(x) < 2:
            raise InputError("radial calibration: needs a 3-vector centre and equally many "
                             f"(>= 2) knots, got {len(centre)}, {len(x)}, {len(y)}, {len(d)}")
        if not (np.isfinite(values).all() and (np.diff(values[0]) > 0).all()
                and (np.diff(values[1]) > 0).all() and (values[2] > 0).all()):
            raise InputError("radial calibration: knots must increase and slopes be positive "
                             "and finite")
        return cls(centre, x, y, d)  # type: ignore[arg-type]


def _hermite(t: Tensor, y0: Tensor, y1: Tensor, m0: Tensor, m1: Tensor) -> tuple[Tensor, Tensor]:
    """Cubic Hermite piece on t in [0, 1] with end values y0, y1 and end tangents m0, m1 (per
    unit t): its value and d/dt."""
    t2 = t * t
    t3 = t2 * t
    value = ((2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * m0 + (-2 * t3 + 3 * t2) * y1
             + (t3 - t2) * m1)
    deriv = (6 * t2 - 6 * t) * (y0 - y1) + (3 * t2 - 4 * t + 1) * m0 + (3 * t2 - 2 * t) * m1
    return value, deriv

