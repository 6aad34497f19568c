"""Train one region's flows: arrays in, a :class:`FlowEnsemble` (and optionally an artifact) out.

The recipe is GalaxyFlow §3.3, every number a ``flows:`` config value: preprocess (fitted on all
the region's training particles), hold out ``validation_fraction`` for validation, split the rest
into ``batches_per_epoch`` mini-batches per epoch, minimise the negative log-likelihood with Adam
at ``learning_rate`` until the validation loss has not improved for ``patience_epochs`` epochs,
then restart from the best state at ``finetune_learning_rate`` with the same rule, and keep the
best state (``max_epochs`` caps each of the two phases). The position flow p(r) trains first,
then the velocity flow p(v | r); an ensemble repeats this for ``ensemble_size`` seeds.

Runs are resumable and reproducible: every ``checkpoint_every_epochs`` epochs (and at each phase
end) the model, optimizer, shuffling generator, early-stopping state, epoch and phase go to an
atomically replaced checkpoint, so a killed run restarted with the same inputs ends bit-for-bit
where an uninterrupted run ends (CPU, same thread count). All randomness comes from explicit
``torch.Generator`` objects (or a forked global RNG for the weight initialisation) seeded from
``seed``; the global RNG is left untouched. No MPI and no run-directory layout here: the
per-region driver passes arrays and paths.

Example:
    >>> ensemble = fit_ensemble(pos, vel, job.flows, seed=job.seed, centre=region.centre,
    ...                         radius=region.radius, workdir=run / "models/region-0003.work",
    ...                         artifact=run / "models/region-0003")
    >>> pos_s, vel_s, rejected = ensemble.sample(10**6, torch.Generator().manual_seed(7))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

from galmock import preempt
from galmock.atomic import atomic_directory
from galmock.config import FlowsConfig
from galmock.errors import GalmockError, InputError
from galmock.flows.artifact import data_sha256, save_artifact
from galmock.flows.base import (
    DensityFlow,
    build_flow,
    resolve_chunk_rows,
    resolve_compile,
    resolve_device,
)
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "galmock.checkpoint/1"
PHASES = ("main", "finetune", "done")


class TrainingError(GalmockError):
    """Training cannot go on (e.g. a non-finite loss); the message names the flow and epoch."""


@dataclass
class FitReport:
    """How one density flow trained. ``epochs`` counts each phase; ``history`` is the
    validation loss after every epoch."""

    label: str
    best_validation_loss: float
    epochs: dict[str, int]
    wall_time_s: float
    resumed_from_epoch: list[int] = field(default_factory=list)
    history: list[float] = field(default_factory=list)


@dataclass
class MemberReport:
    """One ensemble member: its seed and both flows' reports."""

    seed: int
    position: FitReport
    velocity: FitReport

    @property
    def wall_time_s(self) -> float:
        return self.position.wall_time_s + self.velocity.wall_time_s


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for one purpose (``keys``), independent across purposes and members."""
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def new_flow(kind: str, features: int, context: int, cfg: FlowsConfig, seed: int) -> DensityFlow:
    """A freshly initialised flow, its weights a function of ``seed`` alone.

    torch's layers initialise from the global RNG; it is forked so callers' streams are unchanged.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_flow(kind, features, context, cfg)


# -- the generic training loop -----------------------------------------------------------------


@dataclass
class _State:
    """Everything besides weights and optimizer moments that a resumed run needs."""

    epoch: int = 0  # completed epochs over both phases
    phase: str = "main"
    phase_epoch: int = 0
    best_loss: float = math.inf
    bad_epochs: int = 0
    epochs: dict[str, int] = field(default_factory=lambda: {"main": 0, "finetune": 0})
    history: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    resumed_from_epoch: list[int] = field(default_factory=list)


