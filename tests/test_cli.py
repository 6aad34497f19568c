"""The galmock command line, run as users run it (a real subprocess)."""

import subprocess
import sys
from pathlib import Path

import pytest

from galmock.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "jobs" / "demo.yaml"


def galmock(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "galmock", *args], cwd=cwd, capture_output=True, text=True
    )


def test_help_for_every_subcommand() -> None:
    top = galmock("--help")
    assert top.returncode == 0
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in (c for c in commands if c != "models"):
        assert name in top.stdout
        sub = galmock(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "--set" in sub.stdout and "--output" in sub.stdout and "JOB" in sub.stdout


def test_bad_override_is_a_clear_error(tmp_path: Path) -> None:
    result = galmock("ingest", str(DEMO), "--set", "galaxy.demo.n_particles=zero")
    assert result.returncode == 1
    assert "jobs/demo.yaml" in result.stderr
    assert "galaxy.demo.n_particles = 'zero' (from --set galaxy.demo.n_particles=zero)" in (
        result.stderr
    )


def test_missing_job_file(tmp_path: Path) -> None:
    result = galmock("plan", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "nope.yaml: cannot read job file" in result.stderr


def test_plan_without_ingest_names_the_missing_store(tmp_path: Path) -> None:
    result = galmock("plan", str(DEMO), "--output", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "particles.zarr: particle store not found" in result.stderr


def test_run_until_plan_writes_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = galmock(
        "run", str(DEMO), "--until", "plan", "--output", str(run),
        "--set", "galaxy.demo.n_particles=20000", "--set", "plan.target_particles=4000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (run / "job.yaml").is_file()
    assert (run / "particles.zarr" / "zarr.json").is_file()
    assert (run / "plan.json").is_file()
    assert (run / "logs" / "ingest.log").is_file() and (run / "logs" / "plan.log").is_file()
    assert "region(s), 20000 of 20000 particles owned" in result.stdout
    resolved = (run / "job.yaml").read_text()
    assert "n_particles: 20000" in resolved and str(run) in resolved


def test_run_from_validate_without_a_plan_fails_cleanly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = galmock("run", str(DEMO), "--output", str(run), "--from", "validate")
    assert result.returncode == 1
    assert "plan.json: region plan not found (run `galmock plan` first)" in result.stderr
    assert not (run / "report").exists()


def test_models_register_list_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from galmock.config import load_job
    from galmock.flows.training import fit_ensemble

    env_registry = tmp_path / "models.json"
    monkeypatch.setenv("GALMOCK_MODEL_REGISTRY", str(env_registry))
    flows = load_job(
        DEMO,
        ["flows.kind=maf", "flows.training.ensemble_size=1", "flows.training.max_epochs=2",
         "flows.maf.transforms=1", "flows.hidden_features=8", "flows.hidden_layers=1"],
    ).flows  # fmt: skip
    rng = torch.Generator().manual_seed(0)
    pos = torch.randn(300, 3, generator=rng, dtype=torch.float64).numpy()
    vel = 50 * torch.randn(300, 3, generator=rng, dtype=torch.float64).numpy()
    artifact = tmp_path / "region-0000"
    fit_ensemble(pos, vel, flows.spec(), flows.training, seed=1, centre=(0, 0, 0), radius=5.0,
                 artifact=artifact, runtime=flows.runtime())

    empty = galmock("models", "list")
    assert empty.returncode == 0 and "no models registered" in empty.stdout
    reg = galmock("models", "register", "toy", str(artifact))
    assert reg.returncode == 0, reg.stderr
    listed = galmock("models", "list")
    assert listed.stdout.startswith("toy\t" + str(artifact))
    shown = galmock("models", "show", "toy")
    assert shown.returncode == 0, shown.stderr
    assert '"kind": "maf"' in shown.stdout and str(artifact) in shown.stdout
    missing = galmock("models", "show", "nope")
    assert missing.returncode == 1 and "neither a registered model" in missing.stderr


def test_stage_order_is_a_command_line_error(tmp_path: Path) -> None:
    result = galmock("run", str(DEMO), "--from", "convert", "--until", "plan",
                     "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "--from convert comes after --until plan" in result.stderr
    assert not (tmp_path / "run").exists()
