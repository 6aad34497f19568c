r"""Stellar properties from phase space: a per-region conditional flow p(age, [Fe/H] | x, v).

``upsample.properties: flow`` replaces parent-particle inheritance (every star copying the
age and [Fe/H] of its nearest training particle, so a region has only as many distinct values
as particles) by draws from this flow, conditioned on each star's own position and velocity.
It is a zuko neural-spline flow (:class:`~galmock.flows.zuko_flows.NSFFlow`, sized by
:class:`PropertyFlowOptions`, ``upsample.property_flow`` in a job file, with the activation of
``flows.activation``) on z-scored properties, with the z-scored 6-D phase-space point as
context, trained on the CPU by :func:`galmock.flows.training.fit_density_flow` with the loop
settings of the region's training recipe (``flows.training``). The properties are the star
catalog's (age, [Fe/H]); a source's [O/Fe] joins once the catalog has an [O/Fe] column (the
class takes any property names). Sampled ages are clipped at 0.

Saved next to the region's phase-space model as ``models/region-NNNN-properties/`` (manifest
with ``"artifact": "property_flow"`` and one safetensors file, checked in full on load by
:mod:`galmock.flows.artifact`). :func:`train_property_flow` trains and saves one unless the
artifact there is current (:func:`property_recipe`).

Example:
    >>> import tempfile
    >>> from galmock.flows.training import TrainingRecipe
    >>> rng = np.random.default_rng(0)
    >>> pos, vel = rng.normal(0, 2, (400, 3)), rng.normal(0, 50, (400, 3))
    >>> age, feh = rng.uniform(0, 13, 400), rng.normal(-0.3, 0.2, 400)
    >>> size = PropertyFlowOptions(transforms=1, hidden_features=8, hidden_layers=1,
    ...                            spline_bins=4)
    >>> recipe = TrainingRecipe(method="likelihood", radial_c=1.000001, log_radial_scale_kpc=1.0,
    ...                         log_radial_power=1.0, radial_calibration=True,
    ...                         validation_fraction=0.2, batches_per_epoch=2, batch_rows=64,
    ...                         learning_rate=3e-3, finetune_learning_rate=3e-4,
    ...                         patience_epochs=1, max_epochs=2, ensemble_size=1)
    >>> target = f"{tempfile.mkdtemp()}/region-0000-properties"
    >>> path = train_property_flow(target, f"{target}.work", pos, vel,
    ...                            {"age": age, "feh": feh}, size, recipe, "gelu", seed=1)
    >>> model = load_property_flow(path)
    >>> props = model.sample(pos[:10], vel[:10], torch.Generator().manual_seed(2))
    >>> props["feh"].shape, bool(props["age"].min() >= 0)
    ((10,), True)
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from galmock.errors import InputError
from galmock.flows.artifact import (
    MANIFEST,
    WeightsFile,
    build_module,
    load_weights,
    manifest_header,
    members_of,
    module_tensors,
    open_artifact,
    read_manifest,
    write_artifact,
)
from galmock.flows.base import Activation
from galmock.flows.galaxy_model import ZScore
from galmock.flows.training import Runtime, TrainingRecipe, fit_density_flow
from galmock.flows.zuko_flows import NSFFlow
from galmock.sections import PositiveInt, Section
from galmock.seeds import derive_seed

ARTIFACT_TYPE = "property_flow"
WEIGHTS = "model.safetensors"
PROPERTIES = ("age", "feh")


class PropertyFlowOptions(Section):
    """``upsample.property_flow``: the size of the per-region p(age, [Fe/H] | x, v) (zuko NSF)."""

    transforms: PositiveInt
    hidden_features: PositiveInt
    hidden_layers: PositiveInt
    spline_bins: Annotated[int, Field(ge=2)]


class PropertyFlow(nn.Module):
    """p(properties | x, v) in physical units; ``names`` orders the property columns."""

    def __init__(self, flow: NSFFlow, names: Sequence[str], prop_pre: ZScore, cond_pre: ZScore,
                 metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if flow.features != len(names) or flow.context != 6:
            raise ValueError("the property flow maps len(names) features with a 6-D context")
        self.flow = flow
        self.names = tuple(names)
        self.prop_pre = prop_pre
        self.cond_pre = cond_pre
        self.metadata = dict(metadata or {})
        self.chunk_rows = 65536

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _context(self, pos: np.ndarray, vel: np.ndarray) -> torch.Tensor:
        c = self.cond_pre.forward(np.hstack([pos, vel]))
        return torch.as_tensor(c, dtype=self.dtype, device=self.device)

    def log_prob(self, props: np.ndarray, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        """log p(props | x, v) per row, float64, per unit of each property (Gyr dex)."""
        y = torch.as_tensor(self.prop_pre.forward(props), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            logp = self.flow.log_prob(y, self._context(pos, vel)).double().cpu().numpy()
        return logp + self.prop_pre.log_abs_det()

    def sample(self, pos: np.ndarray, vel: np.ndarray,
               generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
        """One draw per star (rows of ``pos``, ``vel``); float64 columns by name."""
        n = len(pos)
        where = generator.device if generator is not None else self.device
        z = torch.randn(n, len(self.names), generator=generator, device=where, dtype=self.dtype)
        y = self.flow.generate(z.to(self.device), self._context(pos, vel), self.chunk_rows)
        out = self.prop_pre.inverse(y.double().cpu().numpy())
        cols = {name: np.ascontiguousarray(out[:, i]) for i, name in enumerate(self.names)}
        if "age" in cols:
            cols["age"] = np.maximum(cols["age"], 0.0)
        return cols


def fit_property_flow(
    pos: np.ndarray,
    vel: np.ndarray,
    props: Mapping[str, np.ndarray],
    size: PropertyFlowOptions,
    recipe: TrainingRecipe,
    activation: Activation,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    label: str = "properties",
    *,
    runtime: Runtime | None = None,
) -> PropertyFlow:
    r"""Train p(props | x, v) on one region's particles.

    Arguments:
        pos, vel: the particles' positions and velocities (n, 3).
        props: property columns (n,) by name, e.g. ``{"age": ..., "feh": ...}``.
        size: the flow's size.
        recipe: its loop settings are used (:meth:`TrainingRecipe.loop_settings`).
        activation: the networks' activation.
        seed: initialises from ``(seed, "properties", "init")``; seeds the loop.
        checkpoint_dir: checkpoint there and resume from a matching checkpoint.
        label: names the flow in logs and errors.
        runtime: ``chunk_rows`` and ``checkpoint_every_epochs`` (training runs on the CPU).
    """
    names = tuple(props)
    values = np.column_stack([np.asarray(props[k], np.float64) for k in names])
    bad = ~np.isfinite(values).all(axis=0)
    if bad.any():
        missing = [n for n, b in zip(names, bad, strict=True) if b]
        raise InputError(f"{label}: property column(s) {missing} missing or non-finite; "
                         "upsample.properties: flow needs them for every particle")
    prop_pre = ZScore.fit(values, f"{label}: properties")
    cond_pre = ZScore.fit(np.hstack([pos, vel]), f"{label}: phase space")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "properties", "init"))
        flow = NSFFlow(len(names), 6, size.transforms, size.hidden_features, size.hidden_layers,
                       activation, size.spline_bins)
    model = PropertyFlow(flow, names, prop_pre, cond_pre)
    y = torch.as_tensor(prop_pre.forward(values), dtype=torch.float32)
    report = fit_density_flow(flow, y, model._context(pos, vel), recipe, seed, checkpoint_dir,
                              label, runtime=runtime)
    flow.eval()
    model.metadata["training"] = {
        "seed": int(seed), "particles": len(values), "data_sha256": properties_sha256(
            pos, vel, values), "best_validation_loss": report.best_validation_loss,
        "epochs": report.epochs, "wall_time_s": report.wall_time_s,
        "config": property_recipe(size, recipe, activation),
    }  # fmt: skip
    return model


def property_recipe(size: PropertyFlowOptions, recipe: TrainingRecipe,
                    activation: Activation) -> dict[str, Any]:
    """What a trained property flow depends on besides its particles and seed (the manifest's
    ``training.config``): its size, activation and the recipe's loop settings."""
    return {"activation": activation, "size": size.model_dump(mode="json"),
            "training": recipe.loop_settings()}


