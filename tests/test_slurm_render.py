"""sbatch rendering without a Slurm: directives from config, overrides, GPUs, errors, stability."""

import os
import shlex
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from galmock.config import load_job
from galmock.errors import ConfigError, InputError
from galmock.preempt import EXIT_PREEMPTED
from galmock.schedulers.base import fill_template
from galmock.schedulers.slurm import Slurm, sbatch_directives, stage_command, stage_resources
from galmock.stages import STAGE_NAMES as STAGES

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs" / "demo.yaml"
SLURM = Slurm()


def job(tmp_path: Path, *overrides: str):
    return load_job(DEMO, overrides=list(overrides), output=tmp_path / "run")


def directives(job_, stage: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in sbatch_directives(job_, stage)]


def test_directives_come_from_the_slurm_section(tmp_path: Path) -> None:
    j = job(tmp_path, "slurm.partition=gpu", "slurm.account=astro", "slurm.qos=long",
            'slurm.time="2-00:00:00"', "slurm.nodes=2", "slurm.tasks_per_node=4",
            "slurm.gpus_per_node=4", "slurm.cpus_per_task=8", "slurm.memory=200G",
            "slurm.signal_lead_s=300", "slurm.extra_directives=[--constraint=a100]")  # fmt: skip
    d = directives(j, "train")
    run = tmp_path / "run"
    for expected in ("--job-name=demo.train", f"--output={run}/logs/slurm-train-%j.out",
                     "--open-mode=append", "--time=2-00:00:00", "--nodes=2",
                     "--ntasks-per-node=4", "--cpus-per-task=8", "--partition=gpu",
                     "--account=astro", "--qos=long", "--mem=200G", "--gpus-per-task=1",
                     "--kill-on-invalid-dep=yes", "--requeue", "--signal=B:USR1@300",
                     "--constraint=a100"):  # fmt: skip
        assert expected in d, (expected, d)
    assert stage_command(j, "train").startswith("srun --mpi=pmi2 ")
    assert stage_command(j, "train").endswith(f" -m galmock train {run}/job.yaml")
    # Serial stages take one node and one task and no GPU, whatever the MPI stages ask.
    d = directives(j, "plan")
    assert "--nodes=1" in d and "--ntasks-per-node=1" in d
    assert not any(x.startswith(("--gpus", "--gres")) for x in d)
    assert stage_command(j, "plan").split()[1:] == ["-m", "galmock", "plan", f"{run}/job.yaml"]


def test_per_stage_overrides(tmp_path: Path) -> None:
    j = job(tmp_path, 'slurm.time="01:00:00"', "slurm.stages.train.time=2-0",
            "slurm.stages.train.tasks_per_node=2", "slurm.stages.train.gpus_per_node=2",
            "slurm.stages.validate.gpus_per_node=1", "slurm.stages.convert.memory=64G",
            "slurm.stages.upsample.partition=short",
            "slurm.stages.upsample.extra_directives=[--exclusive]",
            "slurm.extra_directives=[--constraint=x]")  # fmt: skip
    train, up = directives(j, "train"), directives(j, "upsample")
    assert "--time=2-0" in train and "--ntasks-per-node=2" in train
    assert "--gpus-per-task=1" in train
    assert "--time=01:00:00" in up and "--partition=short" in up
    assert "--constraint=x" in up and "--exclusive" in up  # added to the section's
    assert "--exclusive" not in train and "--constraint=x" in train
    assert "--gpus-per-task=1" in directives(j, "validate")
    assert "--mem=64G" in directives(j, "convert") and "--mem=64G" not in train


def test_gres_or_gpus_per_task(tmp_path: Path) -> None:
    args = ("slurm.tasks_per_node=4", "slurm.gpus_per_node=8")
    per_task = directives(job(tmp_path, *args), "upsample")
    gres = directives(job(tmp_path, *args, "slurm.gpu_request=gres"), "upsample")
    assert "--gpus-per-task=2" in per_task and not any(d.startswith("--gres") for d in per_task)
    assert "--gres=gpu:8" in gres and not any(d.startswith("--gpus") for d in gres)
    none = directives(job(tmp_path, "slurm.tasks_per_node=4"), "upsample")
    assert not any(d.startswith(("--gpus", "--gres")) for d in none)
    with pytest.raises(ConfigError, match=r"slurm.gpus_per_node = 3 is not a multiple of "
                                          r"tasks_per_node = 2"):  # fmt: skip
        stage_resources(job(tmp_path, "slurm.tasks_per_node=2", "slurm.gpus_per_node=3"), "train")
    # gres has no such constraint.
    j = job(tmp_path, "slurm.tasks_per_node=2", "slurm.gpus_per_node=3", "slurm.gpu_request=gres")
    assert "--gres=gpu:3" in directives(j, "train")


