r"""Trained models on disk: a directory of safetensors weights and a JSON manifest, one
read/write layer for every kind of galmock model.

Layout of a region model (written atomically, so a crash never leaves half an artifact)::

    region-0003/
      manifest.json          format, kind, architecture, preprocessing, region, training record,
                             and per member: weights file, its sha256, tensor names and
                             shapes, and its radial calibration's knots (if any)
      member-00.safetensors  "position.<name>" and "velocity.<name>" tensors of member 0
      ...

A galaxy model (:mod:`.galaxy_model`) and a property flow (:mod:`.property_flow`) are the same
directory with ``"artifact": "galaxy_model"`` / ``"property_flow"`` in the manifest and one
``model.safetensors``; a region model's manifest has no ``artifact`` key. All three are written
by :func:`write_artifact` and read by :func:`open_artifact` and :func:`load_weights`.

Weights are safetensors only: a model file from elsewhere cannot run code (no pickle, no
``torch.load``). Loading trusts nothing: the format version, the artifact type, the flow kind,
every file's sha256 and every tensor's name, shape and dtype against the architecture are
checked (and, where the architecture fixes them, the values of non-trainable buffers); anything
off raises :class:`galmock.errors.InputError` naming the file and the mismatch. Artifacts load
from local paths or any fsspec URL (``s3://…``, ``https://…``).

Example:
    >>> import tempfile
    >>> import numpy as np, torch
    >>> from galmock.flows.families import NetworkOptions, build_flow
    >>> rng = np.random.default_rng(0)
    >>> pos = rng.uniform(-1, 1, (400, 3))
    >>> pos, vel = pos[np.linalg.norm(pos, axis=1) < 1], rng.normal(0, 1, (400, 3))
    >>> net = NetworkOptions(hidden_features=4, hidden_layers=1, activation="gelu")
    >>> member = PhaseSpaceFlow(build_flow("maf", 3, 0, net), build_flow("maf", 3, 3, net),
    ...                         PositionPreprocessing.fit(pos, (0, 0, 0), 1.0),
    ...                         VelocityPreprocessing.fit(vel), v_max=5.0)
    >>> ensemble = FlowEnsemble([member])
    >>> path = save_artifact(ensemble, f"{tempfile.mkdtemp()}/region-0003")
    >>> model = load_artifact(path, device="cpu")
    >>> p, v = pos[:10], np.zeros((10, 3))
    >>> torch.equal(model.log_prob(p, v), ensemble.log_prob(p, v))
    True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from galmock.atomic import atomic_directory
from galmock.errors import InputError
from galmock.flows.base import DensityFlow
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.families import family_names, flow_from_architecture
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.flows.radial import RadialCalibration
from galmock.version import __version__

ARTIFACT_FORMAT = "galmock.flows/2"  # /2: members may carry a radial calibration
MANIFEST = "manifest.json"
REGION = "region"  # a region model's artifact type (its manifest has no "artifact" key)
PARTS = ("position", "velocity")

M = TypeVar("M", bound=nn.Module)


def data_sha256(pos: np.ndarray, vel: np.ndarray, weight: np.ndarray | None = None) -> str:
    """sha256 of the training arrays as little-endian float64 (positions, then velocities, then
    the training weights when there are any)."""
    digest = hashlib.sha256()
    for a in (pos, vel) if weight is None else (pos, vel, weight):
        digest.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the shared layer ---------------------------------------------------------------------------


@dataclass
class WeightsFile:
    """One safetensors file of an artifact: its name, tensors and extra manifest keys."""

    file: str
    tensors: Mapping[str, Tensor]
    record: Mapping[str, Any] = field(default_factory=dict)


def module_tensors(parts: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """The state dicts of ``parts`` as one flat dict, each name prefixed ``"<part>."`` (no
    prefix for the part named ``""``), detached, on the CPU and contiguous."""
    return {
        f"{part}.{name}" if part else name: t.detach().cpu().contiguous()
        for part, module in parts.items()
        for name, t in module.state_dict().items()
    }


def tensor_specs(tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    """Name → ``{"shape", "dtype"}`` for a manifest, sorted by name."""
    return {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in sorted(tensors.items())
    }


def manifest_header(kind: str, artifact: str = REGION) -> dict[str, Any]:
    """The keys every manifest starts with: format, artifact type (not for region models),
    flow kind, galmock version and creation time."""
    head: dict[str, Any] = {"format": ARTIFACT_FORMAT}
    if artifact != REGION:
        head["artifact"] = artifact
    head.update(kind=kind, galmock_version=__version__,
                created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return head


def write_artifact(path: str | Path, manifest: Mapping[str, Any],
                   weights: Sequence[WeightsFile]) -> Path:
    r"""Write an artifact directory at ``path``, replacing any there atomically.

    Arguments:
        path: the artifact directory.
        manifest: everything but ``members`` (start it with :func:`manifest_header`).
        weights: the safetensors files; each becomes a ``members`` entry with its file name,
            sha256 and tensor specs, followed by its ``record``.
    """
    members = []
    blobs = {}
    for w in weights:
        tensors = {k: v.detach().cpu().contiguous() for k, v in w.tensors.items()}
        data = safetensors.torch.save(tensors, metadata={"format": ARTIFACT_FORMAT})
        blobs[w.file] = data
        members.append({"file": w.file, "sha256": _sha256(data),
                        "tensors": tensor_specs(tensors), **w.record})
    text = json.dumps({**manifest, "members": members}, indent=2, allow_nan=False) + "\n"
    path = Path(path)
    with atomic_directory(path) as tmp:
        for name, data in blobs.items():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_text(text)
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


_WHAT = {REGION: "a region model", "galaxy_model": "a galaxy model",
         "property_flow": "a property flow"}
_HINT = {REGION: " (a galaxy model is named in galaxy.model, not flows.load)",
         "galaxy_model": "; train one with `galmock suite`"}


def open_artifact(location: str | Path, artifact: str = REGION) -> tuple[str, dict[str, Any]]:
    """``(root, manifest)`` of the artifact at ``location``, checked to be of type
    ``artifact`` (``region``, ``galaxy_model`` or ``property_flow``)."""
    root = str(location).rstrip("/")
    manifest = read_manifest(root)
    found = manifest.get("artifact", REGION)
    if found != artifact:
        raise InputError(f"{_join(root, MANIFEST)}: a {found} artifact, not "
                         f"{_WHAT.get(artifact, artifact)}{_HINT.get(artifact, '')}")
    return root, manifest


def members_of(manifest: Mapping[str, Any], where: str) -> list[Any]:
    """The manifest's non-empty ``members`` list."""
    records = manifest.get("members")
    if not isinstance(records, list) or not records:
        raise InputError(f"{where}: the manifest lists no weights files (members)")
    return records


