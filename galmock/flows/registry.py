r"""Named pretrained models: a small JSON registry mapping names to artifact locations.

The registry file is ``$GALMOCK_MODEL_REGISTRY`` if set, else ``~/.config/galmock/models.json``.
A location is a local artifact directory (stored absolute) or an fsspec URL. Jobs name a model in
``flows.load`` (a registered name, a path or a URL) to sample from it instead of training, and a
galaxy model in ``galaxy.model``; :func:`load` and :func:`load_galaxy_model` give them verified.

Example:
    >>> import os, tempfile
    >>> from galmock.flows.artifact import manifest_header, write_artifact
    >>> where = tempfile.mkdtemp()
    >>> saved, os.environ[ENV_VAR] = os.environ.get(ENV_VAR), f"{where}/models.json"
    >>> artifact = write_artifact(f"{where}/region-0000", manifest_header("cnf"), [])
    >>> register("auriga6-solar", artifact).location == str(artifact)
    True
    >>> [e.name for e in list_models()]
    ['auriga6-solar']
    >>> resolve("auriga6-solar") == str(artifact), describe("auriga6-solar")["kind"]
    (True, 'cnf')
    >>> unregister("auriga6-solar")
    >>> list_models()
    []
    >>> if saved is None: del os.environ[ENV_VAR]
    ... else: os.environ[ENV_VAR] = saved
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galmock.atomic import atomic_write_text
from galmock.errors import InputError
from galmock.flows.artifact import load_artifact, read_manifest
from galmock.flows.base import resolve_chunk_rows, resolve_compile, resolve_device
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.galaxy_model import GalaxyModel
from galmock.flows.galaxy_model import load_galaxy_model as _load_galaxy_model
from galmock.flows.training import Runtime

REGISTRY_FORMAT = "galmock.models/1"
ENV_VAR = "GALMOCK_MODEL_REGISTRY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def valid_name(name: str) -> bool:
    """Whether ``name`` may name a registered model (letters, digits, '.', '_', '-')."""
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    name: str
    location: str
    registered: str  # ISO 8601 UTC


def registry_path() -> Path:
    """Where the registry file lives (it need not exist yet)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".config" / "galmock" / "models.json"


def _is_url(location: str) -> bool:
    return "://" in location


def _read() -> dict[str, dict[str, Any]]:
    path = registry_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read the model registry: {err}") from None
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT or not isinstance(
        data.get("models"), dict
    ):
        raise InputError(f"{path}: not a galmock model registry (format {REGISTRY_FORMAT!r})")
    return data["models"]


def list_models() -> list[ModelEntry]:
    """All registered models, sorted by name."""
    return [
        ModelEntry(name, str(entry.get("location")), str(entry.get("registered", "")))
        for name, entry in sorted(_read().items())
    ]


def register(name: str, location: str | Path, overwrite: bool = False) -> ModelEntry:
    """Register the artifact at ``location`` (path or URL) as ``name``; returns the entry.

    The artifact's manifest is read first, so a typo or a non-artifact is refused here rather
    than when a job runs.
    """
    if not _NAME.match(name):
        raise InputError(f"model name {name!r}: use letters, digits, '.', '_' and '-'")
    location = str(location)
    if not _is_url(location):
        location = str(Path(location).expanduser().resolve())
    read_manifest(location)
    models = _read()
    if name in models and not overwrite and models[name].get("location") != location:
        raise InputError(
            f"{registry_path()}: model {name!r} is already registered for "
            f"{models[name].get('location')}; unregister it first or pass overwrite=True"
        )
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    models[name] = {"location": location, "registered": stamp}
    _write(models)
    return ModelEntry(name, location, stamp)


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (the artifact itself is left alone)."""
    models = _read()
    if name not in models:
        raise InputError(f"{registry_path()}: no model named {name!r}")
    del models[name]
    _write(models)


def _write(models: dict[str, dict[str, Any]]) -> None:
    text = json.dumps({"format": REGISTRY_FORMAT, "models": models}, indent=2, sort_keys=True)
    atomic_write_text(registry_path(), text + "\n")


def resolve(name_or_path: str | Path, key: str = "flows.load") -> str:
    """A registered name's location; else the path or URL itself if it is an artifact.

    Names win over same-named relative paths. Raises InputError naming the config ``key`` and
    listing the known names.
    """
    setting = key
    key = str(name_or_path)
    models = _read()
    if key in models:
        return str(models[key]["location"])
    if _is_url(key) or Path(key).expanduser().is_dir():
        return key if _is_url(key) else str(Path(key).expanduser().resolve())
    known = ", ".join(sorted(models)) or "none"
    raise InputError(
        f"{setting} = {key!r}: neither a registered model ({registry_path()}: {known}) "
        "nor an artifact directory or URL"
    )


def describe(name_or_path: str | Path) -> dict[str, Any]:
    """The manifest of a registered model or artifact location, plus ``location``."""
    location = resolve(name_or_path)
    return {"location": location, **read_manifest(location)}


def load(name_or_path: str | Path, runtime: Runtime | None = None) -> FlowEnsemble:
    """Load a verified region model by name, path or URL onto ``runtime.device`` (default:
    auto), with the sampler's ``chunk_rows`` and ``compile`` set from ``runtime``."""
    runtime = runtime or Runtime()
    device = resolve_device(runtime.device)
    model = load_artifact(resolve(name_or_path), device=device)
    model.configure(
        chunk_rows=resolve_chunk_rows(runtime.chunk_rows, device),
        compile=resolve_compile(runtime.compile, device),
    )
    return model


def load_galaxy_model(name_or_path: str | Path, device: str = "auto",
                      key: str = "galaxy.model") -> GalaxyModel:
    """A verified conditional galaxy model (``galmock suite``'s artifact) by name, path or URL,
    on ``device`` (auto: CUDA when available)."""
    return _load_galaxy_model(resolve(name_or_path, key=key), device=resolve_device(str(device)))
