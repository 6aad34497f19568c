"""One region's phase-space density f(r, v) = p(r) · p(v | r) in physical units.

A :class:`PhaseSpaceFlow` joins the preprocessors, a position flow and a velocity flow
conditioned on the preprocessed position. ``log_prob`` converts densities back to physical units
with the preprocessing Jacobians; ``sample`` draws base normals, integrates, inverts the
preprocessing in float64 and rejects stars outside the region's ball (|r − r_c| > r_max) or
faster than the training sample's maximum speed v_max, drawing more until ``n`` are accepted.

``log_prob`` is the flow density before that truncation: it integrates to one over the ball
and all velocities; the rejection rate is the mass the truncation removes.

Example:
    >>> from galmock.flows.families import NetworkOptions, build_flow
    >>> rng = np.random.default_rng(0)
    >>> train = rng.uniform(-3, 3, (2000, 3))
    >>> train = train[np.linalg.norm(train, axis=1) < 3]
    >>> train_vel = rng.normal(0, 30, train.shape)
    >>> net = NetworkOptions(hidden_features=8, hidden_layers=1, activation="gelu")
    >>> model = PhaseSpaceFlow(build_flow("nsf", 3, 0, net), build_flow("nsf", 3, 3, net),
    ...                        PositionPreprocessing.fit(train, (0, 0, 0), 3.0),
    ...                        VelocityPreprocessing.fit(train_vel), v_max=100.0)
    >>> pos, vel, rejected = model.sample(10_000, torch.Generator().manual_seed(1))
    >>> pos.dtype, 0 <= rejected < 1
    (torch.float64, True)
    >>> bool((torch.linalg.vector_norm(pos, dim=1) <= 3).all())
    True
    >>> logp = model.log_prob(pos, vel)     # (n,) float64, per kpc^3 (km/s)^3
    >>> logp.shape, logp.dtype
    (torch.Size([10000]), torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from galmock.errors import InputError
from galmock.flows.base import DensityFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.flows.radial import RadialCalibration

# Stop rejection sampling if fewer than this fraction of proposals survive: the model is broken
# (or v_max absurd) and looping on would never finish.
MIN_ACCEPTANCE = 1e-3


class PhaseSpaceFlow(nn.Module):
    """Position flow p(r) and conditional velocity flow p(v | r) with their preprocessing.

    ``chunk_rows`` and ``compile`` only steer the sampler's speed, not its results. ``radial``
    (:mod:`galmock.flows.radial`) moves the position flow's draws along their radius after the
    preprocessing's inverse; the velocity flow is conditioned on the flow's own coordinates, so
    it was trained on ``position_pre.forward(radial.inverse(r))`` of each particle.
    """

    def __init__(
        self,
        position: DensityFlow,
        velocity: DensityFlow,
        position_pre: PositionPreprocessing,
        velocity_pre: VelocityPreprocessing,
        v_max: float,
        chunk_rows: int = 16384,
        compile: bool = False,
        radial: RadialCalibration | None = None,
    ) -> None:
        super().__init__()
        if position.features != 3 or position.context != 0:
            raise ValueError("the position flow must be 3-D and unconditional")
        if velocity.features != 3 or velocity.context != 3:
            raise ValueError("the velocity flow must be 3-D conditioned on a 3-D position")
        if not (math.isfinite(v_max) and v_max > 0):
            raise InputError(f"v_max must be a positive number, got {v_max!r}")
        self.position = position
        self.velocity = velocity
        self.position_pre = position_pre
        self.velocity_pre = velocity_pre
        self.v_max = float(v_max)
        self.chunk_rows = int(chunk_rows)
        self.compile = bool(compile)
        self.radial = radial

    @property
    def kind(self) -> str:
        return self.position.kind

    @property
    def centre(self) -> tuple[float, float, float]:
        return self.position_pre.centre

    @property
    def r_max(self) -> float:
        return self.position_pre.r_max

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def log_prob(self, pos: Tensor | np.ndarray, vel: Tensor | np.ndarray) -> Tensor:
        """log f(r, v) in physical units (log of 1 / (length^3 velocity^3)), float64, (n,).

        −inf outside the ball. Evaluated without a gradient graph, in chunks of ``chunk_rows``.
        """
        pos = torch.as_tensor(pos).to(self.device, torch.float64)
        vel = torch.as_tensor(vel).to(self.device, torch.float64)
        out = torch.empty(pos.shape[0], dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for start in range(0, pos.shape[0], self.chunk_rows):
                sl = slice(start, start + self.chunk_rows)
                out[sl] = self._log_prob_chunk(pos[sl], vel[sl])
        return out

    def _log_prob_chunk(self, pos: Tensor, vel: Tensor) -> Tensor:
        logdet_c = 0.0
        if self.radial is not None:
            pos, logdet_c = self.radial.inverse_and_log_abs_det(pos)
        y, logdet_r = self.position_pre.forward_and_log_abs_det(pos)
        logdet_r = logdet_r + logdet_c
        inside = torch.isfinite(logdet_r) & torch.isfinite(y).all(dim=1)
        # Rows outside the ball would put NaN through the networks; evaluate them at 0 instead.
        y = torch.where(inside[:, None], y, torch.zeros_like(y)).to(self.dtype)
        yv = self.velocity_pre.forward(vel).to(self.dtype)
        logp = self.position.log_prob(y).double() + self.velocity.log_prob(yv, y).double()
        logp = logp + logdet_r + self.velocity_pre.log_abs_det()
        return torch.where(inside, logp, torch.full_like(logp, -math.inf))

    def propose(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws from the untruncated flow: positions and velocities, float64."""
        z = _normals(2 * n, generator, self.device, self.dtype)
        opts = {"chunk_rows": self.chunk_rows, "compile": self.compile}
        y = self.position.generate(z[:n], **opts)
        yv = self.velocity.generate(z[n:], y, **opts)
        pos = self.position_pre.inverse(y)
        if self.radial is not None:
            pos = self.radial.forward(pos)
        return pos, self.velocity_pre.inverse(yv)

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, float]:
        """``n`` stars within the ball and below v_max: ``(pos, vel, rejection_rate)``.

        Memory is O(n) (inputs and outputs; the flows work in ``chunk_rows`` chunks): draw a
        catalog of 10^9 stars as a series of calls with ~10^6–10^7 stars each.
        """
        (pos, vel), rate = rejection_sample(
            lambda m: self.propose(m, generator), n, self.centre, self.r_max, self.v_max
        )
        return pos, vel, rate


