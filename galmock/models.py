r"""Region models of a run: where each region's flows are, whether they are current, and what
identifies them.

A region's model is ``<run>/models/region-NNNN`` (:class:`~galmock.layout.RunLayout`), or with
``flows.load`` a pretrained artifact (a one-region plan may load a single artifact directly).
A model is *current* for a region when its manifest records the same training particles (a
hash), the same seed and the same recipe (:meth:`galmock.config.FlowsConfig.recipe`: kind,
network, the family's options and ``flows.training``); train skips current regions
and validate reuses current cached models. A catalog's fingerprint includes each model's
*identity* (kind, architecture, preprocessing, region ball, weight hashes), so retraining a
region invalidates the catalog but moving the run directory does not.

Example:
    >>> ok, why = artifact_matches("/nonexistent/region-0000", None, None, None, 0)
    >>> ok, why
    (False, 'not trained yet')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from galmock.config import FlowsConfig, JobConfig
from galmock.errors import InputError
from galmock.flows.artifact import data_sha256, read_manifest
from galmock.flows.registry import resolve
from galmock.layout import RunLayout, region_name
from galmock.plan import RegionPlan
from galmock.seeds import derive_seed


def model_location(job: JobConfig, plan: RegionPlan, region_id: int) -> str:
    """Where region ``region_id``'s artifact is: ``<run>/models/region-NNNN``, or with
    ``flows.load`` the named/pathed artifact (one-region plans) or its ``region-NNNN``."""
    if job.flows.load is None:
        return str(RunLayout(job.run_dir).model(region_id))
    base = resolve(job.flows.load)
    if len(plan.regions) == 1 and is_artifact(base):
        return base
    return f"{base.rstrip('/')}/{region_name(region_id)}"


def is_artifact(location: str) -> bool:
    """Whether ``location`` holds a readable flow artifact manifest."""
    try:
        read_manifest(location)
    except InputError:
        return False
    return True


def training_seed(job_seed: int, region_id: int) -> int:
    """The seed region ``region_id``'s flows train with (recorded in its manifest)."""
    return derive_seed(job_seed, "train", region_id)


def require_current(
    location: str | Path, pos: np.ndarray, vel: np.ndarray, job: JobConfig, region_id: int,
    weight: np.ndarray | None = None,
) -> None:
    """Refuse a run's own model that no longer matches the job: trained on other particles
    (ingest or plan were rerun), with another seed or other flows settings.

    Raises:
        InputError: naming the model and why it is stale.
    """
    ok, why = artifact_matches(location, pos, vel, job.flows, training_seed(job.seed, region_id),
                               weight)
    if not ok:
        raise InputError(f"{location}: the model is stale for this job ({why}): run "
                         "`galmock train` again")


def require_trained_on(
    location: str | Path, pos: np.ndarray, vel: np.ndarray, weight: np.ndarray | None = None
) -> None:
    """Refuse a model whose manifest's training-data hash is not that of ``pos``/``vel`` (the
    run's particles changed since: ingest or plan were rerun). Validate uses this weaker check:
    it may compare the run's models under other flows settings, never on other particles.

    Raises:
        InputError: naming the model.
    """
    try:
        recorded = read_manifest(location).get("training", {}).get("data_sha256")
    except InputError:
        return  # an unreadable manifest is load_artifact's to report
    if recorded != data_sha256(pos, vel, weight):
        raise InputError(f"{location}: the model was trained on other particles than the run "
                         "has now (ingest or plan were rerun): run `galmock train` again")


def artifact_matches(
    location: str | Path,
    pos: np.ndarray | None,
    vel: np.ndarray | None,
    cfg: FlowsConfig | None,
    seed: int,
    weight: np.ndarray | None = None,
) -> tuple[bool, str]:
    """Whether the artifact at ``location`` was trained on these particles (and training
    weights) with this seed and recipe; with the reason when not."""
    if not (Path(location) / "manifest.json").is_file():
        return False, "not trained yet"
    assert pos is not None and vel is not None and cfg is not None
    try:
        training = read_manifest(location).get("training", {})
    except InputError as err:
        return False, f"unreadable artifact ({err})"
    if training.get("data_sha256") != data_sha256(pos, vel, weight):
        return False, "trained on other particles"
    if training.get("seed") != seed:
        return False, "trained with another seed"
    changed = cfg.stale_keys(training.get("config", {}))
    if changed:
        return False, f"trained with other flows settings ({', '.join(changed)})"
    return True, "up to date"


def model_identity(location: str | Path) -> dict[str, Any]:
    """What identifies a trained model's behaviour: architecture, preprocessing, weights."""
    m = read_manifest(location)
    return {
        "kind": m.get("kind"),
        "architecture": m.get("architecture"),
        "preprocessing": m.get("preprocessing"),
        "region": m.get("region"),
        "weights": [member.get("sha256") for member in m.get("members", [])],
    }
