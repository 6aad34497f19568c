"""A trained region model on disk: a directory of safetensors weights and a JSON manifest.

Layout (written atomically, so a crash never leaves half an artifact)::

    region-0003/
      manifest.json          format, kind, architecture, preprocessing, region, training record,
                             and per member: weights file, its sha256, tensor names and shapes
      member-00.safetensors  "position.<name>" and "velocity.<name>" tensors of member 0
      ...

Weights are safetensors only: a model file from elsewhere cannot run code (no pickle, no
``torch.load``). Loading trusts nothing: the format version, the flow kind, every file's sha256
and every tensor's name, shape and dtype against the architecture are checked, and anything off
raises :class:`galmock.errors.InputError` naming the file and the mismatch. Artifacts load from
local paths or any fsspec URL (``s3://…``, ``https://…``).

Example:
    >>> save_artifact(ensemble, "run/models/region-0003")
    >>> model = load_artifact("run/models/region-0003", device="cpu")
    >>> torch.equal(model.log_prob(pos, vel), ensemble.log_prob(pos, vel))
    True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor

from galmock import __version__
from galmock.atomic import atomic_directory
from galmock.errors import InputError
from galmock.flows.base import DensityFlow, flow_from_architecture, flow_kinds
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing

ARTIFACT_FORMAT = "galmock.flows/1"
MANIFEST = "manifest.json"
PARTS = ("position", "velocity")


def data_sha256(pos: np.ndarray, vel: np.ndarray) -> str:
    """sha256 of the training arrays as little-endian float64 (positions, then velocities)."""
    digest = hashlib.sha256()
    for a in (pos, vel):
        digest.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member_tensors(member: PhaseSpaceFlow) -> dict[str, Tensor]:
    flows = {"position": member.position, "velocity": member.velocity}
    return {
        f"{part}.{name}": t.detach().cpu().contiguous()
        for part, flow in flows.items()
        for name, t in flow.state_dict().items()
    }


def _tensor_specs(tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    return {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in sorted(tensors.items())
    }


def save_artifact(ensemble: FlowEnsemble, path: str | Path) -> Path:
    """Write ``ensemble`` as an artifact directory at ``path`` (replaced atomically)."""
    first: PhaseSpaceFlow = ensemble.members[0]  # type: ignore[assignment]
    architecture = {"position": first.position.architecture(),
                    "velocity": first.velocity.architecture()}
    preprocessing = {"position": first.position_pre.to_dict(),
                     "velocity": first.velocity_pre.to_dict()}
    for k, member in enumerate(ensemble.members):
        same = (
            {"position": member.position.architecture(),
             "velocity": member.velocity.architecture()} == architecture
            and {"position": member.position_pre.to_dict(),
                 "velocity": member.velocity_pre.to_dict()} == preprocessing
        )
        if not same:
            raise ValueError(f"ensemble member {k}: architecture or preprocessing differs from 0")
    training = dict(ensemble.metadata.get("training", {}))
    member_records = list(training.pop("members", [{}] * len(ensemble)))
    manifest: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "kind": first.kind,
        "galmock_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "architecture": architecture,
        "preprocessing": preprocessing,
        "region": {"centre": list(first.centre), "r_max": first.r_max, "v_max": first.v_max},
        "training": training,
        "members": [],
    }
    path = Path(path)
    with atomic_directory(path) as tmp:
        for k, member in enumerate(ensemble.members):
            name = f"member-{k:02d}.safetensors"
            tensors = _member_tensors(member)  # type: ignore[arg-type]
            data = safetensors.torch.save(tensors, metadata={"format": ARTIFACT_FORMAT})
            (tmp / name).write_bytes(data)
            record = member_records[k] if k < len(member_records) else {}
            manifest["members"].append(
                {"file": name, "sha256": _sha256(data), "tensors": _tensor_specs(tensors),
                 **record}
            )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return path


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def read_manifest(location: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of the artifact at ``location`` (path or fsspec URL)."""
    where = _join(str(location), MANIFEST)
    try:
        with fsspec.open(where, "rb") as fh:
            raw = fh.read()
    except (OSError, ValueError) as err:
        raise InputError(f"{where}: cannot read the model manifest: {err}") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{where}: the model manifest is not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{where}: the model manifest must be a JSON object")
    fmt = manifest.get("format")
    if fmt != ARTIFACT_FORMAT:
        raise InputError(
            f"{where}: unsupported model format {fmt!r}; this galmock {__version__} reads "
            f"{ARTIFACT_FORMAT!r}"
        )
    return manifest


