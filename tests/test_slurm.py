"""`galmock submit` / `galmock status` against a real single-node Slurm (tests/conftest.py).

The chain runs CI-sized (6,000 particles, 8 regions, tiny CNFs, MPI stages on 2 tasks) and must
give the same bytes as `galmock run` on this machine; a failing stage must cancel its
dependants; an upsample interrupted twice (the warning signal, then `scontrol requeue`) must
resume and finish with the catalog of an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galmock.store import columns_sha256, open_catalog

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs" / "demo.yaml"
LAST = "convert"  # validate trains classifiers: too slow for a CI-sized chain
SETS = [
    "galaxy.demo.n_particles=6000",
    "plan.target_particles=1000",  # 8 regions
    "flows.hidden_features=8",
    "flows.hidden_layers=1",
    "flows.cnf.rk4_steps=2",
    "flows.training.ensemble_size=1",
    "flows.training.max_epochs=2",
    "flows.training.patience_epochs=1",
    "flows.training.batches_per_epoch=2",
    "flows.checkpoint_every_epochs=1",
    "flows.threads=1",
    "upsample.sampling_fraction=1e-6",  # ~96,000 stars
    "upsample.chunk_rows=20000",
    "upsample.batch_rows=3000",
    "convert.n_workers=1",
    "convert.hats_highest_order=5",
    "convert.hats_partition_rows=100000",
    "slurm.tasks_per_node=2",
    'slurm.time="10:00"',
]
# The requeue test: ~1.9 million stars in batches of 1,000, so upsampling lasts long enough to
# be interrupted twice between regions.
LONG_UPSAMPLE = ["upsample.sampling_fraction=2e-5", "upsample.batch_rows=1000"]
TIMEOUT_S = 240


def galmock(*args: str, sets: list[str] = SETS) -> subprocess.CompletedProcess:
    flags = [f for s in sets for f in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "galmock", *args, *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def job_fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def wait_for(what: str, condition, timeout: float = TIMEOUT_S, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def finished(job_ids: list[str]) -> bool:
    states = [job_fields(j)["JobState"] for j in job_ids]
    return all(s not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED")
               for s in states)  # fmt: skip


def submitted_ids(stdout: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^(\w+)\t(\d+)", stdout, re.M)}


def catalog_sha(path: Path) -> str:
    cat = open_catalog(path)
    return columns_sha256({c: cat.array(c)[:] for c in cat.columns})


@pytest.fixture(scope="module")
def chain(slurm, tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """The chain submitted to Slurm, and the same job run locally while the chain runs."""
    run = tmp_path_factory.mktemp("chain") / "run"
    done = galmock("submit", str(DEMO), "--output", str(run), "--until", LAST)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = submitted_ids(done.stdout)
    local = tmp_path_factory.mktemp("local") / "run"
    here = galmock("run", str(DEMO), "--output", str(local), "--until", LAST)
    assert here.returncode == 0, here.stderr[-3000:]
    wait_for("the chain to finish", lambda: finished(list(ids.values())))
    return run, ids, local


def test_dry_run_is_stable_and_sbatch_accepts_every_script(slurm, tmp_path) -> None:
    run = tmp_path / "run"
    first = galmock("submit", str(DEMO), "--output", str(run), "--dry-run")
    scripts = {p.name: p.read_bytes() for p in (run / "slurm").glob("*.sbatch")}
    second = galmock("submit", str(DEMO), "--output", str(run), "--dry-run")
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout == second.stdout and len(first.stdout.splitlines()) == 6
    assert scripts == {p.name: p.read_bytes() for p in (run / "slurm").glob("*.sbatch")}
    assert len(scripts) == 6 and not (run / "slurm" / "jobs.json").exists()
    for name in sorted(scripts):
        test = subprocess.run(["sbatch", "--test-only", str(run / "slurm" / name)],
                              capture_output=True, text=True)  # fmt: skip
        assert test.returncode == 0 and "to start at" in test.stderr, (name, test.stderr)
    queued = subprocess.run(["squeue", "-h", "-n", "demo.ingest"], capture_output=True, text=True)
    assert queued.stdout.strip() == ""  # --test-only submits nothing


def test_rejected_stage_is_a_clear_error_and_cancels_the_submitted_ones(slurm, tmp_path) -> None:
    run = tmp_path / "run"
    done = galmock("submit", str(DEMO), "--output", str(run), "--until", "convert",
                   sets=[*SETS, "slurm.stages.convert.partition=nosuch"])  # fmt: skip
    assert done.returncode == 1
    assert f"sbatch rejected {run}/slurm/convert.sbatch" in done.stderr
    assert "invalid partition" in done.stderr.lower()  # sbatch's own words
    ids = submitted_ids(done.stdout)
    assert list(ids) == ["ingest", "plan", "train", "upsample"]
    assert f"cancelled the stage job(s) already submitted: {' '.join(ids.values())}" in done.stdout
    wait_for("the cancelled jobs to end", lambda: finished(list(ids.values())), timeout=60)
    assert {job_fields(j)["JobState"] for j in ids.values()} == {"CANCELLED"}
    assert not (run / "slurm" / "jobs.json").exists()


def test_chain_runs_through_sbatch_and_equals_the_local_run(chain) -> None:
    run, ids, local_run = chain
    stages = ["ingest", "plan", "train", "upsample", "convert"]
    assert list(ids) == stages
    for stage, job_id in ids.items():
        assert job_fields(job_id)["JobState"] == "COMPLETED", (stage, job_id)
    record = json.loads((run / "slurm" / "jobs.json").read_text())["stages"]
    assert [record[s]["job_id"] for s in stages] == list(ids.values())
    assert [record[s]["dependency"] for s in stages] == [None, *list(ids.values())[:-1]]
    # The MPI stages really ran on two ranks.
    for stage in ("train", "upsample"):
        assert "rank 1/2" in (run / "logs" / f"{stage}.log").read_text()
        assert "--ntasks-per-node=2" in (run / "slurm" / f"{stage}.sbatch").read_text()
    for name in ("stars.zarr", "catalog.zarr"):
        assert catalog_sha(run / name) == catalog_sha(local_run / name), name
    status = galmock("status", str(DEMO), "--output", str(run))
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert all("COMPLETED" in lines[s] and ids[s] in lines[s] for s in stages), status.stdout
    assert "8 of 8 region model(s) trained" in lines["train"]
    stars = len(open_catalog(run / "stars.zarr"))
    assert f"{stars:,} stars in stars.zarr (complete)" in lines["upsample"]
    assert f"{stars:,} stars in catalog.zarr" in lines["convert"]


def test_failed_stage_cancels_its_dependants_and_status_says_so(chain, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for item in ("particles.zarr", "plan.json", "training.zarr"):
        src = chain[0] / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run / item)
    bad = [*SETS, f"flows.load={tmp_path}/no-such-models"]
    done = galmock("submit", str(DEMO), "--output", str(run), "--from", "train", "--until",
                   LAST, sets=bad)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = submitted_ids(done.stdout)
    wait_for("the failed chain to end", lambda: finished(list(ids.values())), timeout=120)
    assert job_fields(ids["train"])["JobState"] == "FAILED"
    for stage in ("upsample", "convert"):
        fields = job_fields(ids[stage])
        assert fields["JobState"] == "CANCELLED", (stage, fields["JobState"])
        assert fields["Reason"] == "DependencyNeverSatisfied"
    left = subprocess.run(["squeue", "-h", "-j", ",".join(ids.values())], capture_output=True,
                          text=True).stdout  # fmt: skip
    assert left.strip() == ""  # nothing pending forever
    status = galmock("status", str(DEMO), "--output", str(run), sets=bad)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"^train +{ids['train']} +FAILED", status.stdout, re.M), status.stdout
    assert re.search(r"^upsample .*CANCELLED \(DependencyNeverSatisfied\)", status.stdout, re.M)
    assert "failed or cancelled: train, upsample, convert" in status.stdout
    assert "no-such-models" in next((run / "logs").glob("slurm-train-*.out")).read_text()


def test_preempted_upsample_requeues_resumes_and_matches(chain, tmp_path) -> None:
    sets = [*SETS, *LONG_UPSAMPLE]
    runs = {}
    for name in ("reference", "slurm"):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        for item in ("particles.zarr", "plan.json", "training.zarr", "models"):
            src = chain[0] / item
            (shutil.copytree if src.is_dir() else shutil.copy)(src, runs[name] / item)
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    flags = [f for s in sets for f in ("--set", s)]
    # The uninterrupted reference runs beside the Slurm job (it only slows it down).
    ref_log = tmp_path / "reference.log"
    with ref_log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the ranks
        ref = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "galmock", "upsample",
                                str(DEMO), "--output", str(runs["reference"]), *flags], cwd=REPO,
                               stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip

    run = runs["slurm"]
    done = galmock("submit", str(DEMO), "--output", str(run), "--from", "upsample", "--until",
                   "upsample", sets=sets)  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = submitted_ids(done.stdout)["upsample"]
    # A dependant of the requeued job must wait for it and run only after it succeeds.
    after = subprocess.run(["sbatch", "--parsable", f"--dependency=afterok:{job}",
                            "--kill-on-invalid-dep=yes", "-o", "/dev/null", "--wrap", "true"],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    staged = run / ".stars.zarr.partial" / "done"

    def regions_done() -> int:
        return len(list(staged.glob("block-*.json"))) if staged.is_dir() else 0

    def resume_now(restarts: int) -> None:
        wait_for(
            f"restart {restarts} to be queued",
            lambda: (
                job_fields(job)["JobState"] == "PENDING"
                and job_fields(job)["Restarts"] == str(restarts)
            ),
        )
        assert job_fields(after)["JobState"] == "PENDING"
        assert job_fields(after)["Reason"] == "Dependency"
        # Skip the requeue hold (BeginTime, ~20 s here) so the test stays short, but not
        # within the second of the requeue: slurmd compares a new launch credential's creation
        # time (whole seconds) with the time it revoked the job's old one, and a launch in the
        # same second is killed with "Job credential revoked" (seen in slurmctld.log here).
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)

    # 1: the warning signal Slurm sends before the time limit, to the batch shell.
    wait_for("2 regions upsampled", lambda: regions_done() >= 2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    resume_now(1)
    # 2: a requeue by the administrator (SIGTERM to the ranks) after more progress.
    first = regions_done()
    assert 2 <= first < 8
    wait_for("the resumed run", lambda: job_fields(job)["JobState"] == "RUNNING")
    status = galmock("status", str(DEMO), "--output", str(run), sets=sets)
    assert re.search(rf"^upsample +{job} +RUNNING +\d of 8 region\(s\) upsampled", status.stdout,
                     re.M), status.stdout  # fmt: skip
    wait_for("the resumed run to progress", lambda: regions_done() >= first + 2)
    subprocess.run(["scontrol", "requeue", job], check=True)
    resume_now(2)
    wait_for("the upsample job to finish", lambda: finished([job, after]))

    assert job_fields(job)["JobState"] == "COMPLETED"
    assert job_fields(after)["JobState"] == "COMPLETED"
    log = (run / "logs" / "upsample.log").read_text()
    assert "preempted (SIGUSR1)" in log and "preempted (SIGTERM)" in log
    resumed = [
        int(k) for k in re.findall(r"resuming: (\d+) of 8 region\(s\) already complete", log)
    ]
    assert len(resumed) == 2 and 2 <= resumed[0] < resumed[1] < 8, resumed
    out = (run / "logs" / f"slurm-upsample-{job}.out").read_text()
    assert all(f"restart {n}" in out for n in range(3))
    assert "stopped at a safe point; requeueing job" in out
    assert ref.wait(timeout=600) == 0, ref_log.read_text()[-3000:]
    assert catalog_sha(run / "stars.zarr") == catalog_sha(runs["reference"] / "stars.zarr")