def load_weights(root: str, record: Any, parts: Mapping[str, nn.Module], where: str, *,
                 fixed_buffers: bool = True) -> None:
    r"""Check one weights file in full and load it into ``parts`` (in place).

    Arguments:
        root: the artifact's location.
        record: the file's ``members`` entry (``file``, ``sha256``, ``tensors``).
        parts: freshly built modules of the manifest's architecture; tensor ``"<part>.<name>"``
            goes to ``parts[part]`` (the part named ``""`` takes unprefixed names).
        where: the manifest's location, for errors.
        fixed_buffers: the architecture fixes the non-trainable buffers (zuko's autoregressive
            masks, base loc/scale); a file that changes them describes another model. False for
            modules whose buffers are drawn at initialisation (the LU permutations of
            :class:`~galmock.flows.conditional_nsf.ConditionalNSF`).

    The file name must be plain; the tensors the manifest declares (if it lists them, as every
    galmock since the property flow's first version writes) must match the architecture's names
    and shapes; the file's sha256 must be the declared one; and its tensors must be the declared
    ones. Floating-point precision is the trainer's choice: all-float64 files load into
    float64 modules.
    """
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        raise InputError(f"{where}: a member entry lacks its weights file name")
    name = record["file"]
    if "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"{where}: weights file name {name!r} must be a plain file name")
    expected = _floats(tensor_specs(module_tensors(parts)))
    declared = record.get("tensors")
    if declared is not None:
        if not isinstance(declared, dict):
            raise InputError(f"{where}: member {name} lists no tensors")
        if _floats(declared) != expected:
            raise InputError(f"{where}: member {name}: tensors do not match the architecture: "
                             f"{_diff(expected, _floats(declared))}")
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
    actual = tensor_specs(tensors)
    if declared is not None and actual != declared:
        raise InputError(f"{path}: tensors differ from the manifest: {_diff(declared, actual)}")
    if declared is None and _floats(actual) != expected:
        raise InputError(f"{path}: tensors do not match the architecture in the manifest: "
                         f"{_diff(expected, _floats(actual))}")
    dtypes = {v["dtype"] for v in actual.values() if _is_float(v)}
    for part, module in parts.items():
        prefix = f"{part}." if part else ""
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        if dtypes == {"float64"}:
            module.double()
        if fixed_buffers:
            for buf_name, buf in module.named_buffers():
                if not torch.equal(state[buf_name].to(buf.dtype), buf):
                    label = f"{prefix}{buf_name}"
                    raise InputError(f"{path}: buffer {label} differs from the one the "
                                     "architecture defines")
        module.load_state_dict(state, strict=True)