def test_dask_stages_follow_convert_cluster(tmp_path: Path) -> None:
    local = job(tmp_path, "convert.n_workers=3", "convert.threads_per_worker=2")
    d = directives(local, "convert")
    assert "--ntasks-per-node=1" in d and "--cpus-per-task=6" in d
    assert not stage_command(local, "convert").startswith("srun")
    mpi = job(tmp_path, "convert.cluster=mpi", "convert.n_workers=2")
    assert "--ntasks-per-node=4" in directives(mpi, "convert")  # scheduler + client + 2
    assert stage_command(mpi, "convert").startswith("srun --mpi=pmi2 ")
    driver = job(tmp_path, "convert.cluster=slurm", "convert.n_workers=8")
    d = directives(driver, "convert")
    assert "--ntasks-per-node=1" in d and "--cpus-per-task=1" in d
    with pytest.raises(ConfigError, match=r"slurm.stages.convert.tasks_per_node = 2.*at least 3"):
        stage_resources(job(tmp_path, "convert.cluster=mpi", "slurm.stages.convert."
                            "tasks_per_node=2"), "convert")  # fmt: skip
    with pytest.raises(ConfigError, match=r"slurm.stages.plan.nodes = 2.*one process"):
        stage_resources(job(tmp_path, "slurm.stages.plan.nodes=2"), "plan")


