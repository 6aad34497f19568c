"""``galmock verify JOB``: check every product of a run against what its writer recorded.

A damaged, missing or stale product is named, never read as valid (#16). In order:

- ``plan.json``: readable and consistent (ids, masses, boxes exactly the split tree's leaves);
- ``particles.zarr``: no chunk missing, every chunk's CRC32C;
- ``training.zarr``: written for the current plan, no chunk missing, every chunk's CRC32C;
- ``models/region-NNNN``: weights match the manifest's sha256, and the run's own models were
  trained on the particles the plan now gives the region, with the job's seed and settings;
- ``stars.zarr``: made from the current plan, models and settings; complete, no chunk
  missing, every chunk's CRC32C, and each region's rows hash to the sha256 upsample recorded;
- ``catalog.zarr``: complete, no chunk missing, every chunk's CRC32C;
- ``catalog.hats`` and each ``selections/<name>.hats``: every partition partition_info.csv
  lists present (and no other), every Parquet page's checksum, every row in its partition's
  sky pixel, the rows adding up to hats.properties' count (catalog.hats: to catalog.zarr's).

Products not made yet are reported as such and not counted as failures. The command prints one
line per product and exits 1 if any check failed.

Example:
    >>> from galmock.stages.plan import run as run_plan
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=4000", "plan.target_particles=1000"])
    >>> _ = run_ingest(job), run_plan(job)
    >>> checks = run(job)
    plan.json: ok (4 regions)
    particles.zarr: ok (4,000 particles)
    training.zarr: ok (... rows for 4 regions)
    models: not made yet
    stars.zarr: not made yet
    catalog.zarr: not made yet
    catalog.hats: not made yet
    >>> _ = RunLayout(job.run_dir).plan.write_text("{}")
    >>> run(job)
    Traceback (most recent call last):
    ...
    galmock.errors.InputError: .../run: 1 product(s) failed verification: plan.json (...)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from galmock.chunks import read_column
from galmock.config import JobConfig
from galmock.errors import GalmockError, InputError
from galmock.flows.artifact import load_artifact
from galmock.hats import verify_catalog
from galmock.layout import RunLayout
from galmock.models import model_location, require_current
from galmock.particles import read_particle_store
from galmock.plan import RegionPlan, read_plan
from galmock.regions import TRAINING_COLUMNS, RegionParticles
from galmock.stages.upsample import require_current_stars
from galmock.store import CATALOG_FORMAT, STARS_FORMAT, columns_sha256, open_catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One product's verdict: ``status`` is ok, failed or missing."""

    product: str
    status: str
    detail: str

    def line(self) -> str:
        if self.status == "missing":
            return f"{self.product}: not made yet"
        return f"{self.product}: {self.status} ({self.detail})"


def run(job: JobConfig) -> list[Check]:
    """Verify the run directory; prints a line per product, raises if any failed."""
    layout = RunLayout(job.run_dir)
    plan: RegionPlan | None = None

    def check_plan() -> str:
        nonlocal plan
        plan = read_plan(layout.plan)
        return f"{len(plan.regions)} regions"

    checks = [_check("plan.json", layout.plan.exists(), check_plan)]
    checks.append(_check("particles.zarr", layout.particles.exists(), lambda: _particles(layout)))
    checks.append(_check("training.zarr", plan is not None and layout.training.exists(),
                         lambda: _training(layout, plan)))  # type: ignore[arg-type]
    # The models are checked against the plan's regions: only once the plan is readable.
    checks.append(_check("models", plan is not None and layout.models.exists(),
                         lambda: _models(job, plan)))  # type: ignore[arg-type]
    checks.append(_check("stars.zarr", layout.stars.exists(), lambda: _stars(job, layout)))
    checks.append(_check("catalog.zarr", layout.catalog_zarr.exists(), lambda: _catalog(layout)))
    checks.append(_check("catalog.hats", layout.catalog_hats.exists(),
                         lambda: _hats(layout.catalog_hats, layout)))
    for hats in sorted(layout.selections.glob("*.hats")):
        checks.append(_check(f"{layout.selections.name}/{hats.name}", True,
                             lambda hats=hats: _hats(hats, None)))
    for c in checks:
        print(c.line())
    failed = [c for c in checks if c.status == "failed"]
    if failed:
        listing = "; ".join(f"{c.product} ({c.detail})" for c in failed)
        raise InputError(f"{layout.root}: {len(failed)} product(s) failed verification: {listing}")
    return checks


