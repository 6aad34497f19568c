"""Masked autoregressive (MAF) and neural-spline (NSF) flows from zuko, behind DensityFlow.

Same factorisation and preprocessing as the CNF; only the density family differs. The
conditional velocity flow passes the preprocessed position as zuko's ``context``. MAF is the
paper's Appendix A comparison; NSF's splines act on [-5, 5], which the standardised
preprocessing puts nearly all data inside (outside, zuko's spline is the identity).

The families ``maf`` (option ``flows.maf.transforms``) and ``nsf`` (``flows.nsf.transforms``,
``flows.nsf.spline_bins``) of :mod:`galmock.flows.families`.

Example:
    >>> flow = MAFFlow(features=3, context=3, transforms=2, hidden_features=8, hidden_layers=1)
    >>> r, v = torch.randn(5, 3), torch.randn(5, 3)
    >>> flow.log_prob(v, context=r).shape
    torch.Size([5])
    >>> flow.generate(torch.randn(5, 3), context=r).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
import zuko
from pydantic import Field
from torch import Tensor

from galmock.flows.base import ACTIVATIONS, DensityFlow
from galmock.flows.families import Family, FamilyOptions, NetworkOptions, register_family
from galmock.sections import PositiveInt


class _ZukoFlow(DensityFlow):
    """Shared adapter: ``zuko.flows.Flow(context)`` is a distribution with ``log_prob``."""

    def __init__(
        self,
        features: int = 3,
        context: int = 0,
        transforms: int = 5,
        hidden_features: int = 32,
        hidden_layers: int = 4,
        activation: str = "gelu",
    ) -> None:
        super().__init__(features, context)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (known: {sorted(ACTIVATIONS)})")
        self.transforms = int(transforms)
        self.hidden_features = int(hidden_features)
        self.hidden_layers = int(hidden_layers)
        self.activation = activation
        self.flow = self._build(
            features=features,
            context=context,
            transforms=self.transforms,
            hidden_features=[self.hidden_features] * self.hidden_layers,
            activation=ACTIVATIONS[activation],
        )

    def _build(self, **kwargs: Any) -> zuko.flows.Flow:
        raise NotImplementedError

    def _extra(self) -> dict[str, Any]:
        return {}

    def architecture(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "features": self.features,
            "context": self.context,
            "transforms": self.transforms,
            "hidden_features": self.hidden_features,
            "hidden_layers": self.hidden_layers,
            "activation": self.activation,
            **self._extra(),
        }

    @classmethod
    def from_architecture(cls, arch: Mapping[str, Any]) -> _ZukoFlow:
        keys = ["features", "context", "transforms", "hidden_features", "hidden_layers",
                "activation", *cls._extra_keys()]
        return cls(**{k: arch[k] for k in keys})

    @classmethod
    def _extra_keys(cls) -> tuple[str, ...]:
        return ()

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_context(x, context)
        return self.flow(context).log_prob(x)

    def generate(
        self,
        z: Tensor,
        context: Tensor | None = None,
        chunk_rows: int = 16384,
        compile: bool = False,  # zuko's inverse is a short loop; compiling is not worth it
    ) -> Tensor:
        self._check_context(z, context)
        param = next(self.parameters())
        out = torch.empty_like(z, dtype=param.dtype, device=param.device)
        with torch.no_grad():
            for start in range(0, z.shape[0], chunk_rows):
                stop = min(start + chunk_rows, z.shape[0])
                zc = z[start:stop].to(device=param.device, dtype=param.dtype)
                c = None if context is None else context[start:stop].to(param.device, param.dtype)
                # zuko's transform maps data → base; sampling applies its inverse.
                out[start:stop] = self.flow(c).transform.inv(zc)
        return out


class MAFFlow(_ZukoFlow):
    """zuko.flows.MAF: ``transforms`` affine autoregressive layers, MLP hyper-networks."""

    kind = "maf"

    def _build(self, **kwargs: Any) -> zuko.flows.Flow:
        return zuko.flows.MAF(**kwargs)


class NSFFlow(_ZukoFlow):
    """zuko.flows.NSF: monotonic rational-quadratic spline autoregressive layers."""

    kind = "nsf"

    def __init__(
        self,
        features: int = 3,
        context: int = 0,
        transforms: int = 5,
        hidden_features: int = 32,
        hidden_layers: int = 4,
        activation: str = "gelu",
        bins: int = 8,
    ) -> None:
        self.bins = int(bins)
        super().__init__(features, context, transforms, hidden_features, hidden_layers,
                         activation)

    def _build(self, **kwargs: Any) -> zuko.flows.Flow:
        return zuko.flows.NSF(bins=self.bins, **kwargs)

    def _extra(self) -> dict[str, Any]:
        return {"bins": self.bins}

    @classmethod
    def _extra_keys(cls) -> tuple[str, ...]:
        return ("bins",)


class MAFOptions(FamilyOptions):
    """``flows.maf``: the masked autoregressive flow's own options."""

    transforms: PositiveInt

    def build(self, features: int, context: int, network: NetworkOptions) -> MAFFlow:
        return MAFFlow(features, context, self.transforms, network.hidden_features,
                       network.hidden_layers, network.activation)


class NSFOptions(FamilyOptions):
    """``flows.nsf``: the neural spline flow's own options."""

    transforms: PositiveInt
    spline_bins: Annotated[int, Field(ge=2)]

    def build(self, features: int, context: int, network: NetworkOptions) -> NSFFlow:
        return NSFFlow(features, context, self.transforms, network.hidden_features,
                       network.hidden_layers, network.activation, bins=self.spline_bins)


MAF_FAMILY = register_family(Family("maf", MAFFlow, MAFOptions, {"transforms": 5}))
NSF_FAMILY = register_family(Family("nsf", NSFFlow, NSFOptions,
                                    {"transforms": 5, "spline_bins": 8}))
