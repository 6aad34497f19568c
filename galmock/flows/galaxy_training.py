r"""Training a conditional galaxy model (GalacticFlow, Wolf & Buck 2023) on a suite of galaxies.

Each training row is one star of one galaxy (its 9-D :data:`~galmock.flows.galaxy_model.COLUMNS`)
conditioned on that galaxy's global parameters. The model is a
:class:`~galmock.flows.conditional_nsf.ConditionalNSF` sized by :class:`GalaxyFlowOptions`,
trained as the paper does by :class:`GalaxyTrainingRecipe`: RAdam, mini-batches of
``batch_size`` rows, an exponentially decaying learning rate (:func:`learning_rate`) and a fixed
number of ``epochs``. Both are the job's ``suite`` keys (the ``suite`` section extends them).
Checkpoints (:mod:`galmock.flows.checkpoint`) make a killed run resume where it stopped, bit for
bit on the same CPU threads; a checkpoint is resumed only for the same data, architecture,
recipe (the number of epochs aside: a run may be extended) and seed. The galaxies are any
objects with ``stars`` (n, 9) and ``parameters`` (:class:`TrainingGalaxy`): this module reads no
job file and no snapshot.

Example:
    >>> import numpy as np
    >>> from dataclasses import dataclass
    >>> from galmock.flows.galaxy_model import global_parameters
    >>> @dataclass
    ... class Galaxy:
    ...     stars: np.ndarray
    ...     parameters: dict
    >>> rng = np.random.default_rng(0)
    >>> def galaxy(scale):
    ...     stars = rng.normal(0, scale, (200, 9))
    ...     return Galaxy(stars, global_parameters(np.full(200, 1e8 * scale), rng.uniform(1, 13,
    ...                   200), rng.normal(-0.3 * scale, 0.2, 200)))
    >>> options = GalaxyFlowOptions(layers=1, hidden_features=8, hidden_layers=1, spline_bins=4,
    ...                             spline_bound=5.0, activation="relu")
    >>> recipe = GalaxyTrainingRecipe(batch_size=100, epochs=2, learning_rate=1e-3,
    ...                               lr_decay=0.998, lr_decay_every_steps=10,
    ...                               lr_slow_below=3e-6, lr_slow_decay_every_steps=120)
    >>> model, record = fit_galaxy_model([galaxy(1.0), galaxy(2.0)], options, recipe, seed=0,
    ...                                  validation=[galaxy(1.5)], device="cpu")
    >>> record["epochs"], record["steps"], len(record["validation_nll"])
    (2, 8, 2)
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
import torch
from pydantic import Field

from galmock.flows.base import Activation, resolve_device
from galmock.flows.checkpoint import fingerprint, restore_checkpoint, save_checkpoint
from galmock.flows.conditional_nsf import ConditionalNSF
from galmock.flows.galaxy_model import (
    COLUMNS,
    PARAMETERS,
    GalaxyModel,
    ZScore,
    condition_features,
)
from galmock.flows.training import TrainingError
from galmock.sections import NonNegativeFloat, PositiveFloat, PositiveInt, Section, section_dump
from galmock.seeds import derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "galmock.suite-checkpoint/1"
VALIDATION_ROWS = 20_000  # rows of the left-out galaxies scored after every epoch


class GalaxyFlowOptions(Section):
    """The galaxy model's architecture (``suite`` keys): ``layers`` × (1×1 convolution + double
    RQS coupling), ``spline_bins`` bins on [-spline_bound, spline_bound], coupling networks of
    ``hidden_layers`` × ``hidden_features`` with ``activation``."""

    layers: PositiveInt
    hidden_features: PositiveInt
    hidden_layers: PositiveInt
    spline_bins: Annotated[int, Field(ge=2)]
    spline_bound: PositiveFloat
    activation: Activation

    def build(self) -> ConditionalNSF:
        """A new flow over the 9 star columns conditioned on the 4 parameters (global RNG)."""
        return ConditionalNSF(len(COLUMNS), len(PARAMETERS), self.layers, self.hidden_features,
                              self.hidden_layers, self.spline_bins, self.spline_bound,
                              self.activation)


class GalaxyTrainingRecipe(Section):
    """The galaxy model's training (``suite`` keys): RAdam on batches of ``batch_size`` rows for
    ``epochs`` epochs, the learning rate of :func:`learning_rate`."""

    batch_size: PositiveInt
    epochs: PositiveInt
    learning_rate: PositiveFloat
    lr_decay: Annotated[float, Field(gt=0, le=1)]
    lr_decay_every_steps: PositiveInt
    lr_slow_below: NonNegativeFloat
    lr_slow_decay_every_steps: PositiveInt


class TrainingGalaxy(Protocol):
    """What training reads of a galaxy: its stars (n, 9) in ``COLUMNS`` order and its global
    parameters by name (``PARAMETERS``)."""

    @property
    def stars(self) -> np.ndarray: ...

    @property
    def parameters(self) -> Mapping[str, float]: ...


def learning_rate(step: int, recipe: GalaxyTrainingRecipe) -> float:
    r"""The paper's schedule: lr0 · γ^k, k growing every ``lr_decay_every_steps`` steps, and
    every ``lr_slow_decay_every_steps`` once the rate is below ``lr_slow_below``.

    Example:
        >>> recipe = GalaxyTrainingRecipe(batch_size=1024, epochs=10, learning_rate=9e-5,
        ...                               lr_decay=0.998, lr_decay_every_steps=10,
        ...                               lr_slow_below=3e-6, lr_slow_decay_every_steps=120)
        >>> learning_rate(0, recipe), round(learning_rate(10, recipe), 12)
        (9e-05, 8.982e-05)
    """
    lr0, gamma = recipe.learning_rate, recipe.lr_decay
    if gamma >= 1 or recipe.lr_slow_below <= 0 or lr0 < recipe.lr_slow_below:
        fast = math.inf
    else:  # decays until the rate first drops below lr_slow_below
        fast = max(0, math.ceil(math.log(recipe.lr_slow_below / lr0) / math.log(gamma)))
    k = step // recipe.lr_decay_every_steps
    if k > fast:
        k = fast + (step - fast * recipe.lr_decay_every_steps) // recipe.lr_slow_decay_every_steps
    return lr0 * gamma**k


def training_rows(
    galaxies: Sequence[TrainingGalaxy], rows: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Every galaxy's stars stacked, each row with its galaxy's parameters (physical units);
    at most ``rows`` of them (a seeded subset, kept in order) when given."""
    stars, params = [], []
    for g in galaxies:
        stars.append(g.stars)
        vec = np.array([g.parameters[k] for k in PARAMETERS])
        params.append(np.broadcast_to(vec, (len(g.stars), len(PARAMETERS))))
    x, p = np.concatenate(stars), np.concatenate(params)
    if rows is not None and len(x) > rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), rows, replace=False))
        x, p = x[keep], p[keep]
    return x, p