def properties_sha256(pos: np.ndarray, vel: np.ndarray, values: np.ndarray) -> str:
    """sha256 of positions, velocities and property columns as little-endian float64."""
    digest = hashlib.sha256()
    for a in (pos, vel, values):
        digest.update(np.ascontiguousarray(a, "<f8").tobytes())
    return digest.hexdigest()


def save_property_flow(model: PropertyFlow, path: str | Path) -> Path:
    """Write the model as an artifact directory at ``path`` (replaced atomically)."""
    manifest = {
        **manifest_header(model.flow.kind, ARTIFACT_TYPE),
        "architecture": model.flow.architecture(),
        "properties": list(model.names),
        "preprocessing": {"properties": model.prop_pre.to_dict(),
                          "phase_space": model.cond_pre.to_dict()},
        "training": model.metadata.get("training", {}),
    }
    return write_artifact(path, manifest, [WeightsFile(WEIGHTS, module_tensors({"": model.flow}))])


def load_property_flow(location: str | Path, device: str | torch.device = "cpu") -> PropertyFlow:
    """Load and verify a property-flow artifact (path or fsspec URL).

    Raises:
        InputError: not a property flow, malformed manifest, changed weights or tensors.
    """
    root, manifest = open_artifact(location, ARTIFACT_TYPE)
    where = f"{root}/{MANIFEST}"
    try:
        model_pre = ZScore.from_dict(manifest["preprocessing"]["properties"])
        cond_pre = ZScore.from_dict(manifest["preprocessing"]["phase_space"])
        names = [str(n) for n in manifest["properties"]]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{where}: malformed property-flow manifest ({err})") from None
    flow = build_module(NSFFlow.from_architecture, manifest.get("architecture"), where)
    load_weights(root, members_of(manifest, where)[0], {"": flow}, where)
    return PropertyFlow(flow.eval(), names, model_pre, cond_pre,
                        {"training": manifest.get("training", {})}).to(device)


