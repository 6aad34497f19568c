"""An equal-weight mixture of K phase-space flows trained with different seeds (GalaxyFlow §3.3).

The ensemble density is the mean of the members' densities, evaluated stably as
``logsumexp_k log f_k − log K``; sampling draws each proposal from a uniformly chosen member and
then applies the region's rejection, i.e. it samples the truncated mixture exactly.

Example:
    >>> from galmock.flows.families import NetworkOptions, build_flow
    >>> from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
    >>> rng = np.random.default_rng(0)
    >>> pos = rng.uniform(-1, 1, (500, 3))
    >>> pos, vel = pos[np.linalg.norm(pos, axis=1) < 1], rng.normal(0, 1, (500, 3))
    >>> net = NetworkOptions(hidden_features=8, hidden_layers=1, activation="gelu")
    >>> def member():
    ...     return PhaseSpaceFlow(build_flow("maf", 3, 0, net), build_flow("maf", 3, 3, net),
    ...                           PositionPreprocessing.fit(pos, (0, 0, 0), 1.0),
    ...                           VelocityPreprocessing.fit(vel), v_max=5.0)
    >>> ensemble = FlowEnsemble([member(), member()])
    >>> pos, vel, rejected = ensemble.sample(10_000, torch.Generator().manual_seed(0))
    >>> ensemble.log_prob(pos, vel).shape
    torch.Size([10000])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from galmock.flows.phase_space import PhaseSpaceFlow, rejection_sample


class FlowEnsemble(nn.Module):
    """Mixture of :class:`PhaseSpaceFlow` members sharing one region (centre, r_max, v_max).

    ``metadata`` carries the artifact manifest when the ensemble was loaded from one.
    """

    def __init__(
        self, members: Sequence[PhaseSpaceFlow], metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            same = (m.centre, m.r_max, m.v_max, m.kind) == (
                first.centre, first.r_max, first.v_max, first.kind
            )
            if not same:
                raise ValueError(f"ensemble member {k} has a different region or kind than 0")
        self.members = nn.ModuleList(members)
        self.metadata = dict(metadata or {})

    def __len__(self) -> int:
        return len(self.members)

    def _first(self) -> PhaseSpaceFlow:
        return self.members[0]  # type: ignore[return-value]

    @property
    def kind(self) -> str:
        return self._first().kind

    @property
    def centre(self) -> tuple[float, float, float]:
        return self._first().centre

    @property
    def r_max(self) -> float:
        return self._first().r_max

    @property
    def v_max(self) -> float:
        return self._first().v_max

    @property
    def device(self) -> torch.device:
        return self._first().device

    def configure(self, chunk_rows: int | None = None, compile: bool | None = None) -> None:
        """Set the sampler's chunk size and torch.compile flag on every member."""
        for m in self.members:
            if chunk_rows is not None:
                m.chunk_rows = int(chunk_rows)
            if compile is not None:
                m.compile = bool(compile)

    def member_log_probs(self, pos: Tensor | np.ndarray, vel: Tensor | np.ndarray) -> Tensor:
        """(K, n) float64: each member's log f(r, v)."""
        return torch.stack([m.log_prob(pos, vel) for m in self.members])

    def log_prob(self, pos: Tensor | np.ndarray, vel: Tensor | np.ndarray) -> Tensor:
        """log of the mean member density, (n,) float64 (−inf outside the ball)."""
        return torch.logsumexp(self.member_log_probs(pos, vel), dim=0) - math.log(len(self))

    def propose(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` untruncated draws from the mixture: ``(pos, vel, member)``."""
        where = generator.device if generator is not None else torch.device("cpu")
        member = torch.randint(len(self), (n,), generator=generator, device=where).cpu()
        pos = torch.empty(n, 3, dtype=torch.float64, device=self.device)
        vel = torch.empty_like(pos)
        for k, m in enumerate(self.members):
            rows = torch.nonzero(member == k).squeeze(1).to(self.device)
            if len(rows):
                pos[rows], vel[rows] = m.propose(len(rows), generator)
        return pos, vel, member.to(self.device)

    def sample_with_members(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, float]:
        """Like :meth:`sample`, plus each star's member index (int64)."""
        (pos, vel, member), rate = rejection_sample(
            lambda m: self.propose(m, generator), n, self.centre, self.r_max, self.v_max
        )
        return pos, vel, member, rate

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, float]:
        """``n`` stars: ``(pos float64 (n, 3), vel float64 (n, 3), rejection_rate)``."""
        pos, vel, _, rate = self.sample_with_members(n, generator)
        return pos, vel, rate