def load_artifact(location: str | Path, device: str | torch.device = "cpu") -> FlowEnsemble:
    """Load and verify an artifact; the ensemble's ``metadata`` is its manifest.

    Raises:
        InputError: unreadable, wrong format or kind, a weights checksum or any tensor name,
            shape or dtype that does not match the manifest's architecture.
    """
    root = str(location)
    where = _join(root, MANIFEST)
    manifest = read_manifest(root)
    if manifest.get("artifact", "region") != "region":
        raise InputError(f"{where}: a {manifest['artifact']} artifact, not a region model "
                         "(a galaxy model is named in galaxy.model, not flows.load)")
    kinds = flow_kinds()
    try:
        kind = manifest["kind"]
        architecture = manifest["architecture"]
        arch_kinds = {architecture[p].get("kind") for p in PARTS}
        if kind not in kinds:
            raise InputError(f"{where}: unknown flow kind {kind!r} (known: {sorted(kinds)})")
        if arch_kinds != {kind}:
            raise InputError(
                f"{where}: kind {kind!r} does not match the architecture's {sorted(arch_kinds)}"
            )
        position_pre = PositionPreprocessing.from_dict(manifest["preprocessing"]["position"])
        velocity_pre = VelocityPreprocessing.from_dict(manifest["preprocessing"]["velocity"])
        region = manifest["region"]
        v_max = float(region["v_max"])
        if [float(c) for c in region["centre"]] != list(position_pre.centre) or float(
            region["r_max"]
        ) != position_pre.r_max:
            raise InputError(f"{where}: region centre/r_max differ from the preprocessing's")
        records = manifest["members"]
        if not isinstance(records, list) or not records:
            raise InputError(f"{where}: the manifest lists no ensemble members")
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise InputError(f"{where}: malformed model manifest ({problem})") from None

    members = []
    for record in records:
        flows = {p: _build(architecture[p], where) for p in PARTS}
        _load_member_weights(root, record, flows, where)
        members.append(
            PhaseSpaceFlow(flows["position"].eval(), flows["velocity"].eval(), position_pre,
                           velocity_pre, v_max)
        )
    return FlowEnsemble(members, metadata=manifest).to(device)


def _build(arch: Any, where: str) -> DensityFlow:
    try:
        return flow_from_architecture(arch)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"{where}: invalid architecture {arch!r} ({err})") from None


def _load_member_weights(
    root: str, record: Any, flows: dict[str, DensityFlow], where: str
) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        raise InputError(f"{where}: a member entry lacks its weights file name")
    name = record["file"]
    if "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"{where}: weights file name {name!r} must be a plain file name")
    fresh = {f"{p}.{k}": v for p, flow in flows.items() for k, v in flow.state_dict().items()}
    expected = _tensor_specs(fresh)
    declared = record.get("tensors")
    if not isinstance(declared, dict):
        raise InputError(f"{where}: member {name} lists no tensors")
    # Floating-point precision is the trainer's choice; everything else is the architecture's.
    declared_f = {k: {**v, "dtype": "float"} if _is_float(v) else v for k, v in declared.items()}
    expected_f = {k: {**v, "dtype": "float"} if _is_float(v) else v for k, v in expected.items()}
    if declared_f != expected_f:
        raise InputError(f"{where}: member {name}: tensors do not match the architecture: "
                         f"{_diff(expected_f, declared_f)}")
    path = _join(root, name)
    try:
        with fsspec.open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise InputError(f"{path}: cannot read model weights: {err}") from None
    digest = _sha256(data)
    if digest != record.get("sha256"):
        raise InputError(
            f"{path}: sha256 {digest} does not match the manifest's {record.get('sha256')}: "
            "the weights file was changed or is corrupt"
        )
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: not a valid safetensors file: {err}") from None
    actual = _tensor_specs(tensors)
    if actual != declared:
        raise InputError(f"{path}: tensors differ from the manifest: {_diff(declared, actual)}")
    dtypes = {v["dtype"] for k, v in actual.items() if _is_float(v)}
    for part, flow in flows.items():
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{part}.")}
        if dtypes == {"float64"}:
            flow.double()
        # Non-trainable buffers (zuko's autoregressive masks and orders, base loc/scale) are
        # fixed by the architecture; a file that changes them describes another model.
        for buf_name, buf in flow.named_buffers():
            if not torch.equal(state[buf_name].to(buf.dtype), buf):
                raise InputError(f"{path}: buffer {part}.{buf_name} differs from the one the "
                                 "architecture defines")
        flow.load_state_dict(state, strict=True)


def _is_float(spec: Mapping[str, Any]) -> bool:
    return str(spec.get("dtype", "")).startswith(("float", "bfloat"))


def _diff(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = [f"{k} {actual[k]} (expected {expected[k]})" for k in sorted(expected)
               if k in actual and actual[k] != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"unexpected {', '.join(extra[:5])}{' …' if len(extra) > 5 else ''}")
    if changed:
        parts.append(f"changed {'; '.join(changed[:5])}{' …' if len(changed) > 5 else ''}")
    return "; ".join(parts) or "no difference"