def fit_galaxy_model(
    train: Sequence[TrainingGalaxy],
    options: GalaxyFlowOptions,
    recipe: GalaxyTrainingRecipe,
    seed: int,
    validation: Sequence[TrainingGalaxy] = (),
    workdir: str | Path | None = None,
    *,
    device: str = "auto",
    checkpoint_every_epochs: int = 1,
) -> tuple[GalaxyModel, dict[str, Any]]:
    r"""Train a :class:`~galmock.flows.galaxy_model.GalaxyModel` on the ``train`` galaxies.

    Arguments:
        train: the training galaxies.
        options: the flow's architecture (a ``suite`` section will do: it extends it).
        recipe: the training recipe (likewise).
        seed: initialises from ``(seed, "suite", "init")``, shuffles from
            ``(seed, "suite", "shuffle")``.
        validation: left-out galaxies, scored (``VALIDATION_ROWS`` rows) after every epoch.
        workdir: checkpoint to ``workdir/checkpoint`` every ``checkpoint_every_epochs``
            epochs, and resume from a checkpoint of the same data, recipe and seed.
        device: ``auto`` (CUDA when available), ``cpu``, ...

    Returns:
        The model and its training record (losses per epoch, wall time, resumes), which is
        also its ``metadata["training"]``.
    """
    dev = resolve_device(device)
    x, p = training_rows(train)
    cond = condition_features(np.array([[g.parameters[k] for k in PARAMETERS] for g in train]))
    data_pre = ZScore.fit(x, "suite training stars")
    cond_pre = ZScore.fit(cond, "suite galaxy parameters (do the galaxies differ?)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "suite", "init"))
        flow = options.build()
    model = GalaxyModel(flow, data_pre, cond_pre).to(dev)
    y, c = model.encode(x, p)
    val = None
    if validation:
        vx, vp = training_rows(validation, VALIDATION_ROWS, derive_seed(seed, "suite", "val"))
        val = model.encode(vx, vp)
    optimizer = torch.optim.RAdam(model.flow.parameters(), lr=learning_rate(0, recipe))
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "suite", "shuffle"))
    state: dict[str, Any] = {"epoch": 0, "step": 0, "train_loss": [], "validation_loss": [],
                             "wall_time_s": 0.0, "resumed_from_epoch": []}
    key = _fingerprint(model, x, p, recipe, seed)
    ckpt = Path(workdir) / "checkpoint" if workdir is not None else None
    if ckpt is not None:
        restored = restore_checkpoint(ckpt, CHECKPOINT_FORMAT, key, model.flow, optimizer,
                                      shuffle)
        if restored is not None:
            state.update(restored.state)
            state["resumed_from_epoch"].append(state["epoch"])
            log.info("suite: resumed from %s at epoch %d", ckpt, state["epoch"])
    started = time.perf_counter() - state["wall_time_s"]
    while state["epoch"] < recipe.epochs:
        model.flow.train()
        total = 0.0
        order = torch.randperm(len(y), generator=shuffle).to(dev)
        for rows in order.split(recipe.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(state["step"], recipe)
            loss = -model.flow.log_prob(y[rows], c[rows]).mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"suite: non-finite training loss at epoch "
                                    f"{state['epoch'] + 1}, step {state['step']}; lower "
                                    "suite.learning_rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            total += float(loss.detach()) * len(rows)
        model.flow.eval()
        state["epoch"] += 1
        state["train_loss"].append(total / len(y) - data_pre.log_abs_det())
        if val is not None:
            with torch.no_grad():
                nll = -float(model.flow.log_prob(*val).double().mean())
            state["validation_loss"].append(nll - data_pre.log_abs_det())
        log.info("suite: epoch %d/%d: training NLL %.4f, validation NLL %s", state["epoch"],
                 recipe.epochs, state["train_loss"][-1],
                 f"{state['validation_loss'][-1]:.4f}" if val is not None else "-")
        if ckpt is not None and (state["epoch"] % checkpoint_every_epochs == 0
                                 or state["epoch"] == recipe.epochs):
            state["wall_time_s"] = time.perf_counter() - started
            save_checkpoint(ckpt, CHECKPOINT_FORMAT, key, model.flow, optimizer, shuffle, state)
    state["wall_time_s"] = time.perf_counter() - started
    record = {
        "seed": int(seed),
        "rows": len(y),
        "epochs": state["epoch"],
        "steps": state["step"],
        "train_nll": state["train_loss"],
        "validation_nll": state["validation_loss"],
        "wall_time_s": state["wall_time_s"],
        "resumed_from_epoch": state["resumed_from_epoch"],
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": galaxy_recipe(options, recipe),
    }
    model.metadata["training"] = record
    return model, record


def galaxy_recipe(options: GalaxyFlowOptions, recipe: GalaxyTrainingRecipe) -> dict[str, Any]:
    """What a trained galaxy model depends on besides its galaxies and seed (recorded as its
    manifest's ``training.config``): the architecture's and the recipe's keys."""
    return {**section_dump(GalaxyFlowOptions, options),
            **section_dump(GalaxyTrainingRecipe, recipe)}


def _fingerprint(model: GalaxyModel, x: np.ndarray, p: np.ndarray, recipe: GalaxyTrainingRecipe,
                 seed: int) -> str:
    digest = _arrays_sha256(x, p)
    # Not the number of epochs: the weights up to the last common epoch do not depend on it,
    # so a run may be extended.
    settings = section_dump(GalaxyTrainingRecipe, recipe)
    settings.pop("epochs")
    return fingerprint({"arch": model.flow.architecture(), "recipe": settings, "seed": seed,
                        "data": digest})


def _arrays_sha256(*arrays: np.ndarray) -> str:
    """sha256 of the arrays as little-endian float64, in order."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, "<f8").tobytes())
    return digest.hexdigest()