def is_current(location: str | Path, pos: np.ndarray, vel: np.ndarray, values: np.ndarray,
               seed: int, config: Mapping[str, Any]) -> bool:
    """Whether the artifact at ``location`` was trained on these data, seed and recipe
    (``config``: :func:`property_recipe`)."""
    if not (Path(location) / MANIFEST).is_file():
        return False
    try:
        training = read_manifest(location).get("training", {})
    except InputError:
        return False
    return (training.get("data_sha256") == properties_sha256(pos, vel, values)
            and training.get("seed") == seed and _same_recipe(training.get("config"), config))


def _same_recipe(recorded: Any, config: Mapping[str, Any]) -> bool:
    if isinstance(recorded, Mapping) and "flows" in recorded:
        # Written before flows.training existed: {"flows": the flat flows settings, "size"}.
        flat = recorded["flows"]
        return (isinstance(flat, Mapping) and recorded.get("size") == config["size"]
                and flat.get("activation") == config["activation"]
                and all(flat.get(k) == v for k, v in config["training"].items()))
    return recorded == config


def train_property_flow(
    target: str | Path,
    workdir: str | Path,
    pos: np.ndarray,
    vel: np.ndarray,
    props: Mapping[str, np.ndarray],
    size: PropertyFlowOptions,
    recipe: TrainingRecipe,
    activation: Activation,
    seed: int,
    label: str = "properties",
    *,
    runtime: Runtime | None = None,
) -> Path:
    r"""A current property-flow artifact at ``target``: kept if it was trained on these data
    with this seed and recipe, else trained (checkpointing in ``workdir``, removed after) and
    saved there.

    Arguments:
        target: the artifact directory (``models/region-NNNN-properties``).
        workdir: the checkpoints' directory (``models/region-NNNN-properties.work``).
        pos, vel, props, size, recipe, activation, seed, label, runtime: as for
            :func:`fit_property_flow`.
    """
    target = Path(target)
    values = np.column_stack([np.asarray(v, np.float64) for v in props.values()])
    if is_current(target, pos, vel, values, seed, property_recipe(size, recipe, activation)):
        return target
    model = fit_property_flow(pos, vel, props, size, recipe, activation, seed, workdir, label,
                              runtime=runtime)
    save_property_flow(model, target)
    shutil.rmtree(workdir, ignore_errors=True)  # the artifact supersedes the checkpoints
    return target