def fit_density_flow(
    flow: DensityFlow,
    x: Tensor,
    context: Tensor | None,
    cfg: FlowsConfig,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    label: str = "flow",
) -> FitReport:
    """Train ``flow`` on rows ``x`` (with ``context``) in place; the best weights are kept.

    ``x`` and ``context`` are already preprocessed; they move to the flow's device. With a
    ``checkpoint_dir`` the run checkpoints there and resumes from a matching checkpoint.

    Raises:
        TrainingError: a training or validation loss is not finite (names the epoch).
    """
    device = next(flow.parameters()).device
    dtype = next(flow.parameters()).dtype
    x = x.to(device, dtype)
    context = None if context is None else context.to(device, dtype)
    n = x.shape[0]
    n_val = max(1, round(cfg.validation_fraction * n))
    n_train = n - n_val
    if n_train < cfg.batches_per_epoch:
        raise InputError(
            f"{label}: {n} rows leave {n_train} for training, fewer than "
            f"flows.batches_per_epoch = {cfg.batches_per_epoch}"
        )
    # The split has its own generator, so a resumed run recomputes it instead of storing it.
    order = torch.randperm(n, generator=_generator(derive_seed(seed, "split"))).to(device)
    val_idx, train_idx = order[:n_val], order[n_val:]
    shuffle = _generator(derive_seed(seed, label, "shuffle"))
    optimizer = torch.optim.Adam(flow.parameters(), lr=cfg.learning_rate)
    state = _State()
    best: dict[str, Tensor] = _clone_state(flow)
    fingerprint = _fingerprint(flow, x, context, cfg, seed, label)
    chunk = resolve_chunk_rows(cfg.chunk_rows, device)

    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        restored = _load_checkpoint(checkpoint_dir, fingerprint, flow, optimizer, shuffle)
        if restored is not None:
            state, best = restored
            state.resumed_from_epoch.append(state.epoch)
            log.info("%s: resumed from %s at epoch %d (%s phase)", label, checkpoint_dir,
                     state.epoch, state.phase)

    started = time.perf_counter() - state.wall_time_s
    last_saved = state.epoch
    while state.phase != "done":
        lr = optimizer.param_groups[0]["lr"]
        flow.train()
        batches = torch.randperm(n_train, generator=shuffle).to(device).chunk(cfg.batches_per_epoch)
        for i, batch in enumerate(batches):
            rows = train_idx[batch]
            loss = -flow.log_prob(x[rows], None if context is None else context[rows]).mean()
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{label}: non-finite training loss ({loss.item()}) at epoch "
                    f"{state.epoch + 1} ({state.phase} phase, batch {i + 1}/{len(batches)}, "
                    f"learning rate {lr:g}); lower flows.learning_rate or check the input "
                    "for extreme values"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        flow.eval()
        val_loss = _mean_nll(flow, x[val_idx], None if context is None else context[val_idx],
                             chunk)
        state.epoch += 1
        state.phase_epoch += 1
        state.epochs[state.phase] += 1
        state.history.append(val_loss)
        if not math.isfinite(val_loss):
            raise TrainingError(
                f"{label}: non-finite validation loss ({val_loss}) at epoch {state.epoch} "
                f"({state.phase} phase, learning rate {lr:g}); lower flows.learning_rate"
            )
        if val_loss < state.best_loss:
            state.best_loss, state.bad_epochs = val_loss, 0
            best = _clone_state(flow)
        else:
            state.bad_epochs += 1
        if state.bad_epochs >= cfg.patience_epochs or state.phase_epoch >= cfg.max_epochs:
            # Phase end: continue (or finish) from the best state, with a fresh optimizer.
            flow.load_state_dict(best)
            log.info("%s: %s phase ended after %d epochs, best validation loss %.6g", label,
                     state.phase, state.phase_epoch, state.best_loss)
            state.phase = "finetune" if state.phase == "main" else "done"
            state.phase_epoch = state.bad_epochs = 0
            optimizer = torch.optim.Adam(flow.parameters(), lr=cfg.finetune_learning_rate)
        # A preemption signal (galmock.preempt) checkpoints now and stops the run.
        stop = checkpoint_dir is not None and state.phase != "done" and preempt.requested()
        if checkpoint_dir is not None and (
            state.epoch - last_saved >= cfg.checkpoint_every_epochs or state.phase_epoch == 0
            or stop
        ):
            state.wall_time_s = time.perf_counter() - started
            _save_checkpoint(checkpoint_dir, fingerprint, flow, optimizer, shuffle, state, best)
            last_saved = state.epoch
        if stop:
            raise preempt.Preempted(f"{label}: checkpointed at epoch {state.epoch}")

    state.wall_time_s = time.perf_counter() - started
    return FitReport(label, state.best_loss, dict(state.epochs), state.wall_time_s,
                     list(state.resumed_from_epoch), list(state.history))


