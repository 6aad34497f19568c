"""Galaxy suites for the conditional galaxy model (``galmock suite JOB``,
:mod:`galmock.stages.suite`).

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
:func:`galmock.flows.galaxy_training.fit_galaxy_model` (the paper's: RAdam, exponentially
decaying learning rate, fixed epochs; resumable from checkpoints).

Example:
    >>> galaxies = load_suite(job)                    # doctest: +SKIP
    >>> held = choose_leave_out(galaxies, 2)           # doctest: +SKIP
    >>> model, record = fit_galaxy_model([g for g in galaxies if g.name not in held],
    ...                                  job.suite, job.suite, seed=job.seed)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galmock.config import GalaxyConfig, JobConfig, SuiteDemoConfig
from galmock.demo import demo_particles
from galmock.errors import ConfigError, InputError
from galmock.flows.galaxy_model import COLUMNS, global_parameters
from galmock.ingest import orient, read_source
from galmock.particles import check_particles

log = logging.getLogger(__name__)

DEMO_MASS_MSUN = 5.5e10  # the demo galaxy's stellar mass (galmock.demo.TOTAL_MASS_MSUN)
MZR_SLOPE = 0.3  # d[Fe/H] / dlog10 M*
AGE_SLOPE = 0.2  # dlog10(age) / dlog10 M*
AGE_MAX_GYR = 13.8


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

