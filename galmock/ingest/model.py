"""Reader for ``galaxy.source: model``: a galaxy sampled from a conditional galaxy model
(``galmock generate JOB``, or ingest with that source).

The model is ``galaxy.model`` (a registered name, an artifact path or URL; null: this run's
``<run>/suite/model``); the galaxy is ``generate.n_particles`` equal-mass particles (mass
M*/n) drawn for ``generate.parameters`` in batches of ``generate.batch_rows`` on
``generate.device``. Base normals come from one CPU generator seeded by the job seed, so the
same job gives the same galaxy on any device (up to float32 rounding on GPUs). Ages are clipped
to [0, 13.8] Gyr. The particles go through ingest's checks and are written as
``<run>/particles.zarr``, so ``plan``, ``train``, ``upsample`` and ``convert`` follow as for
any other source.

Example:
    >>> job = load_job("jobs/galaxy-suite.yaml", output=tmp_path / "run")
    >>> model_location(job) == str(tmp_path / "run" / "suite" / "model")  # galaxy.model: null
    True
    >>> source = generated_source(job)  # needs the model `galmock suite` trains  # doctest: +SKIP
    >>> len(source.columns["x"]), source.path.startswith("model:")  # doctest: +SKIP
    (40000, True)
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from galmock.config import JobConfig
from galmock.flows.galaxy_model import COLUMNS, global_parameters, parameter_vector
from galmock.flows.registry import load_galaxy_model
from galmock.layout import RunLayout
from galmock.particles import SourceParticles
from galmock.seeds import derive_seed

log = logging.getLogger(__name__)

AGE_MAX_GYR = 13.8


def model_location(job: JobConfig) -> str:
    """``galaxy.model``, else this run's ``<run>/suite/model``."""
    if job.galaxy.model is not None:
        return job.galaxy.model
    return str(RunLayout(job.run_dir).suite_model)


def generated_source(job: JobConfig) -> SourceParticles:
    """Sample the galaxy of ``generate.parameters`` from the job's galaxy model."""
    cfg = job.generate
    # Parameters first: a missing one is a config error, whatever the model.
    params = parameter_vector(cfg.parameters.model_dump(), "generate.parameters")
    location = model_location(job)
    model = load_galaxy_model(location, device=cfg.device, key="galaxy.model")
    model.chunk_rows = cfg.batch_rows
    gen = torch.Generator().manual_seed(derive_seed(job.seed, "generate"))
    stars = model.sample(cfg.n_particles, params, generator=gen)
    columns = {c: np.ascontiguousarray(stars[:, i]) for i, c in enumerate(COLUMNS)}
    clipped = int(((columns["age"] < 0) | (columns["age"] > AGE_MAX_GYR)).sum())
    columns["age"] = np.clip(columns["age"], 0.0, AGE_MAX_GYR)
    columns["mass"] = np.full(cfg.n_particles, params[0] / cfg.n_particles)
    columns["id"] = np.arange(cfg.n_particles, dtype=np.int64)
    realised = global_parameters(columns["mass"], columns["age"], columns["feh"])
    log.info("generated %d particles from %s (%d ages clipped); realised tau50 %.3g, tau10 "
             "%.3g, mean [Fe/H] %.3g", cfg.n_particles, location, clipped,
             realised["tau50_gyr"], realised["tau10_gyr"], realised["mean_feh"])
    meta = {
        "generator": "galmock.generate",
        "model": location,
        "model_training": model.metadata.get("training", {}).get("seed"),
        "seed": job.seed,
        "parameters": dict(zip(("stellar_mass_msun", "tau50_gyr", "tau10_gyr", "mean_feh"),
                               params.tolist(), strict=True)),
        "realised_parameters": realised,
        "n_particles": cfg.n_particles,
        "ages_clipped": clipped,
    }
    return SourceParticles(columns=columns, path=f"model:{location}", labels={}, meta=meta)
