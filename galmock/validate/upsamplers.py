"""The upsamplers ``galmock validate`` compares, and their draws restricted to the selection.

``validate.upsamplers`` lists them: ``cnf``/``maf``/``nsf`` are galmock flows (the kind equal to
``flows.kind`` is the run's trained models; other kinds are trained here on the same per-region
training particles, cached in ``<run>/validate-models/<kind>/``), ``enbid`` is the simplified
EnBiD kernel baseline fitted on all training particles, and a path is an external upsampled
catalog (``stars.zarr`` or Parquet with galactocentric x, y, z, vx, vy, vz).

Draws are restricted to what the plan models (the sphere, or each region's owned box) and pooled
over regions in proportion to each region's owned training particles, so they follow the galaxy.

Example:
    >>> other = tmp_path / "runs/other/stars.zarr"  # another run's upsampled catalog
    >>> other.mkdir(parents=True)  # (parsing only checks that it exists)
    >>> specs = parse_upsamplers(["cnf", "enbid", str(other)], flows_kind="cnf")
    >>> [s.label for s in specs]
    ['cnf', 'enbid', 'stars']
    >>> [s.kind for s in specs]
    ['flow', 'enbid', 'catalog']
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import pyarrow.parquet as pq
import torch

from galmock.config import JobConfig
from galmock.errors import ConfigError, InputError
from galmock.flows.artifact import load_artifact
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.families import family_names
from galmock.flows.training import fit_ensemble
from galmock.layout import RunLayout, region_name
from galmock.models import artifact_matches, model_location, require_trained_on, training_seed
from galmock.plan import RegionPlan
from galmock.regions import RegionParticles
from galmock.sampling import owned_batches, owned_volume
from galmock.seeds import derive_seed
from galmock.store import open_catalog
from galmock.validate.enbid import EnbidUpsampler

log = logging.getLogger("galmock.validate")

PHASE_COLUMNS = ("x", "y", "z", "vx", "vy", "vz")


@dataclass(frozen=True)
class UpsamplerSpec:
    """One entry of ``validate.upsamplers``: its label and what it is."""

    label: str
    kind: Literal["flow", "enbid", "catalog"]
    flow_kind: str | None = None
    path: Path | None = None


def is_catalog_path(entry: str) -> bool:
    """An entry naming a file: contains ``/`` or ends in ``.zarr``/``.parquet``."""
    return "/" in entry or entry.endswith((".zarr", ".parquet", ".zarr/"))


def parse_upsamplers(entries: Sequence[str], flows_kind: str) -> list[UpsamplerSpec]:
    """Check ``validate.upsamplers`` (names, paths, unique labels) before any work is done.

    Raises:
        ConfigError: an unknown name or a repeated label (names the entry and its value).
        InputError: a catalog path that does not exist (names the file).
    """
    specs: list[UpsamplerSpec] = []
    for i, entry in enumerate(entries):
        key = f"validate.upsamplers[{i}] = {entry!r}"
        if entry in family_names():
            specs.append(UpsamplerSpec(entry, "flow", flow_kind=entry))
        elif entry == "enbid":
            specs.append(UpsamplerSpec("enbid", "enbid"))
        elif is_catalog_path(entry):
            path = Path(entry.rstrip("/")).expanduser()
            if not path.exists():
                raise InputError(f"{key}: catalog {path} not found")
            specs.append(UpsamplerSpec(path.name.split(".")[0] or path.name, "catalog", path=path))
        else:
            raise ConfigError(
                f"{key}: unknown upsampler; expected a flow family "
                f"({', '.join(family_names())}), enbid, or "
                "the path of an upsampled catalog (containing '/' or ending in .zarr/.parquet)"
            )
    labels = [s.label for s in specs]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(f"validate.upsamplers: label(s) {repeated} appear more than once")
    if "truth" in labels:
        raise ConfigError("validate.upsamplers: the label 'truth' is reserved; rename the file")
    return specs


@dataclass(frozen=True)
class Selection:
    """Where validation draws may lie: what the plan models (the sphere plan's ball, or all of
    space for a k-d plan), within ``select_radius_kpc`` of the centre when set (the smaller of
    ``galaxy.select_radius_kpc`` and ``validate.within_kpc``)."""

    plan: RegionPlan
    select_radius_kpc: float | None = None

    @classmethod
    def within(cls, plan: RegionPlan, *radii_kpc: float | None) -> Selection:
        """The plan's selection within the smallest of ``radii_kpc`` that is set.

        Example:
            >>> from galmock.plan import build_kdtree_plan
            >>> rng = np.random.default_rng(0)
            >>> plan = build_kdtree_plan(rng.normal(0, 5, (400, 3)), np.ones(400),
            ...                          np.arange(400), 100, 0.5)
            >>> sel = Selection.within(plan, None, 30.0)   # galaxy.select_radius_kpc unset
            >>> sel.contains(np.array([[1.0, 0, 0], [0, 300.0, 0]])).tolist()
            [True, False]
            >>> Selection.within(plan, 20.0, 30.0).select_radius_kpc
            20.0
            >>> Selection.within(plan).describe()
            'all of space (4 k-d region(s), each its owned box)'
        """
        given = [r for r in radii_kpc if r is not None]
        return cls(plan, min(given) if given else None)

    def contains(self, pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos, dtype=np.float64)
        mask = self.plan.owner(pos) >= 0
        if self.select_radius_kpc is not None:
            mask &= (pos**2).sum(axis=1) < self.select_radius_kpc**2
        return mask

    def describe(self) -> str:
        plan = self.plan
        if plan.kind == "sphere":
            text = f"|r - {list(plan.sphere_centre or ())}| < {plan.sphere_radius} kpc"
        else:
            text = f"all of space ({len(plan.regions)} k-d region(s), each its owned box)"
        if self.select_radius_kpc is not None:
            text += f", |r| < {self.select_radius_kpc} kpc"
        return text


@dataclass
class Draws:
    """An upsampler's draws inside the selection (float64 (n, 3) each) and how they were made."""

    label: str
    pos: np.ndarray
    vel: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pos)

    def phase_space(self) -> np.ndarray:
        return np.hstack([self.pos, self.vel])

    def subset(self, n: int, seed: int) -> Draws:
        """A random ``n`` of the draws (all when ``n`` >= their number)."""
        if n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return Draws(self.label, self.pos[keep], self.vel[keep], self.info)