def test_launcher_setup_and_command_are_configurable(tmp_path: Path) -> None:
    j = job(tmp_path, 'slurm.mpi_launcher="mpiexec -n $SLURM_NTASKS"',
            'slurm.setup=["module load cuda/12.4", "source /opt/venv/bin/activate"]',
            "slurm.galmock_command=galmock")  # fmt: skip
    script = SLURM.render_script(j, "upsample")
    assert f"mpiexec -n $SLURM_NTASKS galmock upsample {tmp_path}/run/job.yaml &" in script
    assert "module load cuda/12.4\nsource /opt/venv/bin/activate\n" in script
    assert f'if [ "$rc" -eq {EXIT_PREEMPTED} ]; then' in script
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in script
    no_requeue = directives(job(tmp_path, "slurm.requeue=false"), "train")
    assert "--no-requeue" in no_requeue and not any("signal" in d for d in no_requeue)
    no_warning = directives(job(tmp_path, "slurm.signal_lead_s=0"), "train")
    assert "--requeue" in no_warning and not any("signal" in d for d in no_warning)


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("slurm.time=1h", "slurm.time", "not a Slurm time limit '1h'"),
        ("slurm.time=1:00:00", "slurm.time", "3600 is a number: quote the time limit"),
        ("slurm.stages.train.time=soon", "slurm.stages.train.time", "not a Slurm time limit"),
        ("slurm.memory=4GB", "slurm.memory", "not a Slurm memory size '4GB'"),
        ("slurm.stages.convert.memory=lots", "slurm.stages.convert.memory", "memory size"),
        ("slurm.extra_directives=[constraint=a100]", "slurm.extra_directives",
         "is not one sbatch option"),
        ("slurm.partition=gpu a100", "slurm.partition", "should match pattern"),
        ("slurm.gpu_request=gpus", "slurm.gpu_request", "'gpus-per-task' or 'gres'"),
        ("slurm.stages={deploy: {}}", "slurm.stages.deploy", "Input should be"),
        ("slurm.stages.train.walltime=1", "slurm.stages.train.walltime", "unknown key"),
        ("slurm.tasks_per_node=0", "slurm.tasks_per_node", "greater than 0"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key(tmp_path: Path, override: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        job(tmp_path, override)
    text = str(err.value)
    assert "demo.yaml" in text and key in text and message in text, text


def test_rendering_is_stable_and_dry_run_submits_nothing(tmp_path: Path) -> None:
    j = job(tmp_path, "slurm.tasks_per_node=2")
    printed: list[str] = []
    assert SLURM.submit(j, dry_run=True, echo=printed.append) == []
    run = tmp_path / "run"
    first = {s: (run / "slurm" / f"{s}.sbatch").read_bytes() for s in STAGES}
    assert SLURM.submit(j, dry_run=True, echo=printed.append) == []
    again = {s: (run / "slurm" / f"{s}.sbatch").read_bytes() for s in STAGES}
    assert first == again and printed[:6] == printed[6:]
    assert printed[0] == f"sbatch --parsable {run}/slurm/ingest.sbatch"
    assert shlex.split(printed[2]) == [
        "sbatch", "--parsable", "--dependency=afterok:<plan-jobid>", f"{run}/slurm/train.sbatch"
    ]  # fmt: skip
    assert not (run / "slurm" / "jobs.json").exists()
    # job.yaml records the absolute run directory, so the scripts' jobs load the same job.
    recorded = yaml.safe_load((run / "job.yaml").read_text())
    assert recorded["output"] == str(run)
    assert load_job(run / "job.yaml") == j.model_copy(update={"output": str(run)})
    with pytest.raises(ConfigError, match="--from convert comes after --until plan"):
        SLURM.submit(j, "convert", "plan", dry_run=True, echo=printed.append)


def test_templates_unknown_fields_and_missing_directory(tmp_path: Path) -> None:
    assert fill_template("{{ a }}-{{b}}", {"a": "1", "b": "2"}) == "1-2"
    with pytest.raises(ConfigError, match=r"unknown template field.*nope"):
        fill_template("{{nope}}", {"a": "1"}, "mine.sbatch")
    with pytest.raises(ConfigError, match=r"slurm.templates = .*no template"):
        SLURM.render_script(job(tmp_path, f"slurm.templates={tmp_path}/none"), "train")
    own = tmp_path / "tpl"
    own.mkdir()
    (own / "mpi.sbatch").write_text("#!/bin/bash\n{{directives}}\n{{command}}\n")
    script = SLURM.render_script(job(tmp_path, f"slurm.templates={own}"), "train")
    assert script.splitlines()[-1].endswith(f"train {tmp_path}/run/job.yaml")


def test_submit_and_status_without_slurm_are_clear_errors(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}  # no sbatch here
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "galmock"]
    status = subprocess.run([*cmd, "status", str(DEMO), "--output", str(run)], env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert status.returncode == 1
    assert f"{run}/slurm/jobs.json: no submission record" in status.stderr
    with pytest.raises(InputError, match="no submission record"):
        SLURM.read_jobs(job(tmp_path))
    done = subprocess.run([*cmd, "submit", str(DEMO), "--output", str(run)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1
    assert "sbatch not found on PATH" in done.stderr


# Scripts and --dry-run lines of galmock before the scheduler interface (galmock/slurm.py at
# ce01f11), with the machine's paths as @RUN@, @CWD@, @PYTHON@ and @TEMPLATES@. A deliberate
# change to a template or directive regenerates them: GALMOCK_UPDATE_GOLDEN=1 pytest -k golden.
GOLDEN = Path(__file__).parent / "data" / "sbatch"
GOLDEN_VARIANTS = {
    "demo": [],
    "site": ["slurm.partition=gpu", "slurm.account=astro", "slurm.qos=long",
             'slurm.time="2-00:00:00"', "slurm.nodes=2", "slurm.tasks_per_node=4",
             "slurm.gpus_per_node=4", "slurm.cpus_per_task=8", "slurm.memory=200G",
             "slurm.signal_lead_s=300", "slurm.extra_directives=[--constraint=a100]",
             'slurm.setup=["module load cuda/12.4", "source /opt/venv/bin/activate"]',
             'slurm.mpi_launcher="mpiexec -n $SLURM_NTASKS"',
             "slurm.stages.plan.memory=8G", "slurm.stages.upsample.extra_directives=[--exclusive]",
             "convert.cluster=mpi", "convert.n_workers=3"],
    "gres": ["slurm.tasks_per_node=2", "slurm.gpus_per_node=3", "slurm.gpu_request=gres",
             "slurm.requeue=false", "convert.cluster=slurm", "slurm.galmock_command=galmock",
             "slurm.stages.validate.gpus_per_node=1"],
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(GOLDEN_VARIANTS))
def test_scripts_and_dry_run_match_the_golden_files(tmp_path: Path, variant: str) -> None:
    j = job(tmp_path, *GOLDEN_VARIANTS[variant])
    printed: list[str] = []
    SLURM.submit(j, dry_run=True, echo=printed.append)
    run = tmp_path / "run"
    got = (
        "### dry-run\n"
        + "".join(f"{line}\n" for line in printed)
        + "".join(f"### {s}\n" + (run / "slurm" / f"{s}.sbatch").read_text() for s in STAGES)
    )
    places = {"@TEMPLATES@": str(SLURM.template_path(j, "plan").parent),
              "@PYTHON@": shlex.quote(sys.executable), "@RUN@": str(run),
              "@CWD@": str(Path.cwd())}  # fmt: skip
    path = GOLDEN / f"{variant}.txt"
    if os.environ.get("GALMOCK_UPDATE_GOLDEN"):
        text = got
        for token, value in places.items():
            text = text.replace(value, token)
        path.write_text(text)
    want = path.read_text()
    for token, value in places.items():
        want = want.replace(token, value)
    assert got == want


def test_templates_are_package_data(tmp_path: Path) -> None:
    for kind, stage in (("serial", "plan"), ("mpi", "train"), ("dask", "convert")):
        template = SLURM.template_path(job(tmp_path), stage)
        assert template.name == f"{kind}.sbatch"
        assert template.read_text() == (files("galmock.schedulers") / "templates" /
                                        f"{kind}.sbatch").read_text()  # fmt: skip
