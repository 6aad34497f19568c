"""``galmock generate JOB``: a galaxy sampled from a conditional galaxy model → particles.zarr.

The ingest stage with ``galaxy.source: model`` (:mod:`galmock.ingest.model`): the model is
``galaxy.model`` (null: this run's ``<run>/suite/model``), the galaxy ``generate.n_particles``
particles for ``generate.parameters``. ``plan``, ``train``, ``upsample`` and ``convert`` then
follow as for any other source.

Example:
    >>> run(load_job("jobs/galaxy-suite.yaml"))  # needs `galmock suite`'s model  # doctest: +SKIP
    40,000 particles from .../runs/galaxy-suite/suite/model -> .../runs/galaxy-suite/particles.zarr
    PosixPath('.../runs/galaxy-suite/particles.zarr')

    Before ``galmock suite`` has trained the model, it stops at once, naming what it looked for:

    >>> run(load_job("jobs/galaxy-suite.yaml", output=tmp_path / "run"))
    Traceback (most recent call last):
    ...
    galmock.errors.InputError: galaxy.model = '.../run/suite/model': neither a registered model ...
"""

from __future__ import annotations

from pathlib import Path

from galmock.config import JobConfig
from galmock.ingest.model import model_location
from galmock.stages.ingest import run as run_ingest


def run(job: JobConfig) -> Path:
    """Ingest with ``galaxy.source: model``; returns the particle store."""
    galaxy = job.galaxy.model_copy(update={"source": "model"})
    target = run_ingest(job.model_copy(update={"galaxy": galaxy}))
    print(f"{job.generate.n_particles:,} particles from {model_location(job)} -> {target}")
    return target
