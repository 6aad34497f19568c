r"""Normalizing flows for one region's phase-space density (the GalaxyFlow method), and the
conditional galaxy models and per-region property flows built from the same parts.

f(r, v) = p(r) · p(v | r): a position flow and a velocity flow conditioned on position, each a
:class:`DensityFlow` of family ``flows.kind`` on preprocessed coordinates, joined by
:class:`PhaseSpaceFlow` and averaged over seeds by :class:`FlowEnsemble`. The modules:

- :mod:`.base`: the :class:`DensityFlow` interface; :mod:`.families`: the table of flow
  families (``cnf`` in :mod:`.cnf`, ``maf`` and ``nsf`` in :mod:`.zuko_flows`, each
  registering itself; importing this package imports them, so the table is complete);
- :mod:`.preprocess`, :mod:`.phase_space`, :mod:`.ensemble`: a region's model;
- :mod:`.training`: the training recipe and loops; :mod:`.checkpoint`: resumable training;
- :mod:`.artifact`: every model's read/write layer; :mod:`.registry`: named models;
- :mod:`.galaxy_model`, :mod:`.galaxy_training`, :mod:`.conditional_nsf`: the conditional galaxy
  model (``galmock suite``); :mod:`.property_flow`: p(age, [Fe/H] | x, v) per region.

Nothing here reads a job file, starts MPI or knows the run directory's layout: callers pass
arrays, option sections and paths.

Example:
    >>> import torch
    >>> from galmock.flows import NetworkOptions, build_flow, family_names
    >>> "cnf" in family_names()
    True
    >>> flow = build_flow("nsf", 3, 0, NetworkOptions(hidden_features=8, hidden_layers=1,
    ...                                               activation="relu"))
    >>> flow.sample(5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 3])
"""

from galmock.flows.artifact import ARTIFACT_FORMAT, load_artifact, read_manifest, save_artifact
from galmock.flows.base import (
    DensityFlow,
    resolve_chunk_rows,
    resolve_compile,
    resolve_device,
)
from galmock.flows.cnf import CNF, CNFOptions
from galmock.flows.conditional_nsf import ConditionalNSF
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.families import (
    Family,
    FamilyOptions,
    FlowSpec,
    NetworkOptions,
    build_flow,
    family,
    family_names,
    flow_from_architecture,
    register_family,
    unregister_family,
)
from galmock.flows.galaxy_model import GalaxyModel, load_galaxy_model, save_galaxy_model
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.flows.training import Runtime, TrainingRecipe, fit_ensemble, region_recipe
from galmock.flows.zuko_flows import MAFFlow, MAFOptions, NSFFlow, NSFOptions

__all__ = [
    "ARTIFACT_FORMAT",
    "CNF",
    "CNFOptions",
    "ConditionalNSF",
    "DensityFlow",
    "Family",
    "FamilyOptions",
    "FlowEnsemble",
    "FlowSpec",
    "GalaxyModel",
    "MAFFlow",
    "MAFOptions",
    "NSFFlow",
    "NSFOptions",
    "NetworkOptions",
    "PhaseSpaceFlow",
    "PositionPreprocessing",
    "Runtime",
    "TrainingRecipe",
    "VelocityPreprocessing",
    "build_flow",
    "family",
    "family_names",
    "fit_ensemble",
    "flow_from_architecture",
    "load_artifact",
    "load_galaxy_model",
    "read_manifest",
    "region_recipe",
    "register_family",
    "resolve_chunk_rows",
    "resolve_compile",
    "resolve_device",
    "save_artifact",
    "save_galaxy_model",
    "unregister_family",
]