def _is_float(spec: Mapping[str, Any]) -> bool:
    return str(spec.get("dtype", "")).startswith(("float", "bfloat"))


def _floats(specs: Mapping[str, Any]) -> dict[str, Any]:
    """Specs with every floating dtype written ``float`` (precision is the trainer's choice)."""
    return {k: {**v, "dtype": "float"} if isinstance(v, dict) and _is_float(v) else v
            for k, v in specs.items()}


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


def build_module(build: Callable[[Mapping[str, Any]], M], arch: Any, where: str) -> M:
    """``build(arch)`` for an architecture read from a manifest (untrusted JSON), its failures
    as InputErrors naming ``where``."""
    try:
        return build(arch)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"{where}: invalid architecture {arch!r} ({err})") from None


# -- region models ------------------------------------------------------------------------------


def save_artifact(ensemble: FlowEnsemble, path: str | Path) -> Path:
    """Write ``ensemble`` as a region-model artifact at ``path`` (replaced atomically)."""
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
    manifest = {
        **manifest_header(first.kind),
        "architecture": architecture,
        "preprocessing": preprocessing,
        # r_max: null for the log-radial map, which has no ball (JSON has no infinity).
        "region": {"centre": list(first.centre),
                   "r_max": first.r_max if math.isfinite(first.r_max) else None,
                   "v_max": first.v_max},
        "training": training,
    }
    weights = [
        WeightsFile(f"member-{k:02d}.safetensors",
                    module_tensors({"position": m.position, "velocity": m.velocity}),
                    {**(member_records[k] if k < len(member_records) else {}),
                     # Each member's flow has its own radial calibration (flows.radial).
                     **({} if m.radial is None else {"radial_calibration": m.radial.to_dict()})})
        for k, m in enumerate(ensemble.members)  # type: ignore[union-attr]
    ]
    return write_artifact(path, manifest, weights)


def load_artifact(location: str | Path, device: str | torch.device = "cpu") -> FlowEnsemble:
    """Load and verify a region-model artifact; the ensemble's ``metadata`` is its manifest.

    Raises:
        InputError: unreadable, wrong format, type or kind, a weights checksum or any tensor
            name, shape or dtype that does not match the manifest's architecture.
    """
    root, manifest = open_artifact(location, REGION)
    where = _join(root, MANIFEST)
    try:
        kind = manifest["kind"]
        architecture = manifest["architecture"]
        arch_kinds = {architecture[p].get("kind") for p in PARTS}
        if kind not in family_names():
            raise InputError(f"{where}: unknown flow kind {kind!r} (known: "
                             f"{', '.join(family_names())})")
        if arch_kinds != {kind}:
            raise InputError(
                f"{where}: kind {kind!r} does not match the architecture's {sorted(arch_kinds)}"
            )
        position_pre = PositionPreprocessing.from_dict(manifest["preprocessing"]["position"])
        velocity_pre = VelocityPreprocessing.from_dict(manifest["preprocessing"]["velocity"])
        region = manifest["region"]
        v_max = float(region["v_max"])
        r_max = math.inf if region["r_max"] is None else float(region["r_max"])
        if [float(c) for c in region["centre"]] != list(position_pre.centre) or (
            r_max != position_pre.r_max
        ):
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
        flows: dict[str, DensityFlow] = {
            p: build_module(flow_from_architecture, architecture[p], where) for p in PARTS
        }
        load_weights(root, record, flows, where)
        radial = None
        if record.get("radial_calibration") is not None:
            try:
                radial = RadialCalibration.from_dict(record["radial_calibration"])
            except InputError as err:
                raise InputError(f"{where}: {record.get('file')}: {err}") from None
            if radial.centre != position_pre.centre:
                raise InputError(f"{where}: {record.get('file')}: the radial calibration's "
                                 "centre differs from the preprocessing's")
        members.append(
            PhaseSpaceFlow(flows["position"].eval(), flows["velocity"].eval(), position_pre,
                           velocity_pre, v_max, radial=radial)
        )
    return FlowEnsemble(members, metadata=manifest).to(device)