def progress(layout: RunLayout) -> str:
    """Nothing to track: verify writes no product (``galmock status``)."""
    return "writes nothing; run it to check the products"


def _check(product: str, present: bool, verify: Callable[[], str]) -> Check:
    if not present:
        return Check(product, "missing", "")
    try:
        return Check(product, "ok", verify())
    except GalmockError as err:
        return Check(product, "failed", str(err))


def _particles(layout: RunLayout) -> str:
    store = read_particle_store(layout.particles)  # no chunk missing
    for name in store.fields:
        store.load([name])  # every chunk's CRC32C
    return f"{len(store):,} particles"


def _training(layout: RunLayout, plan: RegionPlan) -> str:
    data = RegionParticles(layout.training, plan)  # this plan's, no chunk missing
    for name in TRAINING_COLUMNS:
        read_column(data.group, data.path, name)  # every chunk's CRC32C
    return f"{int(data.offsets[-1]):,} rows for {len(plan.regions)} regions"


def _models(job: JobConfig, plan: RegionPlan) -> str:
    data = RegionParticles(RunLayout(job.run_dir).training, plan) if job.flows.load is None \
        else None
    for r in plan.regions:
        location = model_location(job, plan, r.id)
        load_artifact(location)  # weights against the manifest's sha256, architecture
        if data is not None:
            pos, vel, weight = data.training_set(r.id)
            require_current(location, pos, vel, job, r.id, weight)
    own = "trained on the current particles" if data is not None else f"from {job.flows.load}"
    return f"{len(plan.regions)} region model(s), {own}"


def _stars(job: JobConfig, layout: RunLayout) -> str:
    catalog = open_catalog(layout.stars, format=STARS_FORMAT)  # complete, no chunk missing
    require_current_stars(job, catalog)  # made from the current plan, models and settings
    records = catalog.attrs.get("blocks", [])
    for rec in records:
        a, b = int(rec["start"]), int(rec["start"]) + int(rec["rows"])
        rows = catalog.read(a, b)  # every chunk's CRC32C
        if columns_sha256(rows) != rec["sha256"]:
            raise InputError(f"{layout.stars}: rows {a}:{b} (region {rec['region']}) do not "
                             "match the sha256 upsample recorded for them")
    covered = sum(int(rec["rows"]) for rec in records)
    if covered != len(catalog):
        raise InputError(f"{layout.stars}: the block records cover {covered} of "
                         f"{len(catalog)} rows")
    return f"{len(catalog):,} stars, {len(records)} region block(s) match their sha256"


def _hats(path: Path, layout: RunLayout | None) -> str:
    rows = verify_catalog(path)
    if layout is not None and layout.catalog_zarr.exists():
        zarr_rows = len(open_catalog(layout.catalog_zarr, format=CATALOG_FORMAT))
        if rows != zarr_rows:
            raise InputError(f"{path}: {rows} rows, but {layout.catalog_zarr.name} has "
                             f"{zarr_rows}")
    return f"{rows:,} rows, every page's checksum holds"


def _catalog(layout: RunLayout) -> str:
    catalog = open_catalog(layout.catalog_zarr, format=CATALOG_FORMAT)
    for start, stop in catalog.chunks():
        values = catalog.read(start, stop)  # every chunk's CRC32C
        del values
    return f"{len(catalog):,} rows, every chunk's checksum holds"