def _mean_nll(flow: DensityFlow, x: Tensor, context: Tensor | None, chunk: int) -> float:
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            sl = slice(start, start + chunk)
            logp = flow.log_prob(x[sl], None if context is None else context[sl])
            total -= float(logp.double().sum())
    return total / x.shape[0]


def _clone_state(flow: DensityFlow) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _tensor_sha256(*tensors: Tensor | None) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(
    flow: DensityFlow, x: Tensor, context: Tensor | None, cfg: FlowsConfig, seed: int, label: str
) -> str:
    """What a checkpoint must match to be resumed: data, architecture, recipe, seed, label."""
    recipe = {
        k: getattr(cfg, k)
        for k in ("validation_fraction", "batches_per_epoch", "learning_rate",
                  "finetune_learning_rate", "patience_epochs", "max_epochs")
    }
    payload = {
        "architecture": flow.architecture(),
        "recipe": recipe,
        "seed": seed,
        "label": label,
        "data": _tensor_sha256(x, context),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _save_checkpoint(
    path: Path,
    fingerprint: str,
    flow: DensityFlow,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    state: _State,
    best: dict[str, Tensor],
) -> None:
    opt = optimizer.state_dict()
    tensors: dict[str, Tensor] = {"rng.shuffle": shuffle.get_state()}
    tensors.update({f"model.{k}": v for k, v in flow.state_dict().items()})
    tensors.update({f"best.{k}": v for k, v in best.items()})
    for index, slots in opt["state"].items():
        tensors.update({f"optim.{index}.{k}": v for k, v in slots.items()})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "state": asdict(state),
        "param_groups": opt["param_groups"],
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_directory(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))


def _load_checkpoint(
    path: Path,
    fingerprint: str,
    flow: DensityFlow,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
) -> tuple[_State, dict[str, Tensor]] | None:
    """Restore a checkpoint in place; ``None`` when there is none or it is for other inputs."""
    path = _checkpoint_location(path)
    if path is None:
        return None
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = safetensors.torch.load_file(str(path / "state.safetensors"))
    except (OSError, ValueError, safetensors.SafetensorError) as err:
        log.warning("%s: unreadable checkpoint ignored, starting afresh (%s)", path, err)
        return None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("fingerprint") != fingerprint:
        log.warning("%s: checkpoint is for other data, settings or seed; starting afresh", path)
        return None
    device = next(flow.parameters()).device
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    slots: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    flow.load_state_dict(model)
    state = _State(**meta["state"])
    # The saved param groups carry the phase's learning rate; their "params" are indices.
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    shuffle.set_state(tensors["rng.shuffle"])
    return state, best


def _checkpoint_location(path: Path) -> Path | None:
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


# -- phase-space flows and ensembles ------------------------------------------------------------


