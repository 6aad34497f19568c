r"""The interface every flow family implements, and the runtime choices shared by all flows.

A :class:`DensityFlow` is a normalised density on R^d (in the preprocessed space), optionally
conditioned on a context in R^c: ``log_prob`` (differentiable, for training), ``generate`` (base
normals → data, for sampling) and an ``architecture`` dict from which an identical, untrained
module can be rebuilt (the artifact stores it next to the weights). The families themselves and
their table are :mod:`galmock.flows.families`; this module imports none of them.

Example:
    >>> import torch
    >>> from galmock.flows.cnf import CNF
    >>> flow = CNF(features=3, context=3, hidden_features=8, hidden_layers=2, rk4_steps=4)
    >>> c = torch.zeros(1000, 3)
    >>> x = flow.sample(1000, context=c, generator=torch.Generator().manual_seed(0))
    >>> flow.log_prob(x, context=c).shape
    torch.Size([1000])
    >>> resolve_device("cpu"), resolve_chunk_rows("auto", torch.device("cpu"))
    (device(type='cpu'), 16384)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from galmock.errors import InputError

# The activations a network may use (``flows.activation``, ``suite.activation``); the config
# accepts exactly the names of ACTIVATIONS (tests/test_flow_families.py checks they agree).
Activation = Literal["gelu", "relu", "elu", "silu", "tanh"]
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last axis."""
    return -0.5 * (z * z).sum(dim=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class DensityFlow(nn.Module, ABC):
    """A normalising flow with base N(0, I): p(x | context) on R^features.

    Subclasses set ``kind`` and implement ``log_prob``, ``generate``, ``architecture`` and
    ``from_architecture``; a family's options section builds new ones
    (:class:`~galmock.flows.families.FamilyOptions`). Parameters are float32 unless converted
    with ``.double()``.
    """

    kind: ClassVar[str]

    def __init__(self, features: int, context: int) -> None:
        super().__init__()
        self.features = int(features)
        self.context = int(context)

    @abstractmethod
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x | context) per row (n,); differentiable w.r.t. the parameters."""

    @abstractmethod
    def generate(
        self,
        z: Tensor,
        context: Tensor | None = None,
        chunk_rows: int = 16384,
        compile: bool = False,
    ) -> Tensor:
        """Map base draws ``z`` (n, features) to data space, without gradients, in row chunks.

        ``compile`` asks for ``torch.compile`` where the family supports it (the CNF).
        """

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """JSON-ready description (with ``kind``) that :meth:`from_architecture` rebuilds."""

    @classmethod
    @abstractmethod
    def from_architecture(cls, arch: Mapping[str, Any]) -> DensityFlow:
        """An untrained module with this architecture (weights come from a state dict)."""

    #: Whether the family trains by conditional flow matching (:meth:`flow_matching_loss`).
    flow_matching: ClassVar[bool] = False

    def flow_matching_loss(
        self, x: Tensor, context: Tensor | None, generator: torch.Generator,
        weight: Tensor | None = None,
    ) -> Tensor:
        """Mean (weighted mean) conditional flow-matching loss of rows ``x`` (families with a
        vector field)."""
        raise TypeError(f"{self.kind}: this family does not train by flow matching")

    def sample(
        self,
        n: int,
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` draws (one per context row when given), base normals from ``generator``."""
        param = next(self.parameters())
        z = torch.randn(n, self.features, generator=generator, dtype=param.dtype,
                        device=generator.device if generator is not None else param.device)
        return self.generate(z.to(param.device), context)

    def _check_context(self, x: Tensor, context: Tensor | None) -> None:
        # A silent broadcast of a wrong context would train a different model: fail loudly.
        if self.context and (context is None or context.shape != (x.shape[0], self.context)):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"{self.kind}: expected context of shape ({x.shape[0]}, "
                             f"{self.context}), got {got}")
        if not self.context and context is not None:
            raise ValueError(f"{self.kind}: this flow takes no context")


def resolve_device(spec: str = "auto") -> torch.device:
    """``flows.device``: ``auto`` is CUDA when available (the process's current device, so
    ``CUDA_VISIBLE_DEVICES`` or ``torch.cuda.set_device`` pick it), else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"flows.device = {spec!r}: not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"flows.device = {spec!r}, but CUDA is not available here")
    return device


def resolve_chunk_rows(spec: int | str, device: torch.device) -> int:
    """``flows.chunk_rows``: ``auto`` is 16384 rows on CPU (a chunk stays in cache) and 2^20
    on CUDA (enough rows to fill the GPU)."""
    if spec == "auto":
        return 1 << 20 if device.type == "cuda" else 16384
    return int(spec)


def resolve_compile(spec: bool | str, device: torch.device) -> bool:
    """``flows.compile``: ``auto`` compiles on CUDA only (on CPU it costs ~25 s, gains nothing)."""
    if spec == "auto":
        return device.type == "cuda"
    return bool(spec)
