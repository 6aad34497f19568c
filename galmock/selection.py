"""Sky/volume selections of a catalog, read from catalog spec files (``catalogs/*.yaml``).

A spec file names one selection; ``galmock convert`` writes each spec listed in a job's
``convert.selections`` to ``<run>/selections/<name>.hats``. Keys (unknown keys are errors)::

    name: galaxyflow-window      # optional, default: the file name; names the output
    description: ...             # optional, copied into the output's metadata
    selection:                   # at least one cut; a star must pass all of them
      cone:                      # ICRS cone; the edge is included, exactly as lsdb's cone_search
        ra_deg: 167.47
        dec_deg: -4.2
        radius_deg: 15.0
      min_distance_kpc: 0.1      # heliocentric distance >= this
      max_distance_kpc: 3.5      # heliocentric distance <  this

An entry of ``convert.selections`` is a spec path (ends in ``.yaml``/``.yml`` or contains a
``/``; relative to the working directory) or a bare name, looked up as ``catalogs/<name>.yaml``
in the working directory and then in the galmock source tree.

Example:
    >>> spec = load_catalog_spec("galaxyflow-window")
    >>> spec.selection.columns
    ('ra', 'dec', 'distance')
    >>> ra, dec, distance = np.array([167.0, 167.0, 10.0]), np.array([-4.0, -4.0, 0.0]), np.ones(3)
    >>> distance[1] = 5.0  # beyond max_distance_kpc
    >>> cols = {"ra": ra, "dec": dec, "distance": distance}
    >>> selection_mask(spec.selection, cols).tolist()
    [True, False, False]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from galmock.config import Section, _describe, _line_numbers
from galmock.errors import InputError

__all__ = [
    "CatalogSpec",
    "ConeSpec",
    "SelectionSpec",
    "cone_mask",
    "find_catalog_spec",
    "load_catalog_spec",
    "selection_mask",
]

_NAME = r"^[A-Za-z0-9._-]+$"


class ConeSpec(Section):
    ra_deg: Annotated[float, Field(ge=0, lt=360)]
    dec_deg: Annotated[float, Field(ge=-90, le=90)]
    radius_deg: Annotated[float, Field(gt=0, le=180)]


class SelectionSpec(Section):
    cone: ConeSpec | None = None
    min_distance_kpc: Annotated[float, Field(ge=0)] | None = None
    max_distance_kpc: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SelectionSpec:
        if self.cone is None and self.min_distance_kpc is None and self.max_distance_kpc is None:
            raise ValueError("a selection needs at least one of cone, min/max_distance_kpc")
        lo, hi = self.min_distance_kpc, self.max_distance_kpc
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"min_distance_kpc ({lo}) must be below max_distance_kpc ({hi})")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Catalog columns the cuts read."""
        cols = ("ra", "dec") if self.cone is not None else ()
        if self.min_distance_kpc is not None or self.max_distance_kpc is not None:
            cols += ("distance",)
        return cols


class CatalogSpec(Section):
    name: Annotated[str, Field(pattern=_NAME)]
    description: str = ""
    selection: SelectionSpec


def cone_mask(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float, radius_deg: float
) -> np.ndarray:
    """Stars within ``radius_deg`` of (``ra0``, ``dec0``), all in degrees, edge included.

    The haversine test of hats' ``cone_filter`` (used by ``lsdb``'s ``cone_search``), written
    the same way so that both select exactly the same stars, to the last bit.

    Example:
        >>> cone_mask(np.array([10.0, 20.0]), np.array([0.0, 0.0]), 10.0, 0.0, 5.0).tolist()
        [True, False]
    """
    ra_rad, dec_rad = np.radians(ra), np.radians(dec)
    ra0_rad, dec0_rad = np.radians(ra0), np.radians(dec0)
    hav_dec = np.square(np.sin((dec_rad - dec0_rad) * 0.5))
    hav_ra = np.square(np.sin((ra_rad - ra0_rad) * 0.5))
    a = hav_dec + np.cos(dec0_rad) * np.cos(dec_rad) * hav_ra
    # lsdb passes the radius in arcsec and divides by 3600: do the same so the rounding agrees.
    threshold = np.square(np.sin(np.radians(radius_deg * 3600.0 / 3600) * 0.5))
    return a <= threshold


def selection_mask(spec: SelectionSpec, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean mask of the rows of ``columns`` (needs ``spec.columns``) that pass every cut."""
    n = len(next(iter(columns.values())))
    mask = np.ones(n, dtype=bool)
    if spec.cone is not None:
        c = spec.cone
        mask &= cone_mask(columns["ra"], columns["dec"], c.ra_deg, c.dec_deg, c.radius_deg)
    if spec.min_distance_kpc is not None:
        mask &= columns["distance"] >= spec.min_distance_kpc
    if spec.max_distance_kpc is not None:
        mask &= columns["distance"] < spec.max_distance_kpc
    return mask


def find_catalog_spec(entry: str, where: str = "convert.selections") -> Path:
    """The spec file a ``convert.selections`` entry names (see the module docstring)."""
    if entry.endswith((".yaml", ".yml")) or "/" in entry:
        candidates = [Path(entry).expanduser()]
    else:
        file = f"{entry}.yaml"
        source_tree = Path(__file__).resolve().parents[1] / "catalogs"
        candidates = [Path.cwd() / "catalogs" / file, source_tree / file]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    looked = ", ".join(str(p) for p in dict.fromkeys(candidates))
    raise InputError(f"{where}: catalog spec {entry!r} not found (looked for {looked})")


def load_catalog_spec(entry: str | Path) -> CatalogSpec:
    """Load and validate a catalog spec; errors name the file, key, value and line.

    Example:
        >>> load_catalog_spec("galaxyflow-window").selection.max_distance_kpc
        3.5
    """
    path = find_catalog_spec(str(entry))
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
        lines = _line_numbers(yaml.compose(text))
    except OSError as err:
        raise InputError(f"{path}: cannot read catalog spec: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: a catalog spec must be a mapping, got {type(data).__name__}")
    named: dict[str, Any] = {"name": path.stem, **data}
    try:
        return CatalogSpec.model_validate(named)
    except ValidationError as err:
        problems = list(dict.fromkeys(_describe(e, lines, {}) for e in err.errors()))
        listing = "\n  ".join(problems)
        raise InputError(f"{path}: invalid catalog spec:\n  {listing}") from None