def _check_arrays(pos: np.ndarray, vel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    vel = np.ascontiguousarray(vel, dtype=np.float64)
    for name, a in (("positions", pos), ("velocities", vel)):
        if a.ndim != 2 or a.shape[1] != 3:
            raise InputError(f"training {name} must have shape (n, 3), got {a.shape}")
        bad = ~np.isfinite(a).all(axis=1)
        if bad.any():
            raise InputError(
                f"training {name}: {int(bad.sum())} rows are not finite (first: row "
                f"{int(np.argmax(bad))})"
            )
    if len(pos) != len(vel):
        raise InputError(f"training data: {len(pos)} positions but {len(vel)} velocities")
    return pos, vel


def fit_phase_space_flow(
    pos: np.ndarray,
    vel: np.ndarray,
    cfg: FlowsConfig,
    seed: int,
    centre: Sequence[float],
    radius: float,
    workdir: str | Path | None = None,
) -> tuple[PhaseSpaceFlow, MemberReport]:
    """Train p(r) then p(v | r) on one region's particles (kpc, km/s; float64 arrays (n, 3)).

    ``centre``/``radius`` are the region's ball (r_c, r_max). Checkpoints go to
    ``workdir/{position,velocity}.ckpt`` when ``workdir`` is given.
    """
    pos, vel = _check_arrays(pos, vel)
    device = resolve_device(cfg.device)
    pos_pre = PositionPreprocessing.fit(pos, centre, radius, cfg.radial_c)
    vel_pre = VelocityPreprocessing.fit(vel)
    v_max = float(np.linalg.norm(vel, axis=1).max())
    # Preprocessed in float64, trained in float32 (the networks' precision).
    y = pos_pre.forward(torch.from_numpy(pos)).float()
    yv = vel_pre.forward(torch.from_numpy(vel)).float()

    flows: dict[str, DensityFlow] = {}
    reports: dict[str, FitReport] = {}
    for label, features, x, context in (("position", 3, y, None), ("velocity", 3, yv, y)):
        flow = new_flow(cfg.kind, features, 0 if context is None else 3, cfg,
                        derive_seed(seed, label, "init")).to(device)
        ckpt = None if workdir is None else Path(workdir) / f"{label}.ckpt"
        reports[label] = fit_density_flow(flow, x, context, cfg, seed, ckpt, label)
        flows[label] = flow.eval()
    model = PhaseSpaceFlow(
        flows["position"], flows["velocity"], pos_pre, vel_pre, v_max,
        chunk_rows=resolve_chunk_rows(cfg.chunk_rows, device),
        compile=resolve_compile(cfg.compile, device),
    )
    return model, MemberReport(seed, reports["position"], reports["velocity"])


def fit_ensemble(
    pos: np.ndarray,
    vel: np.ndarray,
    cfg: FlowsConfig,
    seed: int,
    centre: Sequence[float],
    radius: float,
    workdir: str | Path | None = None,
    artifact: str | Path | None = None,
) -> FlowEnsemble:
    """Train ``cfg.ensemble_size`` members (seeds derived from ``seed``) into a mixture.

    Member k checkpoints under ``workdir/member-kk/``; a finished member is not retrained when
    the run is repeated. With ``artifact`` the ensemble is saved there (atomically); its
    ``metadata["training"]`` holds what the manifest records.
    """
    pos, vel = _check_arrays(pos, vel)
    started = time.perf_counter()
    members: list[PhaseSpaceFlow] = []
    reports: list[MemberReport] = []
    for k in range(cfg.ensemble_size):
        member_seed = derive_seed(seed, "member", k)
        member_dir = None if workdir is None else Path(workdir) / f"member-{k:02d}"
        model, report = fit_phase_space_flow(pos, vel, cfg, member_seed, centre, radius,
                                             member_dir)
        members.append(model)
        reports.append(report)
        log.info("member %d/%d trained: validation loss %.5g (position) %.5g (velocity)", k + 1,
                 cfg.ensemble_size, report.position.best_validation_loss,
                 report.velocity.best_validation_loss)
    device = members[0].device
    training = {
        "particles": len(pos),
        "data_sha256": data_sha256(pos, vel),
        "seed": int(seed),
        "wall_time_s": time.perf_counter() - started,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": cfg.model_dump(mode="json"),
        "members": [
            {
                "seed": r.seed,
                "best_validation_loss": {
                    "position": r.position.best_validation_loss,
                    "velocity": r.velocity.best_validation_loss,
                },
                "epochs": {"position": r.position.epochs, "velocity": r.velocity.epochs},
                "resumed_from_epoch": {
                    "position": r.position.resumed_from_epoch,
                    "velocity": r.velocity.resumed_from_epoch,
                },
                "wall_time_s": r.wall_time_s,
            }
            for r in reports
        ],
    }
    ensemble = FlowEnsemble(members, metadata={"training": training})
    if artifact is not None:
        save_artifact(ensemble, artifact)
    return ensemble