def draw_until(
    propose: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    keep: Callable[[np.ndarray], np.ndarray],
    n: int,
    label: str,
    max_rows: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Draw rounds ``propose(m, round)`` until ``n`` rows pass ``keep``: upsampling's
    :func:`~galmock.sampling.owned_batches` loop, with ``keep`` as the owned volume.

    Returns ``(pos, vel, drawn, passed)``: the first ``n`` passing rows, how many rows were
    drawn and how many of those passed (``passed / drawn`` estimates the acceptance).

    Raises:
        InputError: almost nothing passes (the upsampler does not cover the selection).
    """
    tally = {"drawn": 0, "kept": 0}
    batches = owned_batches(propose, keep, n, max_rows, label=f"validate: {label}", tally=tally,
                            hint="this upsampler does not describe the selected volume")
    parts = list(batches)
    pos = np.concatenate([p for _, p, _ in parts])
    vel = np.concatenate([v for _, _, v in parts])
    return pos, vel, tally["drawn"], tally["kept"]


# -- flows ------------------------------------------------------------------------------------


class FlowUpsampler:
    """A galmock flow per region, pooled into one density on the selection.

    Region i contributes ``n_i`` draws inside its owned volume (weights ``w_i = n_i / sum n``);
    its normalised density there is ``f_i(x) / P_i``, with ``P_i`` the probability that the
    region's (ball- and v_max-truncated) sampler lands in its owned volume within the
    selection, estimated from the draws. :meth:`log_prob` needs :meth:`draw` to have run.
    """

    def __init__(self, label: str, models: Sequence[FlowEnsemble], plan: RegionPlan,
                 selection: Selection, support: Sequence[float] | None = None) -> None:
        self.label, self.models, self.plan, self.selection = label, list(models), plan, selection
        # Per region, upsample's cut at its farthest training particle (None: no cut).
        self.support = list(support) if support is not None else [math.inf] * len(self.models)
        self.log_norm = np.full(len(models), np.nan)  # log P_i
        self.weights = np.zeros(len(models))

    def draw(self, counts: Sequence[int], seed: int) -> Draws:
        """``counts[i]`` draws owned by region i (float64), seeded by (seed, region, round)."""
        pos_parts, vel_parts = [], []
        total = max(int(sum(counts)), 1)
        for rid, (model, n) in enumerate(zip(self.models, counts)):
            self.weights[rid] = n / total
            if n == 0:
                continue
            proposed = [0.0]
            region_owns = owned_volume(self.plan, rid, self.support[rid])

            def propose(m: int, round_: int, model: FlowEnsemble = model, rid: int = rid,
                        proposed: list[float] = proposed) -> tuple[np.ndarray, np.ndarray]:
                gen = torch.Generator().manual_seed(derive_seed(seed, rid, round_))
                pos, vel, rate = model.sample(m, gen)
                proposed[0] += m / max(1.0 - rate, 1e-12)  # untruncated proposals behind m
                return pos.cpu().numpy(), vel.cpu().numpy()

            def keep(pos: np.ndarray,
                     owns: Callable[[np.ndarray], np.ndarray] = region_owns) -> np.ndarray:
                return owns(pos) & self.selection.contains(pos)

            pos, vel, drawn, passed = draw_until(propose, keep, int(n),
                                                 f"{self.label} region {rid}")
            # P_i = P(ball, v_max) * P(owned, selected | truncated) = passed / proposed
            self.log_norm[rid] = math.log(passed / proposed[0])
            pos_parts.append(pos)
            vel_parts.append(vel)
            log.info("validate: %s region %d: %d draws kept of %d", self.label, rid, n, drawn)
        info = {
            "regions": len(self.models),
            "draws_per_region": [int(c) for c in counts],
            "log_owned_probability": [float(v) for v in self.log_norm],
        }
        return Draws(self.label, np.concatenate(pos_parts), np.concatenate(vel_parts), info)

    def log_prob(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        """log of the pooled normalised density on the selection, (kpc km/s)^-3; -inf where
        it has no support (outside a flow's ball or v_max, or outside the selection)."""
        pos, vel = np.asarray(pos, np.float64), np.asarray(vel, np.float64)
        out = np.full(len(pos), -np.inf)
        owner = self.plan.owner(pos)
        inside = self.selection.contains(pos)
        for rid, model in enumerate(self.models):
            rows = np.flatnonzero((owner == rid) & inside)
            if len(rows) == 0 or self.weights[rid] == 0:
                continue
            logf = model.log_prob(pos[rows], vel[rows]).cpu().numpy()
            logf[np.linalg.norm(vel[rows], axis=1) > model.v_max] = -np.inf
            out[rows] = logf + math.log(self.weights[rid]) - self.log_norm[rid]
        return out


def load_flows(
    job: JobConfig, plan: RegionPlan, kind: str, data: RegionParticles
) -> list[FlowEnsemble]:
    """Each region's ensemble of ``kind``: the run's models for ``flows.kind``, else trained
    (or reused from the cache ``<run>/validate-models/<kind>/``).

    Raises:
        InputError: ``flows.kind`` models are missing (run ``galmock train`` first).
    """
    models = []
    if kind == job.flows.kind:
        for r in plan.regions:
            location = model_location(job, plan, r.id)
            if job.flows.load is None and not (Path(location) / "manifest.json").is_file():
                raise InputError(
                    f"{location}: trained model not found; validate.upsamplers lists {kind!r} "
                    f"(= flows.kind), which uses the run's models: run `galmock train` first"
                )
            if job.flows.load is None:  # the run's own models: trained on these particles?
                require_trained_on(location, *data.training_set(r.id))
            models.append(load_artifact(location))
        return models
    cfg = job.flows.model_copy(update={"kind": kind})
    cache = RunLayout(job.run_dir).validate_models(kind)
    for r in plan.regions:
        pos, vel, weight = data.training_set(r.id)
        seed = training_seed(job.seed, r.id)
        artifact = cache / region_name(r.id)
        ok, why = artifact_matches(artifact, pos, vel, cfg, seed, weight)
        if not ok:
            log.info("validate: training %s for region %d on %d particles (%s)", kind, r.id,
                     len(pos), why)
            workdir = cache / f"{region_name(r.id)}.work"
            centre, radius = plan.position_map(r.id)
            fit_ensemble(pos, vel, cfg.spec(), cfg.training, seed, centre, radius,
                         workdir=workdir, artifact=artifact, runtime=cfg.runtime(), weight=weight)
            shutil.rmtree(workdir, ignore_errors=True)
        models.append(load_artifact(artifact))
    return models


# -- EnBiD and external catalogs --------------------------------------------------------------


def enbid_draws(
    pos: np.ndarray, vel: np.ndarray, n: int, selection: Selection, bandwidth_factor: float,
    seed: int,
) -> Draws:
    """``n`` draws inside the selection from EnBiD kernels fitted on ``pos``/``vel``."""
    model = EnbidUpsampler.fit(pos, vel, bandwidth_factor=bandwidth_factor)

    def propose(m: int, round_: int) -> tuple[np.ndarray, np.ndarray]:
        return model.sample(m, derive_seed(seed, round_))

    p, v, drawn, passed = draw_until(propose, selection.contains, n, "enbid")
    info = {"fitted_particles": len(pos), "bandwidth_factor": bandwidth_factor, "drawn": drawn,
            "inside_selection": passed}
    return Draws("enbid", p, v, info)


def catalog_draws(spec: UpsamplerSpec, n: int, selection: Selection, seed: int) -> Draws:
    """Up to ``n`` random rows inside the selection of an external catalog.

    A Zarr catalog is read through Dask with an even stride that leaves ~20 n rows (so a
    10^9-row catalog is not read whole); a Parquet file is read whole (its x..vz columns).
    """
    path = spec.path
    assert path is not None
    if path.suffix == ".parquet" or path.is_file():
        cols = _read_parquet(path)
        total = len(cols["x"])
    else:
        cat = open_catalog(path)
        missing = [c for c in PHASE_COLUMNS if c not in cat.columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        total = len(cat)
        step = max(1, total // (20 * max(n, 1)))
        lazy = cat.to_dask(PHASE_COLUMNS)
        (computed,) = dask.compute({c: lazy[c][::step] for c in PHASE_COLUMNS})
        cols = computed
    pos = np.column_stack([np.asarray(cols[c], np.float64) for c in PHASE_COLUMNS[:3]])
    vel = np.column_stack([np.asarray(cols[c], np.float64) for c in PHASE_COLUMNS[3:]])
    inside = selection.contains(pos)
    if not inside.any():
        raise InputError(f"{path}: no rows inside the selection ({selection.describe()})")
    draws = Draws(spec.label, pos[inside], vel[inside], {"path": str(path), "rows": total})
    if len(draws) < n:
        log.warning("validate: %s has %d rows in the selection, fewer than the %d asked for",
                    path, len(draws), n)
    return draws.subset(n, seed)


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        names = pq.read_schema(path).names
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise InputError(f"{path}: not a readable Parquet file: {err}") from err
    missing = [c for c in PHASE_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has {names})")
    table = pq.read_table(path, columns=list(PHASE_COLUMNS))
    return {c: table.column(c).to_numpy() for c in PHASE_COLUMNS}
