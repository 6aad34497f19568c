"""Galaxy sources: one reader per format, and the centring and alignment every source gets.

Readers (one module per format: :mod:`.gadget`, :mod:`.tables`, :mod:`.pynbody`, :mod:`.model`;
the demo galaxy is :mod:`galmock.demo`) return :class:`~galmock.particles.SourceParticles` in
galmock units; :func:`orient` centres and aligns them and applies the selection. The ingest
stage (:mod:`galmock.stages.ingest`) validates and writes ``<run>/particles.zarr``.

Example:
    >>> from galmock.config import load_job
    >>> source = read_source(load_job("jobs/demo.yaml",
    ...                               overrides=["galaxy.demo.n_particles=1000"]).galaxy, seed=1)
    >>> len(source.columns["x"])
    1000
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from galmock.config import GalaxyConfig
from galmock.demo import demo_particles
from galmock.errors import ConfigError, InputError
from galmock.ingest.gadget import read_gadget_snapshot
from galmock.ingest.pynbody import read_pynbody
from galmock.ingest.tables import read_table
from galmock.orient import (
    bulk_velocity,
    disk_alignment_matrix,
    rotation_about_z,
    shrinking_sphere_centre,
)
from galmock.particles import SourceParticles

log = logging.getLogger(__name__)


def read_source(galaxy: GalaxyConfig, seed: int) -> SourceParticles:
    """Read the configured source into galmock units (not yet centred or aligned)."""
    if galaxy.source == "demo":
        return demo_particles(
            galaxy.demo.n_particles, seed=seed, fractions=dict(galaxy.demo.components)
        )
    if galaxy.source == "model":
        raise ConfigError("galaxy.source = 'model' is sampled by the ingest stage or `galmock "
                          "generate`, which read the job's generate: section "
                          "(galmock.ingest.model)")
    if galaxy.path is None:
        raise ConfigError(f"galaxy.path is required for galaxy.source = {galaxy.source!r}")
    path = Path(galaxy.path).expanduser()
    if galaxy.source == "gadget":
        return read_gadget_snapshot(
            path,
            particle_type=galaxy.gadget.particle_type,
            cosmological=galaxy.gadget.cosmological,
            units=galaxy.units,
        )
    if galaxy.source == "table":
        return read_table(path, columns=dict(galaxy.columns), units=galaxy.units)
    if galaxy.source == "pynbody":
        return read_pynbody(path)
    raise ConfigError(f"galaxy.source = {galaxy.source!r}: unknown source")


def orient(
    columns: dict[str, np.ndarray], galaxy: GalaxyConfig, source: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Centre, align and select; return new columns and the transform as store attributes."""
    pos = np.column_stack([columns["x"], columns["y"], columns["z"]])
    vel = np.column_stack([columns["vx"], columns["vy"], columns["vz"]])
    mass = columns["mass"]
    # Generated galaxies (demo, galaxy model) come centred and in the model's frame.
    is_demo = galaxy.source in ("demo", "model")

    if galaxy.centre == "auto":
        centre = np.zeros(3) if is_demo else shrinking_sphere_centre(pos, mass)
        centre_method = "generated centred" if is_demo else "shrinking sphere"
    else:
        centre = np.asarray(galaxy.centre, dtype=np.float64)
        centre_method = "given"
    pos = pos - centre

    radius = galaxy.align_radius_kpc
    if galaxy.centre_velocity == "auto":
        try:
            v_centre = np.zeros(3) if is_demo else bulk_velocity(pos, vel, mass, radius)
        except ValueError as err:
            raise InputError(f"{source}: cannot find the bulk velocity: {err}") from None
    else:
        v_centre = np.asarray(galaxy.centre_velocity, dtype=np.float64)
    vel = vel - v_centre

    align = (not is_demo) if galaxy.align_disk is None else galaxy.align_disk
    rotation = np.eye(3)
    if align:
        try:
            rotation = disk_alignment_matrix(pos, vel, mass, radius)
        except ValueError as err:
            raise InputError(f"{source}: cannot align the disk: {err}") from None
    if galaxy.rotate_z_deg:
        rotation = rotation_about_z(galaxy.rotate_z_deg) @ rotation
    pos = pos @ rotation.T
    vel = vel @ rotation.T

    keep = slice(None)
    if galaxy.select_radius_kpc is not None:
        keep = (pos**2).sum(axis=1) < galaxy.select_radius_kpc**2
        if not keep.any():
            raise InputError(
                f"{source}: galaxy.select_radius_kpc = {galaxy.select_radius_kpc} selects no "
                f"particles (empty selection)"
            )
    out = dict(columns)
    for i, f in enumerate(("x", "y", "z")):
        out[f] = pos[:, i]
    for i, f in enumerate(("vx", "vy", "vz")):
        out[f] = vel[:, i]
    out = {f: v[keep] for f, v in out.items()}
    attrs = {
        "centre_kpc": centre.tolist(),
        "centre_method": centre_method,
        "centre_velocity_kms": v_centre.tolist(),
        "rotation_matrix": rotation.tolist(),
        "aligned_disk": bool(align),
        "rotate_z_deg": galaxy.rotate_z_deg,
        "select_radius_kpc": galaxy.select_radius_kpc,
        "frame": "galactocentric: disk angular momentum along -z, positions relative to centre",
    }
    return out, attrs
