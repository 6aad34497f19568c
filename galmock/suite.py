"""Galaxy suites and the training of a conditional galaxy model (``galmock suite JOB``).

A suite is a list of galaxies, each a set of star particles in the 9-D star space of
:mod:`galmock.flows.galaxy_model` with its global parameters (M*, τ50, τ10, mean [Fe/H])
computed from its particles. It comes from ``suite.galaxies`` (job-style galaxy sections:
table, gadget, pynbody or demo sources, read, centred and aligned as ingest does) or, when
that list is empty, from the demo suite generator: copies of the demo galaxy of different
stellar mass M*, with Δ = log10(M* / 5.5e10 Msun),

- lengths and velocities × 10^(Δ/3) (size and circular velocity grow as ~M*^(1/3)),
- [Fe/H] + 0.3 Δ (a mass–metallicity relation; Gallazzi et al. 2005 have ~0.3–0.4 at low M*),
- ages × 10^(0.2 Δ), capped at 13.8 Gyr (more massive galaxies formed their stars earlier).

``suite.leave_out`` galaxies are held out of training and used for validation. Training is
the paper's: RAdam, exponentially decaying learning rate (:func:`learning_rate`), fixed epochs;
checkpoints make a killed run resume where it stopped, bit for bit on the same CPU threads.

Example:
    >>> galaxies = load_suite(job)                    # doctest: +SKIP
    >>> held = choose_leave_out(galaxies, 2)           # doctest: +SKIP
    >>> model, record = fit_galaxy_model([g for g in galaxies if g.name not in held],
    ...                                  job.suite, seed=job.seed)   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galmock.config import GalaxyConfig, JobConfig, SuiteConfig, SuiteDemoConfig
from galmock.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DEMO_MASS_MSUN = 5.5e10  # the demo galaxy's stellar mass (galmock.demo.TOTAL_MASS_MSUN)
MZR_SLOPE = 0.3  # d[Fe/H] / dlog10 M*
AGE_SLOPE = 0.2  # dlog10(age) / dlog10 M*
AGE_MAX_GYR = 13.8
CHECKPOINT_FORMAT = "galmock.suite-checkpoint/1"
VALIDATION_ROWS = 20_000  # rows of the left-out galaxies scored after every epoch


@dataclass
class SuiteGalaxy:
    """One galaxy: ``stars`` (n, 9) float64 in :data:`~galmock.flows.galaxy_model.COLUMNS`
    order, particle ``mass`` (n,) and its global ``parameters``."""

    name: str
    stars: np.ndarray
    mass: np.ndarray
    parameters: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @property
    def log_mass(self) -> float:
        return math.log10(self.parameters["stellar_mass_msun"])


# -- building a suite ---------------------------------------------------------------------------


def scale_demo_columns(
    columns: dict[str, np.ndarray], log_mass: float
) -> dict[str, np.ndarray]:
    """The demo galaxy's columns rescaled to stellar mass 10^log_mass (module docstring)."""
    delta = log_mass - math.log10(DEMO_MASS_MSUN)
    size = 10 ** (delta / 3)
    out = dict(columns)
    for f in ("x", "y", "z", "vx", "vy", "vz"):
        out[f] = columns[f] * size
    out["feh"] = columns["feh"] + MZR_SLOPE * delta
    out["age"] = np.minimum(columns["age"] * 10 ** (AGE_SLOPE * delta), AGE_MAX_GYR)
    out["mass"] = np.full(len(columns["x"]), 10**log_mass / len(columns["x"]))
    return out


def demo_suite(cfg: SuiteDemoConfig, seed: int, fractions: dict[str, float]) -> list[SuiteGalaxy]:
    """``cfg.n_galaxies`` scaled demo galaxies evenly spaced in log10 M*; galaxy i is sampled
    with seed (``seed``, i), so the suite is a function of the config and seed alone."""
    from galmock.demo import demo_particles

    if not cfg.log_mass_max > cfg.log_mass_min:
        raise ConfigError(f"suite.demo: log_mass_max = {cfg.log_mass_max} must exceed "
                          f"log_mass_min = {cfg.log_mass_min}")
    out = []
    for i, log_mass in enumerate(np.linspace(cfg.log_mass_min, cfg.log_mass_max, cfg.n_galaxies)):
        child = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        source = demo_particles(cfg.n_particles, seed=child, fractions=fractions)
        cols = scale_demo_columns(source.columns, float(log_mass))
        out.append(_galaxy(f"demo-{i:02d}", cols, f"demo suite, log M* = {log_mass:.3f}"))
    return out


