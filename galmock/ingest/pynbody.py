"""Read the stars of any snapshot pynbody can load (``pip install galmock[pynbody]``).

pynbody applies each format's own scale-factor and h conventions when converting units, so this
reader only asks for physical kpc, km/s, Msun and Gyr.

Example:
    >>> parts = read_pynbody(Path("g1536.01024"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from galmock.errors import InputError
from galmock.particles import SourceParticles

log = logging.getLogger(__name__)

# galmock field -> (pynbody array, unit); positions and velocities are split into columns below.
OPTIONAL_ARRAYS = {"age": ("age", "Gyr"), "feh": ("feh", None), "ofe": ("ofe", None)}


def read_pynbody(path: Path) -> SourceParticles:
    """Load ``path`` with pynbody and return its star particles in galmock units."""
    path = Path(path)
    try:
        # Imported here: pynbody is an optional extra (pip install galmock[pynbody]).
        import pynbody
    except ImportError:
        raise InputError(
            f"{path}: galaxy.source = 'pynbody' needs the optional dependency: "
            f"pip install galmock[pynbody]"
        ) from None
    if not path.exists():
        raise InputError(f"{path}: snapshot not found")
    try:
        stars = pynbody.load(str(path)).s
        pos = np.asarray(stars["pos"].in_units("kpc"), dtype=np.float64)
        vel = np.asarray(stars["vel"].in_units("km s**-1"), dtype=np.float64)
        mass = np.asarray(stars["mass"].in_units("Msol"), dtype=np.float64)
    except Exception as err:  # pynbody raises many types for unreadable or unit-less files
        raise InputError(f"{path}: pynbody cannot read star pos/vel/mass: {err}") from None
    columns: dict[str, np.ndarray] = {"mass": mass}
    for i, c in enumerate("xyz"):
        columns[c] = pos[:, i]
        columns[f"v{c}"] = vel[:, i]
    skipped: dict[str, str] = {}
    for name, (array, unit) in OPTIONAL_ARRAYS.items():
        try:
            values = stars[array].in_units(unit) if unit else stars[array]
            columns[name] = np.asarray(values, dtype=np.float64)
        except Exception as err:  # optional: a format without the array just lacks the field
            skipped[name] = f"{type(err).__name__}: {err}"
            log.info("%s: no %s from pynbody (%s)", path, name, skipped[name])
    ids_generated = "iord" not in stars.loadable_keys() and "iord" not in stars.keys()
    if ids_generated:
        columns["id"] = np.arange(len(mass), dtype=np.int64)
    else:
        columns["id"] = np.asarray(stars["iord"]).astype(np.int64)
    labels = {f: f"s['{f}']" for f in columns}
    labels.update({c: f"s['pos'][:, {i}]" for i, c in enumerate("xyz")})
    labels.update({f"v{c}": f"s['vel'][:, {i}]" for i, c in enumerate("xyz")})
    labels["id"] = "generated 0..N-1" if ids_generated else "s['iord']"
    meta: dict[str, Any] = {
        "format": f"pynbody {type(stars.ancestor).__name__}",
        "pynbody_version": pynbody.__version__,
        "skipped_fields": skipped,
        "ids_generated": ids_generated,
    }
    return SourceParticles(columns=columns, path=str(path), labels=labels, meta=meta)
