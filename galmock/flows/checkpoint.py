r"""Resumable training: one checkpoint format for every training loop in galmock.

A checkpoint is a directory, replaced atomically (:func:`galmock.atomic.atomic_directory`)::

    position.ckpt/
      state.json          {"format", "fingerprint", "state": the loop's JSON state,
                           "param_groups": the optimizer's (learning rate, betas, ...)}
      state.safetensors   "model.<name>" weights, "optim.<i>.<slot>" optimizer moments,
                          "rng.shuffle" the shuffling generator, "<extra>.<name>" (e.g. "best.")

A loop resumes only from a checkpoint of its own format whose *fingerprint* (a hash of the
data, architecture, recipe and seed: :func:`fingerprint`) matches; anything else starts afresh
with a warning. A process killed mid-save leaves a ``.NAME.tmp-*`` sibling (removed) or, between
the swap's two renames, only the previous checkpoint moved aside as ``.NAME.old-*`` (put back):
:func:`checkpoint_location` tidies both before reading. Weights are safetensors (no pickle).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    >>> gen = torch.Generator().manual_seed(0)
    >>> where = Path(tempfile.mkdtemp()) / "net.ckpt"
    >>> key = fingerprint({"data": "abc", "seed": 1})
    >>> save_checkpoint(where, "demo/1", key, net, opt, gen, {"epoch": 3})
    >>> restore_checkpoint(where, "demo/1", key, net, opt, gen).state
    {'epoch': 3}
    >>> restore_checkpoint(where, "demo/1", fingerprint({"seed": 2}), net, opt, gen) is None
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from galmock.atomic import atomic_directory

log = logging.getLogger(__name__)

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"


def fingerprint(payload: Mapping[str, Any]) -> str:
    """sha256 of ``payload`` as sorted JSON: what a checkpoint must match to be resumed."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def tensor_sha256(*tensors: Tensor | None) -> str:
    """sha256 of the tensors' bytes in order (``None`` skipped), for a fingerprint's data."""
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Checkpoint:
    """What :func:`restore_checkpoint` gives back besides the restored module, optimizer and
    generator: the loop's JSON ``state`` and the ``extra`` tensor groups (CPU) by prefix."""

    state: dict[str, Any]
    extra: dict[str, dict[str, Tensor]] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    fmt: str,
    key: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: Mapping[str, Any],
    extra: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> None:
    r"""Replace the checkpoint at ``path`` atomically.

    Arguments:
        path: the checkpoint directory.
        fmt: the loop's checkpoint format string (a loop reads only its own).
        key: the :func:`fingerprint` of the loop's inputs.
        module: its weights are saved as ``model.<name>``.
        optimizer: moments as ``optim.<index>.<slot>``, param groups in the JSON.
        generator: the shuffling generator's state (``rng.shuffle``).
        state: the loop's own JSON-ready state (epoch, phase, losses, ...).
        extra: more tensor groups, saved as ``<prefix>.<name>`` (e.g. the best weights).
    """
    opt = optimizer.state_dict()
    tensors: dict[str, Tensor] = {"rng.shuffle": generator.get_state()}
    tensors.update({f"model.{k}": v for k, v in module.state_dict().items()})
    for prefix, group in (extra or {}).items():
        tensors.update({f"{prefix}.{k}": v for k, v in group.items()})
    for index, slots in opt["state"].items():
        tensors.update({f"optim.{index}.{k}": v for k, v in slots.items()})
    meta = {"format": fmt, "fingerprint": key, "state": dict(state),
            "param_groups": opt["param_groups"]}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_directory(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1))


def restore_checkpoint(
    path: str | Path,
    fmt: str,
    key: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> Checkpoint | None:
    """Restore ``module``, ``optimizer`` and ``generator`` in place from the checkpoint at
    ``path``; ``None`` (and nothing changed) when there is none, it is unreadable, or it is of
    another format or fingerprint (i.e. for other data, settings or seed)."""
    found = checkpoint_location(Path(path))
    if found is None:
        return None
    try:
        meta = json.loads((found / STATE_JSON).read_text())
        tensors = safetensors.torch.load_file(str(found / STATE_TENSORS))
    except (OSError, ValueError, safetensors.SafetensorError) as err:
        log.warning("%s: unreadable checkpoint ignored, starting afresh (%s)", found, err)
        return None
    if meta.get("format") != fmt or meta.get("fingerprint") != key:
        log.warning("%s: checkpoint is for other data, settings or seed; starting afresh", found)
        return None
    groups: dict[str, dict[str, Tensor]] = {}
    slots: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        prefix, rest = name.split(".", 1)
        if prefix == "optim":
            index, slot = rest.split(".", 1)
            slots.setdefault(int(index), {})[slot] = value
        elif prefix != "rng":
            groups.setdefault(prefix, {})[rest] = value
    module.load_state_dict(groups.pop("model", {}))
    # The saved param groups carry the phase's learning rate; their "params" are indices.
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng.shuffle"])
    return Checkpoint(meta["state"], groups)


def checkpoint_location(path: Path) -> Path | None:
    """The checkpoint directory to resume from, after tidying what a kill may have left."""
    parent = path.parent
    if not parent.is_dir():
        return None
    for tmp in parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)  # half-written by a killed run
    aside = sorted(parent.glob(f".{path.name}.old-*"))
    if not path.is_dir() and aside:
        # atomic_directory moves the previous checkpoint aside before renaming the new one in;
        # a kill between the two renames leaves only the aside copy, still a whole checkpoint.
        os.replace(aside.pop(), path)
    for old in aside:
        shutil.rmtree(old, ignore_errors=True)
    return path if path.is_dir() else None
