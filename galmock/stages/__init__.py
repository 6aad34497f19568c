r"""The stages of a run, and the one registry that the CLI, ``galmock run``, the schedulers and
the config read.

``run`` = ingest → plan → train → upsample → convert → validate; ``suite``, ``generate`` and
``verify`` are stages outside the chain. Each stage is a module here with ``run(job)`` (its
work; the result is printed when it has a ``summary()``) and ``progress(layout)`` (what the run
directory says about it, for ``galmock status``). A :class:`Stage` records its name, one-line
help, function, the resources it runs with (``kind``: ``serial``, ``mpi`` ranks or a ``dask``
cluster) and its progress probe; :data:`STAGES` is the chain and :data:`COMMANDS` the rest.
Stages communicate only through files of the run directory (:class:`galmock.layout.RunLayout`),
so any stage can be rerun, resumed or moved to another machine by itself.

Example:
    >>> [s.name for s in STAGES]
    ['ingest', 'plan', 'train', 'upsample', 'convert', 'validate']
    >>> stage("train").kind
    'mpi'
    >>> [s.name for s in chain("plan", "upsample")]
    ['plan', 'train', 'upsample']
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from galmock.atomic import atomic_write_text
from galmock.config import JobConfig
from galmock.layout import STAGE_ORDER, RunLayout
from galmock.stages import (
    convert,
    generate,
    ingest,
    plan,
    suite,
    train,
    upsample,
    validate,
    verify,
)

log = logging.getLogger("galmock")


@dataclass(frozen=True)
class Stage:
    r"""One stage of the pipeline.

    Arguments:
        name: the subcommand and the log file's name.
        help: one line for ``galmock --help``.
        run: the stage's work on a job.
        kind: how a scheduler runs it: ``serial`` (one task), ``mpi`` (ranks) or ``dask``
            (a Dask cluster, per ``convert.cluster``).
        progress: what the run directory says about the stage.
    """

    name: str
    help: str
    run: Callable[[JobConfig], object]
    kind: Literal["serial", "mpi", "dask"]
    progress: Callable[[RunLayout], str]


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "read the galaxy source into <run>/particles.zarr (centred, aligned, "
          "validated)", ingest.run, "serial", ingest.progress),
    Stage("plan", "split the galaxy into regions; writes <run>/plan.json and prints a summary",
          plan.run, "serial", plan.progress),
    Stage("train", "train the flows of every region into <run>/models/", train.run, "mpi",
          train.progress),
    Stage("upsample", "sample stars from the region flows into <run>/stars.zarr", upsample.run,
          "mpi", upsample.progress),
    Stage("convert", "convert stars to Gaia-frame ICRS catalogs (<run>/catalog.zarr, "
          "catalog.hats/, selections/)", convert.run, "dask", convert.progress),
    Stage("validate", "compare upsamplers with classifier tests; writes <run>/report/",
          validate.run, "dask", validate.progress),
)
COMMANDS: tuple[Stage, ...] = (
    Stage("suite", "train the conditional galaxy model (GalacticFlow) on the job's suite of "
          "galaxies", suite.run, "serial", suite.progress),
    Stage("generate", "sample a galaxy from a conditional galaxy model into "
          "<run>/particles.zarr", generate.run, "serial", ingest.progress),
    Stage("verify", "check every product of the run against what its writer recorded "
          "(checksums, training-data hashes, plan consistency)", verify.run, "serial",
          verify.progress),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
assert STAGE_NAMES == STAGE_ORDER, "galmock.layout.STAGE_ORDER must list the chain"

_BY_NAME = {s.name: s for s in (*STAGES, *COMMANDS)}


def stage(name: str) -> Stage:
    """The stage called ``name`` (chain or command)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(_BY_NAME)}") from None


def chain(first: str = STAGE_NAMES[0], last: str = STAGE_NAMES[-1]) -> list[Stage]:
    """The chain's stages ``first`` .. ``last``, in order."""
    i, j = STAGE_NAMES.index(first), STAGE_NAMES.index(last)
    if i > j:
        raise ValueError(f"--from {first} comes after --until {last}")
    return list(STAGES[i : j + 1])


@contextmanager
def stage_logging(job: JobConfig, name: str) -> Iterator[Path]:
    """Log the stage to stderr and to ``<run>/logs/<stage>.log``."""
    layout = RunLayout(job.run_dir)
    layout.logs.mkdir(parents=True, exist_ok=True)
    path = layout.log(name)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    try:
        yield path
    except Exception as err:
        log.error("stage %s failed: %s", name, err)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def run_stage(job: JobConfig, name: str) -> object:
    """Run one stage, then record the resolved job in the run directory; prints the result's
    summary when it has one, and returns the result.

    ``job.yaml`` is written only once the stage succeeded: a stage refused (another job holds
    the run directory) or failed must not overwrite the record of the products there.
    """
    step = stage(name)
    RunLayout(job.run_dir).create()
    with stage_logging(job, name):
        log.info("stage %s: run directory %s", name, job.run_dir)
        result = step.run(job)
        atomic_write_text(RunLayout(job.run_dir).job, job.to_yaml())
        summary = getattr(result, "summary", None)
        if callable(summary):
            print(summary())
        log.info("stage %s: done", name)
    return result


def run_pipeline(job: JobConfig, first: str = STAGE_NAMES[0], last: str = STAGE_NAMES[-1]) -> None:
    """Run stages ``first`` .. ``last`` in order; stops at the first failure."""
    for step in chain(first, last):
        print(f"galmock: stage {step.name}", file=sys.stderr)
        run_stage(job, step.name)
