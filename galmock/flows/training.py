r"""Train one region's flows: arrays in, a :class:`FlowEnsemble` (and optionally an artifact) out.

Every number is a :class:`TrainingRecipe` value (``flows.training`` in a job file). Positions
are preprocessed (fitted on all the region's training particles: the ball map with ``radial_c``
for a sphere plan, else the log-radial map with ``log_radial_scale_kpc``) and
``validation_fraction`` of the rows is held out for validation. Then, by ``method``:

- ``flow-matching`` (families with a vector field, the CNF; others fall back to likelihood):
  each epoch is ``batches_per_epoch`` Adam steps on the conditional flow-matching loss of
  ``batch_rows`` rows drawn with replacement, the learning rate decayed from ``learning_rate``
  to 0 by a cosine over ``max_epochs``; the validation loss is the same loss on the validation
  rows with fixed noise (so epochs compare on paired draws); training stops after
  ``patience_epochs`` epochs without improvement or at ``max_epochs``, keeping the best state.
  One step costs one network evaluation, not an RK4 solve with the trace.
- ``likelihood`` (GalaxyFlow §3.3): split the training rows into ``batches_per_epoch``
  mini-batches per epoch, minimise the negative log-likelihood with Adam at ``learning_rate``
  until the validation loss has not improved for ``patience_epochs`` epochs, then restart from
  the best state at ``finetune_learning_rate`` with the same rule, and keep the best state
  (``max_epochs`` caps each of the two phases).

The position flow p(r) trains first, then the velocity flow p(v | r); an ensemble repeats this
for ``ensemble_size`` seeds.

Rows may carry training weights (a region's thinned margin, :mod:`galmock.plan`): flow matching
then draws its batch rows with probability proportional to the weight, likelihood training
weights each row's negative log-likelihood, and both validation losses are weighted means, so
the flow fits the weighted density.

What the flows are is a :class:`~galmock.flows.families.FlowSpec` (family, network size, family
options); where and how fast they train is a :class:`Runtime`, which never changes the weights
(on CPU, for a fixed thread count). :func:`region_recipe` is what a trained model depends on:
the artifact records it, and a model whose recipe differs from the job's is stale.

Runs are resumable and reproducible: every ``checkpoint_every_epochs`` epochs (and at each phase
end) the model, optimizer, shuffling generator, early-stopping state, epoch and phase go to an
atomically replaced checkpoint (:mod:`galmock.flows.checkpoint`), so a killed run restarted with
the same inputs ends bit-for-bit where an uninterrupted run ends (CPU, same thread count). All
randomness comes from explicit ``torch.Generator`` objects (or a forked global RNG for the weight
initialisation) seeded from ``seed`` (:func:`galmock.seeds.derive_seed`); the global RNG is left
untouched. No MPI and no run-directory layout here: the per-region driver passes arrays and
paths.

Example:
    >>> import numpy as np, torch
    >>> from galmock.flows.families import FlowSpec, NetworkOptions, family
    >>> rng = np.random.default_rng(0)
    >>> pos = rng.uniform(-1, 1, (300, 3))
    >>> pos = pos[np.linalg.norm(pos, axis=1) < 1]
    >>> vel = rng.normal(0, 20, pos.shape)
    >>> spec = FlowSpec("maf", NetworkOptions(hidden_features=8, hidden_layers=1,
    ...                                       activation="gelu"),
    ...                 family("maf").parse_options({"transforms": 1}))
    >>> recipe = TrainingRecipe(method="likelihood", radial_c=1.000001, log_radial_scale_kpc=1.0,
    ...                         log_radial_power=1.0, radial_calibration=True,
    ...                         validation_fraction=0.2, batches_per_epoch=2, batch_rows=64,
    ...                         learning_rate=1e-2, finetune_learning_rate=1e-3,
    ...                         patience_epochs=1, max_epochs=2, ensemble_size=1)
    >>> ensemble = fit_ensemble(pos, vel, spec, recipe, seed=3, centre=(0, 0, 0), radius=1.0,
    ...                         runtime=Runtime(device="cpu"))
    >>> pos_s, vel_s, rejected = ensemble.sample(100, torch.Generator().manual_seed(7))
    >>> pos_s.shape, len(ensemble)
    (torch.Size([100, 3]), 1)
    >>> ensemble.metadata["training"]["config"] == region_recipe(spec, recipe)
    True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from galmock import preempt
from galmock.errors import GalmockError, InputError
from galmock.flows.artifact import data_sha256, save_artifact
from galmock.flows.base import (
    DensityFlow,
    resolve_chunk_rows,
    resolve_compile,
    resolve_device,
)
from galmock.flows.checkpoint import fingerprint, restore_checkpoint, save_checkpoint, tensor_sha256
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.families import FlowSpec
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.flows.radial import RadialCalibration
from galmock.sections import PositiveFloat, PositiveInt, Section
from galmock.seeds import derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "galmock.checkpoint/1"
PHASES = ("main", "finetune", "done")


class TrainingRecipe(Section):
    """``flows.training``: how a region model is fitted to its particles (GalaxyFlow §3.3).

    Every field changes the trained weights, so all of them are part of :func:`region_recipe`.
    """

    method: Literal["flow-matching", "likelihood"]
    radial_c: Annotated[float, Field(gt=1)]
    log_radial_scale_kpc: PositiveFloat
    log_radial_power: Annotated[float, Field(gt=0, le=1)]
    radial_calibration: bool
    validation_fraction: Annotated[float, Field(gt=0, lt=1)]
    batches_per_epoch: PositiveInt
    batch_rows: PositiveInt
    learning_rate: PositiveFloat
    finetune_learning_rate: PositiveFloat
    patience_epochs: PositiveInt
    max_epochs: PositiveInt
    ensemble_size: PositiveInt

    def loop_settings(self) -> dict[str, Any]:
        """The settings one flow's fit reads (:func:`fit_density_flow`): the recipe without
        ``radial_c`` and the log-radial map's settings (they act through the data), the radial
        calibration (fitted after the position flow) and ``ensemble_size`` (one member's fit
        does not depend on how many there are)."""
        return self.model_dump(mode="json",
                               exclude={"radial_c", "log_radial_scale_kpc", "log_radial_power",
                                        "radial_calibration", "ensemble_size"})


@dataclass(frozen=True)
class Runtime:
    r"""Where and how fast training runs; none of it changes the weights (CPU, fixed threads).

    Arguments:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:1``, ...
        chunk_rows: rows per chunk of the validation loss and of the sampler (``auto``: 16384
            on CPU, 2^20 on CUDA).
        compile: ``torch.compile`` the CNF sampler (``auto``: on CUDA only).
        checkpoint_every_epochs: epochs between checkpoints (also at every phase end).
    """

    device: str = "auto"
    chunk_rows: int | Literal["auto"] = "auto"
    compile: bool | Literal["auto"] = "auto"
    checkpoint_every_epochs: int = 10


def region_recipe(spec: FlowSpec, recipe: TrainingRecipe) -> dict[str, Any]:
    r"""What a trained region model depends on besides its particles and seed, laid out as the
    job file's ``flows`` section: ``kind``, the network size, the family's options under its
    name, and ``training``. The artifact manifest records it as ``training.config``; a model
    whose record differs from the job's (:func:`recipe_changes`) is stale.

    Example:
        >>> from galmock.flows.families import FlowSpec, NetworkOptions, family
        >>> spec = FlowSpec("nsf", NetworkOptions(hidden_features=8, hidden_layers=1,
        ...                                       activation="gelu"), family("nsf").parse_options())
        >>> recipe = TrainingRecipe(method="flow-matching", radial_c=1.000001,
        ...                         log_radial_scale_kpc=1.0, log_radial_power=1.0,
        ...                         radial_calibration=True,
        ...                         validation_fraction=0.2,
        ...                         batches_per_epoch=2, batch_rows=64, learning_rate=1e-2,
        ...                         finetune_learning_rate=1e-3, patience_epochs=1,
        ...                         max_epochs=2, ensemble_size=1)
        >>> region = region_recipe(spec, recipe)
        >>> list(region)
        ['kind', 'hidden_features', 'hidden_layers', 'activation', 'nsf', 'training']
        >>> region["nsf"], region["training"]["max_epochs"]
        ({'transforms': 5, 'spline_bins': 8}, 2)
    """
    return {**spec.to_dict(), "training": recipe.model_dump(mode="json")}


def recipe_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    r"""The dotted keys of ``current`` whose value ``recorded`` does not have (both nested
    recipe dicts, e.g. a manifest's ``training.config`` and :func:`region_recipe`).

    Example:
        >>> recipe_changes({"kind": "cnf", "training": {"max_epochs": 5}},
        ...                {"kind": "cnf", "training": {"max_epochs": 6}, "cnf": {"rk4_steps": 4}})
        ['training.max_epochs', 'cnf.rk4_steps']
    """
    then, now = _flatten(recorded), _flatten(current)
    return [k for k, v in now.items() if k not in then or then[k] != v]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def new_flow(spec: FlowSpec, features: int, context: int, seed: int) -> DensityFlow:
    r"""A freshly initialised flow of ``spec``, its weights a function of ``seed`` alone.

    torch's layers initialise from the global RNG; it is forked so callers' streams are unchanged.

    Example:
        >>> from galmock.flows.families import FlowSpec, NetworkOptions, family
        >>> spec = FlowSpec("cnf", NetworkOptions(hidden_features=4, hidden_layers=1,
        ...                                       activation="tanh"), family("cnf").parse_options())
        >>> a, b = new_flow(spec, 3, 0, seed=1), new_flow(spec, 3, 0, seed=1)
        >>> all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
        True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(features, context)


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
    recipe: TrainingRecipe,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    label: str = "flow",
    *,
    runtime: Runtime | None = None,
    weight: Tensor | None = None,
) -> FitReport:
    r"""Train ``flow`` on rows ``x`` (with ``context``) in place; the best weights are kept.

    Arguments:
        flow: a new flow (:func:`new_flow`) on its device.
        x: preprocessed rows (n, features); they move to the flow's device and dtype.
        context: preprocessed conditions (n, context), or ``None``.
        recipe: the recipe's loop settings (:meth:`TrainingRecipe.loop_settings`) are used.
        seed: seeds the validation split ``(seed, "split")`` and the shuffling
            ``(seed, label, "shuffle")``.
        checkpoint_dir: checkpoint there, and resume from a matching checkpoint.
        label: names the flow in logs, errors and its shuffling seed.
        runtime: ``chunk_rows`` (validation loss) and ``checkpoint_every_epochs`` (default:
            :class:`Runtime`'s).
        weight: positive training weight per row (n,), or ``None`` for equal weights.

    Raises:
        TrainingError: a training or validation loss is not finite (names the epoch).
        galmock.preempt.Preempted: a preemption signal arrived (after a checkpoint).
    """
    runtime = runtime or Runtime()
    device = next(flow.parameters()).device
    dtype = next(flow.parameters()).dtype
    x = x.to(device, dtype)
    context = None if context is None else context.to(device, dtype)
    if weight is not None:
        weight = weight.to(device, torch.float64)
    n = x.shape[0]
    n_val = max(1, round(recipe.validation_fraction * n))
    n_train = n - n_val
    matching = recipe.method == "flow-matching" and flow.flow_matching
    if not matching and n_train < recipe.batches_per_epoch:
        raise InputError(
            f"{label}: {n} rows leave {n_train} for training, fewer than "
            f"flows.training.batches_per_epoch = {recipe.batches_per_epoch}"
        )
    # The split has its own generator, so a resumed run recomputes it instead of storing it.
    order = torch.randperm(n, generator=_generator(derive_seed(seed, "split"))).to(device)
    val_idx, train_idx = order[:n_val], order[n_val:]
    shuffle = _generator(derive_seed(seed, label, "shuffle"))
    optimizer = torch.optim.Adam(flow.parameters(), lr=recipe.learning_rate)
    state = _State()
    best: dict[str, Tensor] = _clone_state(flow)
    key = _fingerprint(flow, x, context, recipe, seed, label, weight)
    # Weighted flow matching draws batch rows by inverse CDF of the weights (torch.multinomial
    # is limited to 2^24 categories).
    cdf = None if weight is None else torch.cumsum(weight[train_idx], 0)
    chunk = resolve_chunk_rows(runtime.chunk_rows, device)

    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        restored = restore_checkpoint(checkpoint_dir, CHECKPOINT_FORMAT, key, flow, optimizer,
                                      shuffle)
        if restored is not None:
            state = _State(**restored.state)
            best = {k: v.to(device) for k, v in restored.extra["best"].items()}
            state.resumed_from_epoch.append(state.epoch)
            log.info("%s: resumed from %s at epoch %d (%s phase)", label, checkpoint_dir,
                     state.epoch, state.phase)

    started = time.perf_counter() - state.wall_time_s
    last_saved = state.epoch
    while state.phase != "done":
        if matching:
            # Cosine decay to 0 over max_epochs (from the state, so a resumed run agrees).
            for group in optimizer.param_groups:
                group["lr"] = recipe.learning_rate * 0.5 * (
                    1 + math.cos(math.pi * state.phase_epoch / recipe.max_epochs))
        lr = optimizer.param_groups[0]["lr"]
        flow.train()
        if matching:
            # batches_per_epoch steps of batch_rows rows drawn with replacement.
            size = min(recipe.batch_rows, n_train)
            batches = [torch.randint(n_train, (size,), generator=shuffle).to(device)
                       if cdf is None else _weighted_draw(cdf, size, shuffle)
                       for _ in range(recipe.batches_per_epoch)]
        else:
            batches = list(torch.randperm(n_train, generator=shuffle).to(device).chunk(
                recipe.batches_per_epoch
            ))
        for i, batch in enumerate(batches):
            rows = train_idx[batch]
            ctx = None if context is None else context[rows]
            if matching:
                loss = flow.flow_matching_loss(x[rows], ctx, shuffle)
            elif weight is None:
                loss = -flow.log_prob(x[rows], ctx).mean()
            else:
                w = weight[rows]
                loss = -(flow.log_prob(x[rows], ctx) * w.to(dtype)).sum() / w.sum().to(dtype)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{label}: non-finite training loss ({loss.item()}) at epoch "
                    f"{state.epoch + 1} ({state.phase} phase, batch {i + 1}/{len(batches)}, "
                    f"learning rate {lr:g}); lower flows.training.learning_rate or check the input "
                    "for extreme values"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        flow.eval()
        val_ctx = None if context is None else context[val_idx]
        val_w = None if weight is None else weight[val_idx]
        if matching:
            # The same noise every epoch: epochs are compared on paired draws.
            val_loss = _mean_matching_loss(flow, x[val_idx], val_ctx,
                                           derive_seed(seed, label, "validation"), chunk, val_w)
        else:
            val_loss = _mean_nll(flow, x[val_idx], val_ctx, chunk, val_w)
        state.epoch += 1
        state.phase_epoch += 1
        state.epochs[state.phase] += 1
        state.history.append(val_loss)
        if not math.isfinite(val_loss):
            raise TrainingError(
                f"{label}: non-finite validation loss ({val_loss}) at epoch {state.epoch} "
                f"({state.phase} phase, learning rate {lr:g}); lower flows.training.learning_rate"
            )
        if val_loss < state.best_loss:
            state.best_loss, state.bad_epochs = val_loss, 0
            best = _clone_state(flow)
        else:
            state.bad_epochs += 1
        if state.bad_epochs >= recipe.patience_epochs or state.phase_epoch >= recipe.max_epochs:
            # Phase end: continue (or finish) from the best state, with a fresh optimizer.
            flow.load_state_dict(best)
            log.info("%s: %s phase ended after %d epochs, best validation loss %.6g", label,
                     state.phase, state.phase_epoch, state.best_loss)
            # Flow matching has one phase: its learning rate has decayed to 0 by max_epochs.
            state.phase = "finetune" if state.phase == "main" and not matching else "done"
            state.phase_epoch = state.bad_epochs = 0
            optimizer = torch.optim.Adam(flow.parameters(), lr=recipe.finetune_learning_rate)
        # A preemption signal (galmock.preempt) checkpoints now and stops the run.
        stop = checkpoint_dir is not None and state.phase != "done" and preempt.requested()
        if checkpoint_dir is not None and (
            state.epoch - last_saved >= runtime.checkpoint_every_epochs or state.phase_epoch == 0
            or stop
        ):
            state.wall_time_s = time.perf_counter() - started
            save_checkpoint(checkpoint_dir, CHECKPOINT_FORMAT, key, flow, optimizer, shuffle,
                            asdict(state), {"best": best})
            last_saved = state.epoch
        if stop:
            raise preempt.Preempted(f"{label}: checkpointed at epoch {state.epoch}")

    state.wall_time_s = time.perf_counter() - started
    return FitReport(label, state.best_loss, dict(state.epochs), state.wall_time_s,
                     list(state.resumed_from_epoch), list(state.history))


