"""Stellar properties from phase space: a per-region conditional flow p(age, [Fe/H] | x, v).

``upsample.properties: flow`` replaces parent-particle inheritance (every star copying the
age and [Fe/H] of its nearest training particle, so a region has only as many distinct values
as particles) by draws from this flow, conditioned on each star's own position and velocity.
It is a zuko neural-spline flow (:class:`~galmock.flows.zuko_flows.NSFFlow`, sized by
``upsample.property_flow``) on z-scored properties, with the z-scored 6-D phase-space point
as context, trained by :func:`galmock.train.fit_density_flow` with the ``flows:`` recipe.
The properties are the star catalog's (age, [Fe/H]); a source's [O/Fe] joins once the catalog
has an [O/Fe] column (the class takes any property names). Sampled ages are clipped at 0.

Saved next to the region's phase-space model as ``models/region-NNNN-properties/`` (manifest
with ``"artifact": "property_flow"`` and one safetensors file, sha256-checked on load).

Example:
    >>> model = fit_property_flow(pos, vel, {"age": age, "feh": feh}, job.flows,
    ...                           job.upsample.property_flow, seed=1)
    >>> props = model.sample(star_pos, star_vel, torch.Generator().manual_seed(2))
    >>> props["feh"].shape
    (n,)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from galmock import __version__
from galmock.atomic import atomic_directory
from galmock.errors import InputError
from galmock.flows.artifact import ARTIFACT_FORMAT, MANIFEST, read_manifest
from galmock.flows.galaxy_model import ZScore
from galmock.flows.zuko_flows import NSFFlow

ARTIFACT_TYPE = "property_flow"
WEIGHTS = "model.safetensors"
PROPERTIES = ("age", "feh")


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
    flows_cfg: Any,
    size: Any,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    label: str = "properties",
) -> PropertyFlow:
    """Train p(props | x, v) on one region's particles (``size``: PropertyFlowConfig)."""
    from galmock.train import derive_seed, fit_density_flow

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
                       flows_cfg.activation, size.spline_bins)
    model = PropertyFlow(flow, names, prop_pre, cond_pre)
    y = torch.as_tensor(prop_pre.forward(values), dtype=torch.float32)
    report = fit_density_flow(flow, y, model._context(pos, vel), flows_cfg, seed,
                              checkpoint_dir, label)
    flow.eval()
    model.metadata["training"] = {
        "seed": int(seed), "particles": len(values), "data_sha256": properties_sha256(
            pos, vel, values), "best_validation_loss": report.best_validation_loss,
        "epochs": report.epochs, "wall_time_s": report.wall_time_s,
        "config": recipe(flows_cfg, size),
    }  # fmt: skip
    return model


def recipe(flows_cfg: Any, size: Any) -> dict[str, Any]:
    """The settings a trained property flow depends on (not device, threads or sampler speed)."""
    flows = {k: v for k, v in flows_cfg.model_dump(mode="json").items()
             if k not in ("device", "threads", "chunk_rows", "compile", "load",
                          "checkpoint_every_epochs", "ensemble_size")}
    return {"flows": flows, "size": size.model_dump(mode="json")}


def properties_sha256(pos: np.ndarray, vel: np.ndarray, values: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in (pos, vel, values):
        digest.update(np.ascontiguousarray(a, "<f8").tobytes())
    return digest.hexdigest()


def save_property_flow(model: PropertyFlow, path: str | Path) -> Path:
    """Write the model as an artifact directory at ``path`` (replaced atomically)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.flow.state_dict().items()}
    data = safetensors.torch.save(tensors, metadata={"format": ARTIFACT_FORMAT})
    manifest = {
        "format": ARTIFACT_FORMAT,
        "artifact": ARTIFACT_TYPE,
        "kind": model.flow.kind,
        "galmock_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "architecture": model.flow.architecture(),
        "properties": list(model.names),
        "preprocessing": {"properties": model.prop_pre.to_dict(),
                          "phase_space": model.cond_pre.to_dict()},
        "training": model.metadata.get("training", {}),
        "members": [{"file": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest()}],
    }
    path = Path(path)
    with atomic_directory(path) as tmp:
        (tmp / WEIGHTS).write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return path


def load_property_flow(location: str | Path, device: Any = "cpu") -> PropertyFlow:
    """Load and verify a property-flow artifact."""
    root = str(location).rstrip("/")
    where = f"{root}/{MANIFEST}"
    manifest = read_manifest(root)
    if manifest.get("artifact") != ARTIFACT_TYPE:
        raise InputError(f"{where}: not a property flow (artifact {manifest.get('artifact')!r})")
    try:
        flow = NSFFlow.from_architecture(manifest["architecture"])
        model_pre = ZScore.from_dict(manifest["preprocessing"]["properties"])
        cond_pre = ZScore.from_dict(manifest["preprocessing"]["phase_space"])
        names = list(manifest["properties"])
        sha = manifest["members"][0]["sha256"]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"{where}: malformed property-flow manifest ({err})") from None
    try:
        data = Path(root, WEIGHTS).read_bytes()
    except OSError as err:
        raise InputError(f"{root}/{WEIGHTS}: cannot read: {err}") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise InputError(f"{root}/{WEIGHTS}: sha256 differs from the manifest's (corrupt?)")
    try:
        flow.load_state_dict(safetensors.torch.load(data), strict=True)
    except (safetensors.SafetensorError, RuntimeError) as err:
        raise InputError(f"{root}/{WEIGHTS}: does not match the architecture: {err}") from None
    return PropertyFlow(flow.eval(), names, model_pre, cond_pre,
                        {"training": manifest.get("training", {})}).to(device)


def is_current(location: str | Path, pos: np.ndarray, vel: np.ndarray, values: np.ndarray,
               seed: int, config: Mapping[str, Any]) -> bool:
    """Whether the artifact at ``location`` was trained on these data, seed and settings."""
    if not (Path(location) / MANIFEST).is_file():
        return False
    try:
        training = read_manifest(location).get("training", {})
    except InputError:
        return False
    return (training.get("data_sha256") == properties_sha256(pos, vel, values)
            and training.get("seed") == seed and training.get("config") == config)


def train_region_properties(job: Any, particles: Any, region_id: int, models: Path) -> Path:
    """The train stage's step for ``upsample.properties: flow``: the region's property flow
    into ``models/region-NNNN-properties`` unless one for the same inputs is there."""
    from galmock.train import derive_seed

    target = models / f"region-{region_id:04d}-properties"
    seed = derive_seed(job.seed, "train-properties", region_id)
    props = {"age": particles.age, "feh": particles.feh}
    values = np.column_stack(list(props.values()))
    config = recipe(job.flows, job.upsample.property_flow)
    if is_current(target, particles.pos, particles.vel, values, seed, config):
        return target
    model = fit_property_flow(particles.pos, particles.vel, props, job.flows,
                              job.upsample.property_flow, seed,
                              models / f"region-{region_id:04d}-properties.work",
                              label=f"region {region_id} properties")
    save_property_flow(model, target)
    shutil.rmtree(models / f"region-{region_id:04d}-properties.work", ignore_errors=True)
    return target