def _galaxy(name: str, cols: dict[str, np.ndarray], source: str) -> SuiteGalaxy:
    from galmock.flows.galaxy_model import COLUMNS, global_parameters

    stars = np.column_stack([np.asarray(cols[c], dtype=np.float64) for c in COLUMNS])
    params = global_parameters(cols["mass"], cols["age"], cols["feh"])
    return SuiteGalaxy(name, stars, np.asarray(cols["mass"], np.float64), params, source)


def galaxy_section(job: JobConfig, index: int, entry: Any) -> tuple[str, GalaxyConfig]:
    """``suite.galaxies[index]`` merged over the job's galaxy section and validated."""
    key = f"suite.galaxies[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ConfigError(f"{key} = {entry!r}: each suite galaxy needs a name and galaxy keys, "
                          "e.g. {name: g1, source: table, path: g1.parquet}")
    fields = {k: v for k, v in entry.items() if k != "name"}
    if fields.get("source") == "model":
        raise ConfigError(f"{key}.source = 'model': a suite is made of simulated galaxies")
    try:
        galaxy = GalaxyConfig.model_validate(
            _merged(job.galaxy.model_dump(mode="json"), fields)
        )
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"{key} ({entry['name']}): invalid galaxy section: {err}") from None
    if galaxy.source != "demo":
        if galaxy.path is None:
            raise ConfigError(f"{key}.path is required for source {galaxy.source!r}")
        if not Path(galaxy.path).expanduser().exists():
            raise InputError(f"{key}.path = {galaxy.path!r} ({entry['name']}): no such file "
                             "or directory")
    return entry["name"], galaxy


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def read_suite_galaxy(name: str, galaxy: GalaxyConfig, seed: int) -> SuiteGalaxy:
    """Read, check, centre and align one suite galaxy as ingest does."""
    from galmock.ingest import orient, read_source
    from galmock.particles import check_particles

    source = read_source(galaxy, seed=seed)
    cols = check_particles(source.columns, source.path, source.labels)
    cols, _ = orient(cols, galaxy, source.path)
    missing = [f for f in ("age", "feh", "ofe") if f not in cols]
    if missing:
        raise InputError(f"suite galaxy {name} ({source.path}): no {', '.join(missing)} column; "
                         "a galaxy model needs age, [Fe/H] and [O/Fe] for every particle")
    return _galaxy(name, cols, source.path)


def load_suite(job: JobConfig) -> list[SuiteGalaxy]:
    """The job's suite (``suite.galaxies``, else the demo suite), subsampled to
    ``suite.particles_per_galaxy``. Every entry is validated before any is read."""
    cfg = job.suite
    if cfg.galaxies:
        sections = [galaxy_section(job, i, e) for i, e in enumerate(cfg.galaxies)]
        names = [n for n, _ in sections]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"suite.galaxies: duplicate name(s) {dupes}")
        galaxies = [read_suite_galaxy(n, g, job.seed) for n, g in sections]
    else:
        galaxies = demo_suite(cfg.demo, job.seed, dict(job.galaxy.demo.components))
    if len(galaxies) < 2:
        raise ConfigError(f"suite.galaxies: a suite needs at least 2 galaxies, got {len(galaxies)}")
    if cfg.particles_per_galaxy is not None:
        for i, g in enumerate(galaxies):
            if len(g.stars) > cfg.particles_per_galaxy:
                rng = np.random.default_rng([job.seed, i, 7])
                keep = np.sort(rng.choice(len(g.stars), cfg.particles_per_galaxy, replace=False))
                # The conditions stay those of the whole galaxy; the subsample only feeds training.
                g.stars, g.mass = g.stars[keep], g.mass[keep]
    return galaxies


def choose_leave_out(galaxies: Sequence[SuiteGalaxy], leave_out: int | Sequence[str]) -> list[str]:
    """Names held out of training: the given names, or ``k`` galaxies evenly spaced through the
    suite sorted by M* (ranks round((i + 1) n / (k + 1)), never the lightest or heaviest)."""
    names = [g.name for g in galaxies]
    if isinstance(leave_out, int):
        k = leave_out
        if k > len(galaxies) - 2:
            raise ConfigError(f"suite.leave_out = {k}: leaves fewer than 2 of the suite's "
                              f"{len(galaxies)} galaxies to train on")
        by_mass = sorted(galaxies, key=lambda g: (g.log_mass, g.name))
        picks = [round((i + 1) * len(galaxies) / (k + 1)) for i in range(k)]
        return [by_mass[min(max(p, 1), len(galaxies) - 2)].name for p in picks]
    unknown = [n for n in leave_out if n not in names]
    if unknown:
        raise ConfigError(f"suite.leave_out = {list(leave_out)}: no suite galaxy named "
                          f"{unknown} (names: {names})")
    if len(set(leave_out)) > len(galaxies) - 2:
        raise ConfigError(f"suite.leave_out = {list(leave_out)}: leaves fewer than 2 of the "
                          f"suite's {len(galaxies)} galaxies to train on")
    return list(dict.fromkeys(leave_out))


