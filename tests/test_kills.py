"""A killed job loses nothing (#16): every stage of the chain, SIGKILLed at five seeded random
points of its work, then rerun, gives the products an uninterrupted run gives, leaves nothing
behind, and ``galmock verify`` passes.

One tiny run directory per stage (2 regions, tiny MAFs, 30,000 stars, no HATS). The kill falls
at a seeded random time after the stage logged its start (so after the imports, in its work; a
point past its end is a kill of a finished job, which must be harmless too); the rerun runs
in-process, the same code as the CLI.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from galmock.config import load_job
from galmock.stages import run_stage, stage

REPO = Path(__file__).resolve().parent.parent
KILLS = 5
STAGES = ("ingest", "plan", "train", "upsample", "convert")
PRODUCTS = {"ingest": ["particles.zarr"], "plan": ["plan.json", "training.zarr"],
            "train": ["models"], "upsample": ["stars.zarr"],
            "convert": ["catalog.zarr"]}  # fmt: skip
# Timestamps and run history (where a fit resumed), not content: the weights must match.
VOLATILE = {"created", "created_utc", "wall_time_s", "resumed_from_epoch"}
LEFTOVER_MARKS = (".tmp-", ".old-", ".partial", ".work")

JOB = {
    "name": "kills", "seed": 11,
    "galaxy": {"demo": {"n_particles": 3000}},
    "plan": {"target_particles": 1500},
    "flows": {"kind": "maf", "hidden_features": 8, "hidden_layers": 1, "maf": {"transforms": 2},
              "training": {"max_epochs": 6, "patience_epochs": 6, "batches_per_epoch": 20,
                           "ensemble_size": 2},
              "threads": 1, "device": "cpu", "checkpoint_every_epochs": 1},
    "upsample": {"mode": "fixed", "stars_per_particle": 10, "chunk_rows": 4096,
                 "batch_rows": 1000, "checkpoint_seconds": 0.05},
    "observables": {"enabled": False},  # fixed-mode stars have no photometry
    "convert": {"n_workers": 1, "threads_per_worker": 1, "hats": False},
}  # fmt: skip

pytestmark = pytest.mark.slow


def content(path: Path) -> dict[str, object]:
    """Every file under ``path`` (or the file): bytes, or JSON without its timestamps and with
    the run directory written as <run> (products record where they were made)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out: dict[str, object] = {}
    for f in files:
        key = str(f.relative_to(path.parent))
        if f.suffix == ".json":
            out[key] = _normalised(json.loads(f.read_text()), str(path.parent))
        else:
            out[key] = f.read_bytes()
    return out


def _normalised(value: object, run: str) -> object:
    if isinstance(value, dict):
        return {k: _normalised(v, run) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalised(v, run) for v in value]
    return value.replace(run, "<run>") if isinstance(value, str) else value


def finished(run: Path, name: str) -> bool:
    """Whether the stage had completed its products (a train stage: both regions' models)."""
    if name == "train":
        return all((run / "models" / f"region-{i:04d}" / "manifest.json").is_file()
                   for i in range(2))  # fmt: skip
    return all((run / p).exists() for p in PRODUCTS[name])


def leftovers(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*")
                  if any(mark in p.name for mark in LEFTOVER_MARKS))  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kills")
    job_path = root / "job.yaml"
    job_path.write_text(yaml.safe_dump(JOB))
    run = root / "reference"
    job = load_job(job_path, output=run)
    seconds = {}
    threads = torch.get_num_threads()
    try:
        for name in STAGES:  # timed: the kill points are drawn from each stage's length
            started = time.perf_counter()
            run_stage(job, name)
            seconds[name] = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return {"job": job_path, "run": run, "seconds": seconds}


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_killed_anywhere_reruns_to_the_same_products(reference, tmp_path, name) -> None:
    job_path = reference["job"]
    rng = random.Random(f"kills-{name}")
    before = STAGES[: STAGES.index(name)]
    run = tmp_path / "run"
    run.mkdir()
    for earlier in before:  # the products this stage reads, from the reference
        for product in PRODUCTS[earlier]:
            source = reference["run"] / product
            (shutil.copytree if source.is_dir() else shutil.copy)(source, run / product)
    job = load_job(job_path, output=run)
    log = run / "logs" / f"{name}.log"
    cmd = [sys.executable, "-m", "galmock", name, str(job_path), "--output", str(run)]
    interrupted = 0
    threads = torch.get_num_threads()
    try:
        for kill in range(KILLS):
            log.unlink(missing_ok=True)
            with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
                deadline = time.monotonic() + 120
                while not (log.is_file() and f"stage {name}: run directory" in log.read_text()):
                    assert time.monotonic() < deadline, "the stage never started"
                    if proc.poll() is not None:
                        pytest.fail(f"kill {kill}: exited early: {proc.stderr.read()[-2000:]}")
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, reference["seconds"][name]))
                proc.kill()
                proc.wait()
            interrupted += not finished(run, name)
            run_stage(job, name)  # the rerun
            for product in PRODUCTS[name]:
                got, want = content(run / product), content(reference["run"] / product)
                assert got.keys() == want.keys(), f"kill {kill}: files differ"
                assert got == want, f"kill {kill}: {product} differs"
            assert leftovers(run) == [], f"kill {kill}"
            if kill < KILLS - 1:  # the next kill interrupts a fresh run of the stage
                for product in PRODUCTS[name]:
                    shutil.rmtree(run / product) if (run / product).is_dir() else \
                        (run / product).unlink()
        checks = stage("verify").run(job)
        assert all(c.status != "failed" for c in checks), checks
        # Most kill points fall inside the work (the rest, after it, must be harmless too).
        assert interrupted >= 3, f"only {interrupted} of {KILLS} kills interrupted {name}"
    finally:
        torch.set_num_threads(threads)
