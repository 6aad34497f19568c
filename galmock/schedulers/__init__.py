r"""Batch schedulers that run the stage chain: ``galmock submit`` and ``galmock status``.

One module per scheduler, each a subclass of :class:`~galmock.schedulers.base.Scheduler`
(``base.py``: the interface and everything schedulers share) registered by name in
:data:`SCHEDULERS`; Slurm (``slurm.py``) is the built-in one and the default. :func:`submit`
and :func:`status` are what the command line calls (:func:`submit_command` and
:func:`status_command` take its parsed arguments).

Example:
    >>> sorted(SCHEDULERS)
    ['slurm']
    >>> scheduler("slurm").title
    'Slurm'
    >>> scheduler("pbs")
    Traceback (most recent call last):
    ...
    galmock.errors.ConfigError: unknown scheduler 'pbs'; schedulers are slurm
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run")
    >>> submit(job, "plan", "train", dry_run=True)  # doctest: +ELLIPSIS
    sbatch --parsable .../run/slurm/plan.sbatch
    sbatch --parsable '--dependency=afterok:<plan-jobid>' .../run/slurm/train.sbatch
    []
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from galmock.config import JobConfig
from galmock.errors import ConfigError
from galmock.layout import RunLayout
from galmock.schedulers.base import Scheduler, SchedulerError, Submitted
from galmock.schedulers.slurm import Slurm
from galmock.stages import STAGE_NAMES

__all__ = ["DEFAULT", "SCHEDULERS", "Scheduler", "SchedulerError", "Submitted", "register",
           "scheduler", "status", "status_command", "submit", "submit_command"]  # fmt: skip

SCHEDULERS: dict[str, type[Scheduler]] = {Slurm.name: Slurm}
DEFAULT = Slurm.name


def register(cls: type[Scheduler]) -> type[Scheduler]:
    """Add a scheduler class to :data:`SCHEDULERS` under its ``name`` (usable as a class
    decorator); a name taken by another class is an error."""
    if SCHEDULERS.get(cls.name, cls) is not cls:
        raise ValueError(f"scheduler {cls.name!r} is already registered")
    SCHEDULERS[cls.name] = cls
    return cls


def scheduler(name: str = DEFAULT) -> Scheduler:
    """The scheduler called ``name``; a :class:`ConfigError` when there is none."""
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown scheduler {name!r}; schedulers are {', '.join(SCHEDULERS)}"
        ) from None


def submit(
    job: JobConfig,
    first: str = STAGE_NAMES[0],
    last: str = STAGE_NAMES[-1],
    dry_run: bool = False,
    *,
    job_file: str | None = None,
    using: str = DEFAULT,
    echo: Callable[[str], None] = print,
) -> list[Submitted]:
    """``galmock submit JOB [--from S] [--until S] [--dry-run]``: render and submit the stages
    ``first`` .. ``last`` (:meth:`Scheduler.submit`); after a real submission, say where the job
    ids are and how to follow them (``galmock status <job_file>``, default the run's
    ``job.yaml``). Returns the submitted jobs (none for a dry run)."""
    chosen = scheduler(using)
    submitted = chosen.submit(job, first, last, dry_run=dry_run, echo=echo)
    if not dry_run:
        follow = job_file if job_file is not None else str(RunLayout(job.run_dir).job)
        echo(f"job ids in {chosen.jobs_file(job)}; follow with `galmock status {follow}`")
    return submitted


def status(job: JobConfig, *, using: str = DEFAULT, echo: Callable[[str], None] = print) -> None:
    """``galmock status JOB``: per submitted stage its job id, state and progress
    (:meth:`Scheduler.status_lines`)."""
    for line in scheduler(using).status_lines(job):
        echo(line)


def submit_command(job: JobConfig, args: argparse.Namespace) -> list[Submitted]:
    """:func:`submit` with ``galmock submit``'s arguments (``job``, ``first``, ``last``,
    ``dry_run``)."""
    return submit(job, args.first, args.last, args.dry_run, job_file=args.job)


def status_command(job: JobConfig, args: argparse.Namespace) -> None:
    """:func:`status` for ``galmock status``."""
    status(job)
