"""``galmock suite JOB``: train the conditional galaxy model (GalacticFlow) on a galaxy suite.

The suite (:func:`galmock.suite.load_suite`) minus ``suite.leave_out`` galaxies trains the model
(:func:`galmock.flows.galaxy_training.fit_galaxy_model`, checkpointed in
``<run>/suite/model.work`` so a killed run resumes); the model is saved to ``<run>/suite/model``,
the left-out galaxies validate it in ``<run>/suite/report/``
(:func:`galmock.validate.galaxy_model.write_report`), and with ``suite.register_as`` it is
registered in the model registry.

Example:
    >>> run(load_job("jobs/galaxy-suite.yaml"))   # doctest: +SKIP
    PosixPath('.../runs/galaxy-suite/suite/model')
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from galmock.config import JobConfig
from galmock.errors import ConfigError
from galmock.flows.galaxy_model import save_galaxy_model
from galmock.flows.galaxy_training import fit_galaxy_model
from galmock.flows.registry import register, valid_name
from galmock.layout import RunLayout
from galmock.suite import choose_leave_out, load_suite
from galmock.validate.galaxy_model import write_report

log = logging.getLogger("galmock.suite")


def run(job: JobConfig) -> Path:
    """Train on the suite, save ``<run>/suite/model``, write the validation report to
    ``<run>/suite/report/`` and register the model if asked; returns the model's path."""
    cfg = job.suite
    if cfg.register_as is not None and not valid_name(cfg.register_as):
        raise ConfigError(f"suite.register_as = {cfg.register_as!r}: use letters, digits, "
                          "'.', '_' and '-'")
    if cfg.threads != "auto":
        torch.set_num_threads(int(cfg.threads))
    galaxies = load_suite(job)
    held = choose_leave_out(galaxies, cfg.leave_out)
    train = [g for g in galaxies if g.name not in held]
    validation = [g for g in galaxies if g.name in held]
    layout = RunLayout(job.run_dir)
    target = layout.suite_model
    workdir = target.with_name(f"{target.name}.work")
    log.info("suite: %d galaxies (%s held out), log M* %.2f-%.2f, %d training rows", len(galaxies),
             ", ".join(held) or "none", min(g.log_mass for g in galaxies),
             max(g.log_mass for g in galaxies), sum(len(g.stars) for g in train))
    model, record = fit_galaxy_model(train, cfg, cfg, job.seed, validation, workdir,
                                     device=cfg.device,
                                     checkpoint_every_epochs=cfg.checkpoint_every_epochs)
    model.metadata["suite"] = {
        "galaxies": [{"name": g.name, "source": g.source, "particles": len(g.stars),
                      "parameters": g.parameters, "left_out": g.name in held}
                     for g in galaxies],
        "left_out": held,
    }
    save_galaxy_model(model, target)
    shutil.rmtree(workdir, ignore_errors=True)  # the artifact supersedes the checkpoints
    report = write_report(model, galaxies, held, layout.suite_report, cfg.report, job.seed)
    if cfg.register_as is not None:
        register(cfg.register_as, target, overwrite=True)
    print(f"galaxy model ({record['epochs']} epochs, {record['wall_time_s']:.0f} s) -> {target}")
    print(f"validation report -> {report}")
    if cfg.register_as is not None:
        print(f"registered as {cfg.register_as}")
    return target


def progress(layout: RunLayout) -> str:
    """What the run directory says about suite."""
    done = (layout.suite_model / "manifest.json").is_file()
    return "galaxy model trained" if done else "no galaxy model yet"
