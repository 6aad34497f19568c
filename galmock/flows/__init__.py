"""Normalizing flows for one region's phase-space density (the GalaxyFlow method).

f(r, v) = p(r) · p(v | r): a position flow and a velocity flow conditioned on position, each a
:class:`DensityFlow` of family ``flows.kind`` (``cnf``, ``maf`` or ``nsf``) on preprocessed
coordinates, joined by :class:`PhaseSpaceFlow` and averaged over seeds by :class:`FlowEnsemble`.
Training is :mod:`galmock.train`; artifacts and the name registry are :mod:`.artifact` and
:mod:`.registry`.

Example:
    >>> from galmock.flows import load_artifact
    >>> model = load_artifact("runs/demo/models/region-0000")
    >>> pos, vel, rejected = model.sample(10_000, torch.Generator().manual_seed(0))
"""

from galmock.flows.artifact import ARTIFACT_FORMAT, load_artifact, read_manifest, save_artifact
from galmock.flows.base import (
    FLOW_KINDS,
    DensityFlow,
    build_flow,
    flow_from_architecture,
    flow_kinds,
    resolve_chunk_rows,
    resolve_compile,
    resolve_device,
)
from galmock.flows.cnf import CNF
from galmock.flows.conditional_nsf import ConditionalNSF
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.galaxy_model import GalaxyModel, load_galaxy_model, save_galaxy_model
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.flows.zuko_flows import MAFFlow, NSFFlow

__all__ = [
    "ARTIFACT_FORMAT",
    "CNF",
    "FLOW_KINDS",
    "ConditionalNSF",
    "DensityFlow",
    "FlowEnsemble",
    "GalaxyModel",
    "MAFFlow",
    "NSFFlow",
    "PhaseSpaceFlow",
    "PositionPreprocessing",
    "VelocityPreprocessing",
    "build_flow",
    "flow_from_architecture",
    "flow_kinds",
    "load_artifact",
    "load_galaxy_model",
    "read_manifest",
    "resolve_chunk_rows",
    "resolve_compile",
    "resolve_device",
    "save_artifact",
    "save_galaxy_model",
]