# -- training -----------------------------------------------------------------------------------


def learning_rate(step: int, cfg: SuiteConfig) -> float:
    """The paper's schedule: lr0 · γ^k, k growing every ``lr_decay_every_steps`` steps, and
    every ``lr_slow_decay_every_steps`` once the rate is below ``lr_slow_below``.

    Example:
        >>> learning_rate(0, job.suite), learning_rate(10, job.suite)   # doctest: +SKIP
        (9e-05, 8.982e-05)
    """
    lr0, gamma = cfg.learning_rate, cfg.lr_decay
    if gamma >= 1 or cfg.lr_slow_below <= 0 or lr0 < cfg.lr_slow_below:
        fast = math.inf
    else:  # decays until the rate first drops below lr_slow_below
        fast = max(0, math.ceil(math.log(cfg.lr_slow_below / lr0) / math.log(gamma)))
    k = step // cfg.lr_decay_every_steps
    if k > fast:
        k = fast + (step - fast * cfg.lr_decay_every_steps) // cfg.lr_slow_decay_every_steps
    return lr0 * gamma**k


def _training_rows(
    galaxies: Sequence[SuiteGalaxy], rows: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    from galmock.flows.galaxy_model import PARAMETERS

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
    train: Sequence[SuiteGalaxy],
    cfg: SuiteConfig,
    seed: int,
    validation: Sequence[SuiteGalaxy] = (),
    workdir: str | Path | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a :class:`~galmock.flows.galaxy_model.GalaxyModel` on the ``train`` galaxies;
    returns it and a training record (losses per epoch, wall time, resumes).

    With ``workdir`` the run checkpoints there every ``checkpoint_every_epochs`` epochs and
    resumes from a checkpoint of the same data, recipe and seed.
    """
    import torch

    from galmock.flows.base import resolve_device
    from galmock.flows.conditional_nsf import ConditionalNSF
    from galmock.flows.galaxy_model import COLUMNS, PARAMETERS, GalaxyModel, ZScore
    from galmock.flows.galaxy_model import condition_features as features
    from galmock.train import TrainingError, derive_seed

    device = resolve_device(cfg.device)
    x, p = _training_rows(train)
    cond = features(np.array([[g.parameters[k] for k in PARAMETERS] for g in train]))
    data_pre = ZScore.fit(x, "suite training stars")
    cond_pre = ZScore.fit(cond, "suite galaxy parameters (do the galaxies differ?)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "suite", "init"))
        flow = ConditionalNSF.from_options(len(COLUMNS), len(PARAMETERS), cfg)
    model = GalaxyModel(flow, data_pre, cond_pre).to(device)
    y, c = model.encode(x, p)
    val = None
    if validation:
        vx, vp = _training_rows(validation, VALIDATION_ROWS, derive_seed(seed, "suite", "val"))
        val = model.encode(vx, vp)
    optimizer = torch.optim.RAdam(model.flow.parameters(), lr=learning_rate(0, cfg))
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "suite", "shuffle"))
    state: dict[str, Any] = {"epoch": 0, "step": 0, "train_loss": [], "validation_loss": [],
                             "wall_time_s": 0.0, "resumed_from_epoch": []}
    fingerprint = _fingerprint(model, x, p, cfg, seed)
    ckpt = Path(workdir) / "checkpoint" if workdir is not None else None
    if ckpt is not None and _restore(ckpt, fingerprint, model, optimizer, shuffle, state):
        state["resumed_from_epoch"].append(state["epoch"])
        log.info("suite: resumed from %s at epoch %d", ckpt, state["epoch"])
    started = time.perf_counter() - state["wall_time_s"]
    while state["epoch"] < cfg.epochs:
        model.flow.train()
        total = 0.0
        order = torch.randperm(len(y), generator=shuffle).to(device)
        for rows in order.split(cfg.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(state["step"], cfg)
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
                 cfg.epochs, state["train_loss"][-1],
                 f"{state['validation_loss'][-1]:.4f}" if val is not None else "-")
        if ckpt is not None and (state["epoch"] % cfg.checkpoint_every_epochs == 0
                                 or state["epoch"] == cfg.epochs):
            state["wall_time_s"] = time.perf_counter() - started
            _save(ckpt, fingerprint, model, optimizer, shuffle, state)
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
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": cfg.model_dump(mode="json"),
    }
    model.metadata["training"] = record
    return model, record


def _fingerprint(model: Any, x: np.ndarray, p: np.ndarray, cfg: SuiteConfig, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x, "<f8").tobytes())
    digest.update(np.ascontiguousarray(p, "<f8").tobytes())
    recipe = cfg.model_dump(mode="json")
    # Not what the weights depend on up to the last common epoch: a run may be extended.
    for k in ("device", "threads", "register_as", "report", "checkpoint_every_epochs", "epochs"):
        recipe.pop(k, None)
    payload = {"arch": model.flow.architecture(), "recipe": recipe, "seed": seed,
               "data": digest.hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _save(path: Path, fingerprint: str, model: Any, optimizer: Any, shuffle: Any,
          state: dict[str, Any]) -> None:
    import safetensors.torch

    from galmock.atomic import atomic_directory

    opt = optimizer.state_dict()
    tensors = {"rng.shuffle": shuffle.get_state()}
    tensors.update({f"model.{k}": v for k, v in model.flow.state_dict().items()})
    for index, slots in opt["state"].items():
        tensors.update({f"optim.{index}.{k}": v for k, v in slots.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "state": state,
            "param_groups": opt["param_groups"]}
    with atomic_directory(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))


def _restore(path: Path, fingerprint: str, model: Any, optimizer: Any, shuffle: Any,
             state: dict[str, Any]) -> bool:
    import safetensors
    import safetensors.torch

    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = safetensors.torch.load_file(str(path / "state.safetensors"))
    except (OSError, ValueError, safetensors.SafetensorError):
        return False
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("fingerprint") != fingerprint:
        log.warning("%s: checkpoint is for other data, settings or seed; starting afresh", path)
        return False
    device = model.device
    model.flow.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    model.to(device)
    slots: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    shuffle.set_state(tensors["rng.shuffle"])
    state.update(meta["state"])
    return True


# -- the command ----------------------------------------------------------------------------


def suite_command(job: JobConfig, args: argparse.Namespace | None = None) -> Path:
    """``galmock suite JOB``: train on the suite, save ``<run>/suite/model``, write the
    validation report to ``<run>/suite/report/`` and register the model if asked."""
    import torch

    from galmock.flows.galaxy_model import save_galaxy_model
    from galmock.validate.galaxy_model import write_report

    cfg = job.suite
    if cfg.register_as is not None:
        from galmock.flows.registry import _NAME

        if not _NAME.match(cfg.register_as):
            raise ConfigError(f"suite.register_as = {cfg.register_as!r}: use letters, digits, "
                              "'.', '_' and '-'")
    if cfg.threads != "auto":
        torch.set_num_threads(int(cfg.threads))
    galaxies = load_suite(job)
    held = choose_leave_out(galaxies, cfg.leave_out)
    train = [g for g in galaxies if g.name not in held]
    validation = [g for g in galaxies if g.name in held]
    root = job.run_dir / "suite"
    target, workdir = root / "model", root / "model.work"
    log.info("suite: %d galaxies (%s held out), log M* %.2f-%.2f, %d training rows", len(galaxies),
             ", ".join(held) or "none", min(g.log_mass for g in galaxies),
             max(g.log_mass for g in galaxies), sum(len(g.stars) for g in train))
    model, record = fit_galaxy_model(train, cfg, job.seed, validation, workdir)
    model.metadata["suite"] = {
        "galaxies": [{"name": g.name, "source": g.source, "particles": len(g.stars),
                      "parameters": g.parameters, "left_out": g.name in held}
                     for g in galaxies],
        "left_out": held,
    }
    save_galaxy_model(model, target)
    shutil.rmtree(workdir, ignore_errors=True)  # the artifact supersedes the checkpoints
    report = write_report(model, galaxies, held, root / "report", cfg.report, job.seed)
    if cfg.register_as is not None:
        from galmock.flows.registry import register

        register(cfg.register_as, target, overwrite=True)
    print(f"galaxy model ({record['epochs']} epochs, {record['wall_time_s']:.0f} s) -> {target}")
    print(f"validation report -> {report}")
    if cfg.register_as is not None:
        print(f"registered as {cfg.register_as}")
    return target
