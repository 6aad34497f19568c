"""A new scheduler is one class: the two defined here are registered by name and driven through
galmock's generic submit/status code (galmock.schedulers.base) without any change to galmock.

``Recorder`` only records what it is asked to submit; ``Local`` really runs each stage's script
with bash, one after the other, as a scheduler without a queue would.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from galmock import schedulers
from galmock.config import JobConfig, load_job
from galmock.errors import ConfigError
from galmock.layout import RunLayout
from galmock.schedulers import Scheduler, SchedulerError, register, scheduler, status, submit
from galmock.stages import stage

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs" / "demo.yaml"


class Recorder(Scheduler):
    """Records each submission (script, dependency, text); states are what the test sets."""

    name = "recorder"
    title = "the recorder"
    template_suffix = ".sh"
    finished_bad = ("BROKEN",)
    templates: ClassVar[Path] = Path()
    calls: ClassVar[list[tuple[str, str | None, str]]] = []
    cancelled: ClassVar[list[str]] = []
    known: ClassVar[dict[str, str]] = {}
    refuse: ClassVar[str | None] = None

    def script_path(self, layout: RunLayout, stage: str) -> Path:
        return layout.root / "recorder" / f"{stage}.sh"

    def jobs_path(self, layout: RunLayout) -> Path:
        return layout.root / "recorder" / "jobs.json"

    def user_templates(self, job: JobConfig) -> str | None:
        return str(self.templates)

    def template_values(self, job: JobConfig, stage_name: str) -> dict[str, str]:
        kind = stage(stage_name).kind
        return {**self.common_values(job, stage_name), "kind": kind}

    def submit_argv(self, script: Path, after: str | None) -> list[str]:
        return ["record", *(["--after", after] if after else []), str(script)]

    def submit_one(self, script: Path, after: str | None) -> str:
        if script.stem == self.refuse:
            raise SchedulerError(f"the recorder refuses {script.name}")
        self.calls.append((script.name, after, script.read_text()))
        return f"r{len(self.calls)}"

    def cancel(self, job_ids: Sequence[str]) -> None:
        self.cancelled.extend(job_ids)

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return {i: self.known[i] for i in job_ids if i in self.known}


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Recorder]]:
    monkeypatch.setattr(schedulers, "SCHEDULERS", dict(schedulers.SCHEDULERS))
    folder = tmp_path / "templates"
    folder.mkdir()
    for kind in ("serial", "mpi", "dask"):
        (folder / f"{kind}.sh").write_text(f"# {kind}\n" + "{{kind}} {{ stage }} {{job_file}}\n")
    monkeypatch.setattr(Recorder, "templates", folder)
    monkeypatch.setattr(Recorder, "calls", [])
    monkeypatch.setattr(Recorder, "cancelled", [])
    monkeypatch.setattr(Recorder, "known", {})
    monkeypatch.setattr(Recorder, "refuse", None)
    assert register(Recorder) is Recorder
    yield Recorder


def test_the_table_has_slurm_and_refuses_unknown_names() -> None:
    assert sorted(schedulers.SCHEDULERS) == ["slurm"] and scheduler().name == "slurm"
    with pytest.raises(ConfigError, match="unknown scheduler 'recorder'; schedulers are slurm"):
        scheduler("recorder")


def test_a_registered_scheduler_gets_the_generic_submit_and_status(recorder, tmp_path) -> None:
    job = load_job(DEMO, output=tmp_path / "run")
    run = tmp_path / "run"
    printed: list[str] = []
    # --dry-run: scripts for plan .. upsample, the submit commands with placeholders.
    dry = submit(job, "plan", "upsample", dry_run=True, using="recorder", echo=printed.append)
    assert dry == []
    assert printed == [
        f"record {run}/recorder/plan.sh",
        f"record --after '<plan-jobid>' {run}/recorder/train.sh",
        f"record --after '<train-jobid>' {run}/recorder/upsample.sh",
    ]
    assert recorder.calls == [] and not (run / "recorder" / "jobs.json").exists()
    assert (run / "recorder" / "train.sh").read_text() == f"# mpi\nmpi train {run}/job.yaml\n"
    assert load_job(run / "job.yaml").output == str(run)

    printed.clear()
    done = submit(job, "plan", "upsample", job_file="mine.yaml", using="recorder",
                  echo=printed.append)  # fmt: skip
    # In chain order, each after the one before, each from its stage kind's template.
    assert [(c[0], c[1]) for c in recorder.calls] == [
        ("plan.sh", None), ("train.sh", "r1"), ("upsample.sh", "r2")
    ]  # fmt: skip
    assert [c[2].splitlines()[0] for c in recorder.calls] == ["# serial", "# mpi", "# mpi"]
    assert [(s.stage, s.job_id, s.dependency) for s in done] == [
        ("plan", "r1", None), ("train", "r2", "r1"), ("upsample", "r3", "r2")
    ]  # fmt: skip
    assert printed == [
        "plan\tr1", "train\tr2\tafter r1", "upsample\tr3\tafter r2",
        f"job ids in {run}/recorder/jobs.json; follow with `galmock status mine.yaml`",
    ]  # fmt: skip
    record = json.loads((run / "recorder" / "jobs.json").read_text())
    assert record["format"] == "galmock.recorder-jobs/1" and record["run"] == str(run)
    assert record["stages"]["train"] == {
        "stage": "train", "job_id": "r2", "script": f"{run}/recorder/train.sh", "dependency": "r1"
    }  # fmt: skip

    # status: the recorder's states beside each stage's own progress probe.
    recorder.known.update({"r1": "DONE", "r2": "BROKEN (exit 3)"})
    (run / "plan.json").write_text(json.dumps({"regions": [{}, {}, {}]}))
    printed.clear()
    status(job, using="recorder", echo=printed.append)
    layout = RunLayout(run)
    assert printed[1].split() == ["plan", "r1", "DONE", "3", "region(s)"]
    assert printed[2].startswith("train           r2  BROKEN (exit 3)")
    assert printed[2].endswith(" " + stage("train").progress(layout))
    assert "UNKNOWN (no longer known to the recorder)" in printed[3]
    assert printed[3].endswith(" " + stage("upsample").progress(layout))
    assert printed[4:] == [
        f"failed or cancelled: train; see {run}/logs; resubmit with "
        "`galmock submit JOB --from train`"
    ]

    # A refused stage cancels those submitted in the same call; the record keeps the last chain.
    recorder.refuse = "upsample"
    printed.clear()
    with pytest.raises(SchedulerError, match=r"refuses upsample\.sh"):
        submit(job, "train", "upsample", using="recorder", echo=printed.append)
    assert recorder.cancelled == ["r4"] and printed[-1].endswith("already submitted: r4")
    assert json.loads((run / "recorder" / "jobs.json").read_text()) == record
    # A resubmission --from a stage replaces that stage's entries and keeps the others.
    recorder.refuse = None
    submit(job, "train", "upsample", using="recorder", echo=printed.append)
    stages = json.loads((run / "recorder" / "jobs.json").read_text())["stages"]
    assert [(s, r["job_id"]) for s, r in stages.items()] == [
        ("plan", "r1"), ("train", "r5"), ("upsample", "r6")
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="--from upsample comes after --until plan"):
        submit(job, "upsample", "plan", using="recorder")


class Local(Scheduler):
    """Runs each script with bash when it is submitted, if the job it depends on succeeded."""

    name = "local"
    title = "this machine"
    template_suffix = ".sh"
    finished_bad = ("FAILED", "SKIPPED")
    templates: ClassVar[Path] = Path()
    ended: ClassVar[dict[str, str]] = {}

    def script_path(self, layout: RunLayout, stage: str) -> Path:
        return layout.root / "local" / f"{stage}.sh"

    def jobs_path(self, layout: RunLayout) -> Path:
        return layout.root / "local" / "jobs.json"

    def user_templates(self, job: JobConfig) -> str | None:
        return str(self.templates)

    def template_values(self, job: JobConfig, stage_name: str) -> dict[str, str]:
        command = f"{shlex.quote(sys.executable)} -m galmock {stage_name}"
        return {**self.common_values(job, stage_name), "command": command}

    def submit_argv(self, script: Path, after: str | None) -> list[str]:
        return ["bash", str(script)]

    def submit_one(self, script: Path, after: str | None) -> str:
        job_id = str(len(self.ended) + 1)
        if after is not None and self.ended[after] != "COMPLETED":
            self.ended[job_id] = "SKIPPED"
        else:
            done = subprocess.run(["bash", str(script)], cwd=REPO, capture_output=True, text=True)
            self.ended[job_id] = "COMPLETED" if done.returncode == 0 else f"FAILED ({done.stderr})"
        return job_id

    def cancel(self, job_ids: Sequence[str]) -> None:
        pass

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return {i: self.ended[i] for i in job_ids if i in self.ended}


@pytest.mark.slow
def test_a_local_scheduler_runs_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedulers, "SCHEDULERS", dict(schedulers.SCHEDULERS))
    monkeypatch.setattr(Local, "templates", tmp_path / "templates")
    monkeypatch.setattr(Local, "ended", {})
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "serial.sh").write_text("set -e\n{{command}} {{job_file}}\n")
    register(Local)
    job = load_job(DEMO, overrides=["galaxy.demo.n_particles=3000"], output=tmp_path / "run")
    printed: list[str] = []
    submit(job, "ingest", "plan", using="local", echo=printed.append)
    assert printed[:2] == ["ingest\t1", "plan\t2\tafter 1"]
    status(job, using="local", echo=printed.append)
    lines = {line.split()[0]: line for line in printed[3:]}
    assert lines["ingest"].split()[1:] == ["1", "COMPLETED", "3,000", "particles"], printed
    regions = len(json.loads((tmp_path / "run" / "plan.json").read_text())["regions"])
    assert lines["plan"].split()[1:] == ["2", "COMPLETED", str(regions), "region(s)"], printed
