"""The stage order and the run directory contract.

``run`` = ingest → plan → train → upsample → convert → validate. Each stage reads and writes
files in the run directory, so any stage can be rerun on its own:

    <run>/job.yaml         the resolved configuration
    <run>/particles.zarr   ingest
    <run>/plan.json        plan
    <run>/models/          train
    <run>/stars.zarr       upsample
    <run>/catalog.zarr     convert (and <run>/catalog.hats/, <run>/selections/<name>.hats/;
                           staged in <run>/.convert.partial/, guarded by <run>/.convert.lock)
    <run>/report/          validate (report.json, figures, index.html)
    <run>/validate-models/ flows of other kinds that validate trains for its comparison
    <run>/slurm/           submit: rendered sbatch scripts and jobs.json
    <run>/suite/           suite: a conditional galaxy model and its report
    <run>/logs/            one log file per stage
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from galmock.atomic import atomic_write_text
from galmock.config import JobConfig
from galmock.production import train_stage, upsample_stage

STAGES = ("ingest", "plan", "train", "upsample", "convert", "validate")

log = logging.getLogger("galmock")


def _ingest(job: JobConfig) -> None:
    from galmock.ingest import ingest

    ingest(job)


def _plan(job: JobConfig) -> None:
    from galmock.plan import plan_regions

    plan = plan_regions(job)
    print(plan.summary())


def _convert(job: JobConfig) -> None:
    from galmock.convert import convert

    result = convert(job)
    print(result.summary())


def _validate(job: JobConfig) -> None:
    from galmock.validate import validate

    validate(job)


STAGE_FUNCTIONS: dict[str, Callable[[JobConfig], None]] = {
    "ingest": _ingest,
    "plan": _plan,
    "train": train_stage,
    "upsample": upsample_stage,
    "convert": _convert,
    "validate": _validate,
}


@contextmanager
def stage_logging(job: JobConfig, stage: str) -> Iterator[Path]:
    """Log the stage to stderr and to ``<run>/logs/<stage>.log``."""
    logs = job.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{stage}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    try:
        yield path
    except Exception as err:
        log.error("stage %s failed: %s", stage, err)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def run_stage(job: JobConfig, stage: str) -> None:
    """Run one stage, recording the resolved job in the run directory first."""
    if stage not in STAGE_FUNCTIONS:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.run_dir / "job.yaml", job.to_yaml())
    with stage_logging(job, stage):
        log.info("stage %s: run directory %s", stage, job.run_dir)
        STAGE_FUNCTIONS[stage](job)
        log.info("stage %s: done", stage)


def run_pipeline(job: JobConfig, first: str = STAGES[0], last: str = STAGES[-1]) -> None:
    """Run stages ``first`` .. ``last`` in order; stops at the first failure."""
    i, j = STAGES.index(first), STAGES.index(last)
    if i > j:
        raise ValueError(f"--from {first} comes after --until {last}")
    for stage in STAGES[i : j + 1]:
        print(f"galmock: stage {stage}", file=sys.stderr)
        run_stage(job, stage)