def _normals(
    n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    # Draw where the generator lives (a CPU generator can feed a CUDA model), then move.
    where = generator.device if generator is not None else device
    return torch.randn(n, 3, generator=generator, device=where, dtype=dtype).to(device)


def rejection_sample(
    propose: Callable[[int], tuple[Tensor, ...]],
    n: int,
    centre: tuple[float, float, float],
    r_max: float,
    v_max: float,
) -> tuple[tuple[Tensor, ...], float]:
    """Accept proposals with |pos − centre| <= r_max and |vel| <= v_max until ``n`` remain.

    ``propose(m)`` returns ``(pos, vel, *extra)`` with m rows; ``extra`` columns (e.g. the
    ensemble member) are filtered alongside. Returns the first ``n`` accepted rows of each and
    the rejection rate (rejected / proposed).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    kept: list[tuple[Tensor, ...]] = []
    got = proposed = 0
    acceptance = 1.0
    while got < n:
        # Ask for what is missing, inflated by the acceptance seen so far (+ a few spare rows).
        # Capped so that one bad round cannot ask for an absurd batch.
        m = min(math.ceil((n - got) / acceptance * 1.02) + 16, 20 * (n - got) + 4096)
        batch = propose(m)
        pos, vel = batch[0], batch[1]
        centre_t = torch.tensor(centre, dtype=pos.dtype, device=pos.device)
        ok = (torch.linalg.vector_norm(pos - centre_t, dim=1) <= r_max) & (
            torch.linalg.vector_norm(vel, dim=1) <= v_max
        )
        kept.append(tuple(t[ok] for t in batch))
        got += int(ok.sum())
        proposed += m
        acceptance = max(got / proposed, MIN_ACCEPTANCE)
        if got / proposed < MIN_ACCEPTANCE and proposed > 10_000:
            raise InputError(
                f"sampling: only {got} of {proposed} proposals lie within r_max = {r_max} of "
                f"{centre} and below v_max = {v_max}; the flow does not describe this region"
            )
    if not kept:  # n == 0: one tiny proposal gives correctly typed empty columns
        kept.append(tuple(t[:0] for t in propose(1)))
    columns = tuple(torch.cat(parts)[:n] for parts in zip(*kept))
    return columns, (proposed - got) / proposed if proposed else 0.0
