r"""The table of flow families: what ``flows.kind`` may name, and how each one is built.

A family is one :class:`Family` record: its name (the ``kind`` of its flows and of their
``architecture()``), its :class:`~galmock.flows.base.DensityFlow` class, the section of options
only it uses (``flows.<name>`` in a job file, a :class:`FamilyOptions` model that builds a new
flow) and the defaults of those options. A family module registers its record with
:func:`register_family` when it is imported; :mod:`galmock.flows` imports the built-in ones
(``cnf``, ``maf``, ``nsf``), so the table is complete whenever any part of ``galmock.flows`` is
loaded. The job configuration, ``galmock validate`` and the tests read the table; nothing else
lists the families, so a new family is one module and its registration.

Every family shares the network size of :class:`NetworkOptions` (``flows.hidden_features``,
``hidden_layers``, ``activation``); a :class:`FlowSpec` is a family, a network size and the
family's options: everything that decides a new flow's architecture.

Example:
    >>> import torch
    >>> from galmock.flows import family_names
    >>> family_names()[:3]
    ('cnf', 'maf', 'nsf')
    >>> network = NetworkOptions(hidden_features=8, hidden_layers=2, activation="gelu")
    >>> spec = FlowSpec("cnf", network, family("cnf").parse_options({"rk4_steps": 4}))
    >>> flow = spec.build(features=3, context=0)
    >>> flow.architecture()["rk4_steps"], flow.kind
    (4, 'cnf')
    >>> spec.to_dict()  # laid out as a job file's flows section
    {'kind': 'cnf', 'hidden_features': 8, 'hidden_layers': 2, 'activation': 'gelu',
     'cnf': {'rk4_steps': 4}}
    >>> family("realnvp")
    Traceback (most recent call last):
        ...
    galmock.errors.InputError: unknown flow kind 'realnvp' (known: cnf, maf, nsf)
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from galmock.errors import InputError
from galmock.flows.base import Activation, DensityFlow
from galmock.sections import PositiveInt, Section, section_dump


class NetworkOptions(Section):
    """The network size every family shares: ``hidden_layers`` × ``hidden_features`` MLPs with
    ``activation`` (the CNF's vector field, the autoregressive flows' hyper-networks)."""

    hidden_features: PositiveInt
    hidden_layers: PositiveInt
    activation: Activation


class FamilyOptions(Section):
    """The options only one family uses (``flows.<family>``); a subclass builds its flows."""

    @abstractmethod
    def build(self, features: int, context: int, network: NetworkOptions) -> DensityFlow:
        """A new, randomly initialised flow (from torch's global RNG) with these options."""


@dataclass(frozen=True)
class Family:
    r"""One flow family: the record :func:`register_family` keeps.

    Arguments:
        name: ``flows.kind``; equal to ``flow.kind`` and to its architectures' ``kind``.
        flow: the :class:`DensityFlow` subclass (rebuilt from stored architectures).
        options: the family's options section, ``flows.<name>`` in a job file.
        defaults: a value for every field of ``options`` (``galmock/defaults.yaml`` repeats
            those of the built-in families, with comments).
    """

    name: str
    flow: type[DensityFlow]
    options: type[FamilyOptions]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name != self.flow.kind:
            raise ValueError(f"family {self.name!r}: its flow class has kind {self.flow.kind!r}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        self.options.model_validate(self.defaults)  # defaults must be complete and valid

    def parse_options(self, values: Mapping[str, Any] | FamilyOptions | None = None
                      ) -> FamilyOptions:
        """The family's options from ``values`` over its defaults (pydantic errors name keys)."""
        if isinstance(values, self.options):
            return values
        if isinstance(values, FamilyOptions):
            raise TypeError(f"{type(values).__name__} are not {self.name} options")
        return self.options.model_validate({**self.defaults, **(values or {})})

    def build(self, features: int, context: int, network: NetworkOptions,
              options: Mapping[str, Any] | FamilyOptions | None = None) -> DensityFlow:
        """A new flow of this family (global torch RNG; :func:`~galmock.flows.training.new_flow`
        seeds it)."""
        return self.parse_options(options).build(features, context, network)


_FAMILIES: dict[str, Family] = {}


def register_family(record: Family) -> Family:
    r"""Add ``record`` to the table; returns it.

    Registering the same record again is a no-op; another family under a taken name is an
    error (:func:`unregister_family` first).

    Example:
        >>> register_family(family("cnf")) is family("cnf")
        True
    """
    known = _FAMILIES.get(record.name)
    if known is not None and known != record:
        raise ValueError(f"flow family {record.name!r} is already registered ({known.flow})")
    _FAMILIES[record.name] = record
    return record


def unregister_family(name: str) -> None:
    """Remove a family from the table (a test's or plugin's own; the built-ins stay put)."""
    _FAMILIES.pop(name, None)


def family(name: str) -> Family:
    """The family registered as ``name``; InputError listing the known ones otherwise."""
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        known = ", ".join(_FAMILIES)
        raise InputError(f"unknown flow kind {name!r} (known: {known})") from None


def family_names() -> tuple[str, ...]:
    """The registered families' names, in registration order (built-ins first)."""
    return tuple(_FAMILIES)


def build_flow(kind: str, features: int, context: int, network: NetworkOptions,
               options: Mapping[str, Any] | FamilyOptions | None = None) -> DensityFlow:
    """A new flow of family ``kind``, its options over the family's defaults (global RNG)."""
    return family(kind).build(features, context, network, options)


def flow_from_architecture(arch: Mapping[str, Any]) -> DensityFlow:
    """Rebuild an (untrained) flow from :meth:`DensityFlow.architecture`'s dict."""
    return family(arch.get("kind")).flow.from_architecture(arch)


@dataclass(frozen=True)
class FlowSpec:
    r"""Everything that decides a new flow's architecture: family, network size, options.

    Arguments:
        kind: a registered family name.
        network: the shared network size.
        options: ``kind``'s options section (any other family's is refused).
    """

    kind: str
    network: NetworkOptions
    options: FamilyOptions

    def __post_init__(self) -> None:
        expected = family(self.kind).options
        if not isinstance(self.options, expected):
            raise TypeError(f"flow kind {self.kind!r} takes {expected.__name__}, got "
                            f"{type(self.options).__name__}")

    def build(self, features: int, context: int) -> DensityFlow:
        """A new flow of this spec (global torch RNG)."""
        return self.options.build(features, context, self.network)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, laid out as the job file's ``flows`` section (kind, network, options)."""
        return {"kind": self.kind, **section_dump(NetworkOptions, self.network),
                self.kind: self.options.model_dump(mode="json")}
