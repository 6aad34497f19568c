r"""The run directory: every on-disk name a stage reads or writes, in one place.

A run directory is the contract between stages (and with users): each stage reads the products
of the stages before it and writes its own, so any stage can be rerun, resumed or moved to
another machine by itself. :class:`RunLayout` is the only place that spells those names; stages,
the scheduler's progress probes and validation ask it instead of joining strings::

    <run>/job.yaml                the resolved configuration
    <run>/logs/<stage>.log        one log per stage (and slurm-<stage>-<jobid>.out)
    <run>/particles.zarr/         ingest (or generate)
    <run>/plan.json               plan
    <run>/training.zarr/          plan: each region's training particles, region after region
    <run>/models/region-NNNN/     train: one flow ensemble per region
        region-NNNN.work/         its checkpoints until the artifact is saved
        region-NNNN-properties/   upsample.properties: flow: the region's property flow
    <run>/stars.zarr/             upsample (staged in .stars.zarr.partial/)
    <run>/catalog.zarr/           convert; also catalog.hats/ and selections/<name>.hats/,
                                  staged in .convert.partial/
    <run>/.<stage>.lock           held while train, upsample, convert or validate runs
    <run>/report/                 validate: report.json, PNG figures, index.html
    <run>/validate-models/<kind>/ flows of other kinds that validate trains for its comparison
    <run>/slurm/                  submit: rendered sbatch scripts and jobs.json
    <run>/suite/                  suite: the conditional galaxy model (model/) and report/

Example:
    >>> layout = RunLayout("/scratch/me/demo")
    >>> layout.model(3).name
    'region-0003'
    >>> layout.model_workdir(3).name
    'region-0003.work'
    >>> layout.staging(layout.stars).name
    '.stars.zarr.partial'
    >>> str(layout.log("train"))
    '/scratch/me/demo/logs/train.log'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from galmock.errors import InputError

# The stage chain, in order (``galmock run``): the registry in galmock.stages gives each its
# function; the config names them here so it can check per-stage sections without importing it.
STAGE_ORDER = ("ingest", "plan", "train", "upsample", "convert", "validate")


def region_name(region_id: int) -> str:
    r"""The directory name of region ``region_id``'s model: ``region-NNNN``.

    Example:
        >>> region_name(12)
        'region-0012'
    """
    return f"region-{int(region_id):04d}"


@dataclass(frozen=True)
class RunLayout:
    r"""Every path of one run directory.

    Arguments:
        root: the run directory (``output`` of the job, absolute after loading).
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def create(self) -> None:
        """Make the run directory (and its parents) and check that stages can write there.

        Raises:
            InputError: it is a file, lies under a file, cannot be created or is not
                writable; the message names the path and the reason.

        Example:
            >>> (tmp_path / "a-file").write_text("")
            0
            >>> RunLayout(tmp_path / "a-file" / "run").create()
            Traceback (most recent call last):
            ...
            galmock.errors.InputError: .../a-file/run: cannot create the run directory (output): ...
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise InputError(f"{root}: the run directory (output) is a file, not a directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(
                f"{root}: cannot create the run directory (output): {err.strerror or err}"
            ) from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise InputError(f"{root}: the run directory (output) is not writable")

    # -- configuration and logs ---------------------------------------------------------------
    @property
    def job(self) -> Path:
        return self.root / "job.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    @property
    def dask_logs(self) -> Path:
        return self.logs / "dask"

    # -- stage products -----------------------------------------------------------------------
    @property
    def particles(self) -> Path:
        return self.root / "particles.zarr"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def training(self) -> Path:
        return self.root / "training.zarr"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, region_id: int) -> Path:
        return self.models / region_name(region_id)

    def model_workdir(self, region_id: int) -> Path:
        return self.models / f"{region_name(region_id)}.work"

    def trained_models(self) -> list[Path]:
        """The region models saved so far (their directories, with a manifest)."""
        manifests = self.models.glob("region-[0-9][0-9][0-9][0-9]/manifest.json")
        return sorted(p.parent for p in manifests)

    def model_workdirs(self) -> list[Path]:
        """Checkpoint directories of regions whose training has not finished."""
        return sorted(self.models.glob("region-*.work"))

    def property_model(self, region_id: int) -> Path:
        return self.models / f"{region_name(region_id)}-properties"

    def property_workdir(self, region_id: int) -> Path:
        return self.models / f"{region_name(region_id)}-properties.work"

    @property
    def stars(self) -> Path:
        return self.root / "stars.zarr"

    @property
    def catalog_zarr(self) -> Path:
        return self.root / "catalog.zarr"

    @property
    def catalog_hats(self) -> Path:
        return self.root / "catalog.hats"

    @property
    def selections(self) -> Path:
        return self.root / "selections"

    @property
    def convert_products(self) -> tuple[str, ...]:
        """The names convert swaps in together (relative to the run directory)."""
        return (self.selections.name, self.catalog_hats.name, self.catalog_zarr.name)

    @property
    def convert_staging(self) -> Path:
        return self.root / ".convert.partial"

    def lock(self, stage: str) -> Path:
        """The file whose lock lets one ``stage`` at a time work on this run directory."""
        return self.root / f".{stage}.lock"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def validate_models(self, kind: str) -> Path:
        return self.root / "validate-models" / kind

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    def sbatch_script(self, stage: str) -> Path:
        return self.slurm / f"{stage}.sbatch"

    @property
    def slurm_jobs(self) -> Path:
        return self.slurm / "jobs.json"

    @property
    def suite(self) -> Path:
        return self.root / "suite"

    @property
    def suite_model(self) -> Path:
        return self.suite / "model"

    @property
    def suite_report(self) -> Path:
        return self.suite / "report"

    # -- staging ------------------------------------------------------------------------------
    @staticmethod
    def staging(target: Path) -> Path:
        """Where a product is assembled before it replaces ``target``: ``.<name>.partial``."""
        return target.with_name(f".{target.name}.partial")
