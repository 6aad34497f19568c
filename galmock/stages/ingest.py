"""The ``ingest`` stage: the galaxy source → ``<run>/particles.zarr``.

Reads ``galaxy.source`` with its reader (:mod:`galmock.ingest`; ``model`` samples a galaxy model,
:mod:`galmock.ingest.model`), checks the particles, centres and aligns them
(:func:`galmock.ingest.orient`), checks again and writes the particle store atomically with the
transform and the source's provenance in its attributes.

Example:
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=2000"])
    >>> run(job).name
    'particles.zarr'
    >>> progress(RunLayout(job.run_dir))
    '2,000 particles'
"""

from __future__ import annotations

import logging
from pathlib import Path

from galmock.config import JobConfig
from galmock.ingest import orient, read_source
from galmock.ingest.model import generated_source
from galmock.layout import RunLayout
from galmock.particles import check_particles, write_particle_store
from galmock.store import zarr_attrs
from galmock.version import __version__

log = logging.getLogger("galmock.ingest")


def run(job: JobConfig) -> Path:
    """Run the ingest stage: source -> ``<run>/particles.zarr``. Returns the store path."""
    galaxy = job.galaxy
    if galaxy.source == "model":
        source = generated_source(job)
    else:
        source = read_source(galaxy, seed=job.seed)
    label = source.path
    columns = check_particles(source.columns, label, source.labels)
    columns, transform = orient(columns, galaxy, label)
    columns = check_particles(columns, label, source.labels)
    attrs = {
        "galmock_version": __version__,
        "source": galaxy.source,
        "source_path": source.path,
        "source_meta": source.meta,
        **transform,
    }
    if "components" in source.meta:
        # Named where the `component` column's description points.
        attrs["components"] = source.meta["components"]
    target = RunLayout(job.run_dir).particles
    write_particle_store(target, columns, attrs)
    total_mass = float(columns["mass"].sum())
    log.info("wrote %s: %d particles, %.4g Msun", target, len(columns["x"]), total_mass)
    return target


def progress(layout: RunLayout) -> str:
    """What the run directory says about ingest (for ``galmock status``)."""
    attrs = zarr_attrs(layout.particles)
    return f"{attrs.get('n_particles', 0):,} particles" if attrs else "no particles.zarr yet"
