"""The GalacticFlow architecture (Wolf & Buck 2023): a conditional neural-spline coupling flow.

Each of ``layers`` blocks is an invertible 1×1 convolution (an LU-parameterised linear map
with a fixed permutation, Glow) followed by a *double* rational-quadratic spline coupling: the
second half of the features is transformed with spline parameters computed from the first
half, then the first half with parameters from the new second half, so one block changes every
feature and both directions need one network pass each. A condition (the host galaxy's global
parameters) enters by multiplying the output of a condition network with the coupling
network's output (Wolf & Buck §2, following [23] there). The splines are zuko's
:class:`~zuko.transforms.MonotonicRQSTransform` (K bins on [-B, B], identity outside).

Direction convention as everywhere in galmock: ``log_prob`` maps data → base normals,
``generate`` maps base normals → data.

It is not a ``flows.kind`` family (it models galaxies, not regions): the galaxy model builds it
from ``suite`` options (:class:`~galmock.flows.galaxy_training.GalaxyFlowOptions`).

Example:
    >>> flow = ConditionalNSF(features=9, context=4, layers=2, hidden_features=16,
    ...                       hidden_layers=1, bins=4)
    >>> x, c = torch.randn(10, 9), torch.randn(10, 4)
    >>> flow.log_prob(x, context=c).shape        # x: (n, 9), c: (n, 4)
    torch.Size([10])
    >>> c1000 = torch.zeros(1000, 4)
    >>> flow.sample(1000, context=c1000, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([1000, 9])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

from galmock.flows.base import ACTIVATIONS, DensityFlow, standard_normal_log_prob


def _mlp(inputs: int, outputs: int, hidden: int, layers: int, activation: str) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    mods.append(nn.Linear(width, outputs))
    return nn.Sequential(*mods)


class LUConv(nn.Module):
    """Invertible 1×1 convolution ``y = W x`` with ``W = P L (U + diag(s e^{log|d|}))``.

    P is a fixed permutation and the signs ``s`` are fixed (buffers, from the LU decomposition
    of a random rotation at initialisation, as in Glow); L is unit lower-triangular, U strictly
    upper-triangular, so log |det W| = Σ log|d|.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(features, features, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("permutation", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_diag = nn.Parameter(diag.abs().log().float())

    def weight(self) -> Tensor:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * self.log_diag.exp())
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(W x, log|det W|)`` per row."""
        return x @ self.weight().T, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return torch.linalg.solve(self.weight(), y.T).T


class ConditionedSplineCoupling(nn.Module):
    """Spline parameters for ``out`` features from ``inp`` features and a condition:
    ``net(inp) * cond_net(condition)`` (a plain ``net(inp)`` when there is no condition)."""

    def __init__(self, inp: int, out: int, context: int, bins: int, hidden: int, layers: int,
                 activation: str, bound: float) -> None:
        super().__init__()
        self.out, self.bins, self.bound = out, bins, bound
        n_params = out * (3 * bins - 1)
        self.net = _mlp(inp, n_params, hidden, layers, activation)
        self.cond_net = _mlp(context, n_params, hidden, layers, activation) if context else None

    def spline(self, inp: Tensor, context: Tensor | None) -> MonotonicRQSTransform:
        params = self.net(inp)
        if self.cond_net is not None:
            if context.shape[0] > 1 and context.stride(0) == 0:
                # One galaxy's condition broadcast to every row (sampling): evaluate it once.
                params = params * self.cond_net(context[:1])
            else:
                params = params * self.cond_net(context)
        params = params.reshape(*params.shape[:-1], self.out, 3 * self.bins - 1)
        widths, heights, derivs = params.split((self.bins, self.bins, self.bins - 1), dim=-1)
        return MonotonicRQSTransform(widths, heights, derivs, bound=self.bound)


class ConditionalNSF(DensityFlow):
    """Conditional RQS coupling flow with 1×1 convolutions and double coupling (GalacticFlow).

    Defaults are the paper's: 14 blocks, K = 10 bins, coupling networks of 3 × 128.
    """

    kind = "galacticflow"

    def __init__(
        self,
        features: int,
        context: int = 0,
        layers: int = 14,
        hidden_features: int = 128,
        hidden_layers: int = 3,
        bins: int = 10,
        bound: float = 5.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(features, context)
        if features < 2:
            raise ValueError("a coupling flow needs at least 2 features")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (known: {sorted(ACTIVATIONS)})")
        self.layers = int(layers)
        self.hidden_features = int(hidden_features)
        self.hidden_layers = int(hidden_layers)
        self.bins = int(bins)
        self.bound = float(bound)
        self.activation = activation
        self.split = features // 2
        a, b = self.split, features - self.split
        opts = dict(context=context, bins=self.bins, hidden=self.hidden_features,
                    layers=self.hidden_layers, activation=activation, bound=self.bound)
        self.convs = nn.ModuleList(LUConv(features) for _ in range(self.layers))
        # first: b from a; second: a from the new b (the "double coupling").
        self.first = nn.ModuleList(ConditionedSplineCoupling(a, b, **opts)  # type: ignore[arg-type]
                                   for _ in range(self.layers))
        self.second = nn.ModuleList(ConditionedSplineCoupling(b, a, **opts)  # type: ignore[arg-type]
                                    for _ in range(self.layers))

    def transform(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data → base: ``(z, log|det ∂z/∂x|)`` per row."""
        self._check_context(x, context)
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for conv, first, second in zip(self.convs, self.first, self.second, strict=True):
            x, ld = conv(x)
            logdet = logdet + ld
            xa, xb = x[:, : self.split], x[:, self.split :]
            xb, ld = first.spline(xa, context).call_and_ladj(xb)
            logdet = logdet + ld.sum(dim=-1)
            xa, ld = second.spline(xb, context).call_and_ladj(xa)
            logdet = logdet + ld.sum(dim=-1)
            x = torch.cat([xa, xb], dim=-1)
        return x, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Base → data (the exact inverse of :meth:`transform`)."""
        self._check_context(z, context)
        for conv, first, second in zip(reversed(self.convs), reversed(self.first),
                                       reversed(self.second), strict=True):
            za, zb = z[:, : self.split], z[:, self.split :]
            za = second.spline(zb, context).inv(za)
            zb = first.spline(za, context).inv(zb)
            z = conv.inverse(torch.cat([za, zb], dim=-1))
        return z

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        z, logdet = self.transform(x, context)
        return standard_normal_log_prob(z) + logdet

    def generate(
        self,
        z: Tensor,
        context: Tensor | None = None,
        chunk_rows: int = 16384,
        compile: bool = False,  # a coupling pass is a few matmuls: nothing to compile
    ) -> Tensor:
        self._check_context(z, context)
        param = next(self.parameters())
        out = torch.empty(z.shape, dtype=param.dtype, device=param.device)
        with torch.no_grad():
            for start in range(0, z.shape[0], chunk_rows):
                sl = slice(start, start + chunk_rows)
                c = None if context is None else context[sl].to(param.device, param.dtype)
                out[sl] = self.inverse(z[sl].to(param.device, param.dtype), c)
        return out

    def architecture(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "features": self.features,
            "context": self.context,
            "layers": self.layers,
            "hidden_features": self.hidden_features,
            "hidden_layers": self.hidden_layers,
            "bins": self.bins,
            "bound": self.bound,
            "activation": self.activation,
        }

    @classmethod
    def from_architecture(cls, arch: Mapping[str, Any]) -> ConditionalNSF:
        keys = ("features", "context", "layers", "hidden_features", "hidden_layers", "bins",
                "bound", "activation")
        return cls(**{k: arch[k] for k in keys})
