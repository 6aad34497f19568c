"""Products a group can share: every file and directory a stage writes gets the modes the
user's umask gives a plain mkdir/open, never tempfile's private 0600/0700 (#16)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

from galmock.atomic import atomic_directory, atomic_write_text
from galmock.config import load_job
from galmock.flows.registry import ENV_VAR, register
from galmock.schedulers.slurm import Slurm
from galmock.stages import run_pipeline


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def private(root: Path) -> list[str]:
    """Paths under ``root`` that others could not read (or enter) under umask 022."""
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        need = 0o755 if path.is_dir() else 0o644
        if mode & need != need:
            bad.append(f"{path.relative_to(root)}: {oct(mode)}")
    return bad


def test_atomic_products_follow_the_umask(tmp_path, umask022) -> None:
    atomic_write_text(tmp_path / "plan.json", "{}")
    with atomic_directory(tmp_path / "report") as staging:
        (staging / "report.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "plan.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o755
    os.umask(0o077)  # a private umask is kept too: the modes are the user's choice
    atomic_write_text(tmp_path / "secret.json", "{}")
    assert stat.S_IMODE((tmp_path / "secret.json").stat().st_mode) == 0o600


def test_a_run_directory_is_readable_by_the_group(tmp_path, umask022, monkeypatch) -> None:
    """ingest -> upsample (tiny flows), the Slurm scripts and the model registry."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "config" / "models.json"))
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump({
        "name": "modes", "seed": 1,
        "galaxy": {"demo": {"n_particles": 3000}},
        "plan": {"target_particles": 2000, "holdout_fraction": 0.2},
        "flows": {"kind": "maf", "hidden_features": 8, "hidden_layers": 1,
                  "training": {"max_epochs": 1, "batches_per_epoch": 2, "ensemble_size": 1},
                  "threads": 1, "device": "cpu"},
        "upsample": {"mode": "fixed", "stars_per_particle": 1},
        "observables": {"enabled": False},  # fixed-mode stars have no photometry
    }))  # fmt: skip
    job = load_job(job_path, output=tmp_path / "run")
    threads = torch.get_num_threads()
    try:
        run_pipeline(job, "ingest", "upsample")
    finally:
        torch.set_num_threads(threads)
    Slurm().write_scripts(job, ["ingest", "plan"])
    register("modes-test", tmp_path / "run" / "models" / "region-0000")
    assert (tmp_path / "run" / "models" / "region-0000" / "manifest.json").is_file()
    assert private(tmp_path / "run") == []
    assert private(tmp_path / "config") == []