def _weighted_draw(cdf: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``size`` row indices drawn with replacement, row i with probability ∝ its weight
    (``cdf``: the cumulative weights); uniforms from ``generator`` on the CPU."""
    u = torch.rand(size, generator=generator, dtype=torch.float64).to(cdf.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1)


def _mean_matching_loss(
    flow: DensityFlow, x: Tensor, context: Tensor | None, seed: int, chunk: int,
    weight: Tensor | None = None,
) -> float:
    generator = _generator(seed)
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            sl = slice(start, start + chunk)
            c = None if context is None else context[sl]
            w = None if weight is None else weight[sl]
            mean = float(flow.flow_matching_loss(x[sl], c, generator, w))
            total += mean * (x[sl].shape[0] if w is None else float(w.sum()))
    return total / (x.shape[0] if weight is None else float(weight.sum()))


def _mean_nll(
    flow: DensityFlow, x: Tensor, context: Tensor | None, chunk: int,
    weight: Tensor | None = None,
) -> float:
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            sl = slice(start, start + chunk)
            logp = flow.log_prob(x[sl], None if context is None else context[sl]).double()
            total -= float(logp.sum() if weight is None else (logp * weight[sl]).sum())
    return total / (x.shape[0] if weight is None else float(weight.sum()))


def _clone_state(flow: DensityFlow) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _fingerprint(
    flow: DensityFlow, x: Tensor, context: Tensor | None, recipe: TrainingRecipe, seed: int,
    label: str, weight: Tensor | None = None,
) -> str:
    """What a checkpoint must match to be resumed: data (and weights), architecture, loop
    settings, seed, label."""
    return fingerprint({
        "architecture": flow.architecture(),
        "recipe": recipe.loop_settings(),
        "seed": seed,
        "label": label,
        "data": tensor_sha256(x, context, weight),
    })  # fmt: skip


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


def _check_weight(weight: np.ndarray, n: int) -> np.ndarray:
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    if weight.shape != (n,):
        raise InputError(f"training weights must have shape ({n},), got {weight.shape}")
    bad = ~(np.isfinite(weight) & (weight > 0))
    if bad.any():
        raise InputError(f"training weights: {int(bad.sum())} are not finite and positive "
                         f"(first: row {int(np.argmax(bad))}, {weight[np.argmax(bad)]})")
    return weight


def fit_phase_space_flow(
    pos: np.ndarray,
    vel: np.ndarray,
    spec: FlowSpec,
    recipe: TrainingRecipe,
    seed: int,
    centre: Sequence[float],
    radius: float | None,
    workdir: str | Path | None = None,
    *,
    runtime: Runtime | None = None,
    weight: np.ndarray | None = None,
) -> tuple[PhaseSpaceFlow, MemberReport]:
    r"""Train p(r) then p(v | r) on one region's particles (kpc, km/s; float64 arrays (n, 3)).

    Arguments:
        pos, vel: the training particles.
        spec: both flows' family, network size and options.
        recipe: the training recipe (``radial_c`` and the loop settings).
        seed: the member's seed; flow ``label`` initialises from ``(seed, label, "init")``.
        centre, radius: the region's ball (r_c, r_max), the paper's map; with ``radius``
            ``None`` the log-radial map about ``centre`` with ``recipe.log_radial_scale_kpc``.
        workdir: checkpoints go to ``workdir/{position,velocity}.ckpt``.
        runtime: device, chunking, compile flag and checkpoint interval (default:
            :class:`Runtime`'s).
        weight: training weight per particle (n,), ``None`` for equal weights; both flows fit
            the weighted density (p(v | r) needs them only where weights depend on more than r).
    """
    runtime = runtime or Runtime()
    pos, vel = _check_arrays(pos, vel)
    w = None if weight is None else torch.from_numpy(_check_weight(weight, len(pos)))
    device = resolve_device(runtime.device)
    if radius is None:
        pos_pre = PositionPreprocessing.fit_log_radial(pos, centre, recipe.log_radial_scale_kpc,
                                                       recipe.log_radial_power)
    else:
        pos_pre = PositionPreprocessing.fit(pos, centre, radius, recipe.radial_c)
    vel_pre = VelocityPreprocessing.fit(vel)
    v_max = float(np.linalg.norm(vel, axis=1).max())
    # Preprocessed in float64, trained in float32 (the networks' precision).
    y = pos_pre.forward(torch.from_numpy(pos)).float()
    yv = vel_pre.forward(torch.from_numpy(vel)).float()

    flows: dict[str, DensityFlow] = {}
    reports: dict[str, FitReport] = {}

    def fit(label: str, x: Tensor, context: Tensor | None) -> None:
        flow = new_flow(spec, 3, 0 if context is None else 3,
                        derive_seed(seed, label, "init")).to(device)
        ckpt = None if workdir is None else Path(workdir) / f"{label}.ckpt"
        reports[label] = fit_density_flow(flow, x, context, recipe, seed, ckpt, label,
                                          runtime=runtime, weight=w)
        flows[label] = flow.eval()

    fit("position", y, None)
    radial = None
    if radius is None and recipe.radial_calibration:
        radial = calibrate_radii(flows["position"], pos_pre, pos, weight, seed,
                                 resolve_chunk_rows(runtime.chunk_rows, device))
    if radial is not None:
        # The velocity flow is conditioned on the position flow's own coordinates of each
        # particle, which the calibration has moved.
        y = pos_pre.forward(radial.inverse_and_log_abs_det(torch.from_numpy(pos))[0]).float()
    fit("velocity", yv, y)
    model = PhaseSpaceFlow(
        flows["position"], flows["velocity"], pos_pre, vel_pre, v_max,
        chunk_rows=resolve_chunk_rows(runtime.chunk_rows, device),
        compile=resolve_compile(runtime.compile, device), radial=radial,
    )
    return model, MemberReport(seed, reports["position"], reports["velocity"])


def calibration_draws(n: int) -> int:
    """Flow draws for calibrating ``n`` training particles' radii: 8 per particle (so the
    flow's quantiles are 8x less noisy than the particles'), within [20 000, 2 000 000]."""
    return int(min(max(8 * n, 20_000), 2_000_000))


def calibrate_radii(
    position: DensityFlow, pos_pre: PositionPreprocessing, pos: np.ndarray,
    weight: np.ndarray | None, seed: int, chunk_rows: int = 16384,
) -> RadialCalibration | None:
    r"""The :class:`~galmock.flows.radial.RadialCalibration` that gives the trained
    ``position`` flow the radial distribution of the particles ``pos`` (with ``weight``) about
    the log-radial map's centre, from :func:`calibration_draws` draws seeded by
    ``(seed, "radial")``, so a resumed fit calibrates identically."""
    generator = _generator(derive_seed(seed, "radial"))
    z = torch.randn((calibration_draws(len(pos)), 3), generator=generator)
    weights = next(position.parameters())
    with torch.no_grad():
        y = position.generate(z.to(weights.device, weights.dtype), chunk_rows=chunk_rows)
    centre = np.asarray(pos_pre.centre)
    model_r = torch.linalg.vector_norm(pos_pre.inverse(y).cpu() - torch.from_numpy(centre),
                                       dim=1).numpy()
    return RadialCalibration.fit(model_r, np.linalg.norm(pos - centre, axis=1), pos_pre.centre,
                                 weight)


def fit_ensemble(
    pos: np.ndarray,
    vel: np.ndarray,
    spec: FlowSpec,
    recipe: TrainingRecipe,
    seed: int,
    centre: Sequence[float],
    radius: float | None,
    workdir: str | Path | None = None,
    artifact: str | Path | None = None,
    *,
    runtime: Runtime | None = None,
    weight: np.ndarray | None = None,
) -> FlowEnsemble:
    r"""Train ``recipe.ensemble_size`` members into an equal-weight mixture.

    Arguments:
        pos, vel, spec, recipe, centre, radius, runtime, weight: as for
            :func:`fit_phase_space_flow`.
        seed: the region's seed; member k trains with ``derive_seed(seed, "member", k)``.
        workdir: member k checkpoints under ``workdir/member-kk/``; a finished member is not
            retrained when the run is repeated.
        artifact: save the ensemble there (atomically).

    The ensemble's ``metadata["training"]`` holds what the manifest records, its ``config``
    being :func:`region_recipe`.
    """
    pos, vel = _check_arrays(pos, vel)
    started = time.perf_counter()
    members: list[PhaseSpaceFlow] = []
    reports: list[MemberReport] = []
    for k in range(recipe.ensemble_size):
        member_seed = derive_seed(seed, "member", k)
        member_dir = None if workdir is None else Path(workdir) / f"member-{k:02d}"
        model, report = fit_phase_space_flow(pos, vel, spec, recipe, member_seed, centre, radius,
                                             member_dir, runtime=runtime, weight=weight)
        members.append(model)
        reports.append(report)
        log.info("member %d/%d trained: validation loss %.5g (position) %.5g (velocity)", k + 1,
                 recipe.ensemble_size, report.position.best_validation_loss,
                 report.velocity.best_validation_loss)
    device = members[0].device
    training = {
        "particles": len(pos),
        # Sum of the training weights: the particles the weighted training set stands for.
        "weighted_particles": float(len(pos) if weight is None else np.sum(weight)),
        "data_sha256": data_sha256(pos, vel, weight),
        "seed": int(seed),
        "wall_time_s": time.perf_counter() - started,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": region_recipe(spec, recipe),
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
