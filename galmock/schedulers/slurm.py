r"""Slurm: sbatch scripts per stage, chained with ``--dependency=afterok``; states from Slurm.

:class:`Slurm` implements :class:`galmock.schedulers.base.Scheduler`. ``submit`` writes
``<run>/job.yaml`` and one script per stage into ``<run>/slurm/<stage>.sbatch``
(:meth:`galmock.layout.RunLayout.sbatch_script`), rendered from galmock's templates
(``galmock/schedulers/templates/{serial,mpi,dask}.sbatch``, package data; ``slurm.templates``
names a directory of your own) and the job's ``slurm`` section, and submits them with
``sbatch --parsable``, each ``--dependency=afterok`` on the one before; the job ids go to
``<run>/slurm/jobs.json``. Every script runs ``galmock <stage> <run>/job.yaml``, so a
resubmission reproduces the job exactly, and carries ``--kill-on-invalid-dep=yes`` (a failed
stage cancels its dependants instead of leaving them pending forever), ``--open-mode=append`` (a
requeued job appends to ``<run>/logs/slurm-<stage>-<jobid>.out``) and, with ``slurm.requeue``,
``--requeue`` and ``--signal=B:USR1@<signal_lead_s>``. Scripts contain no timestamps: rendering
twice gives the same bytes (``--dry-run`` prints what would be submitted).

Resources by the stage's kind (:attr:`galmock.stages.Stage.kind`, which also picks the template):

- ``serial`` (ingest, plan): one task;
- ``mpi`` (train, upsample): ``nodes`` x ``tasks_per_node`` ranks under ``slurm.mpi_launcher``,
  ``gpus_per_node`` as ``--gpus-per-task`` or ``--gres``; on the warning signal the ranks stop
  at a safe point and exit :data:`galmock.preempt.EXIT_PREEMPTED` (75), and the script requeues
  the job, which resumes where it stopped;
- ``dask`` (convert, validate) per ``convert.cluster``: ``local`` one task with
  ``n_workers * threads_per_worker`` CPUs, ``mpi`` dask-mpi on ``n_workers + 2`` ranks,
  ``slurm`` a one-CPU driver whose SLURMCluster submits the workers.

``slurm.stages.<stage>`` overrides any of them per stage. ``status`` reads each job's state from
``squeue``, else ``sacct``, else ``scontrol show job``.

Example:
    >>> job = load_job("jobs/demo.yaml", overrides=["slurm.tasks_per_node=2"],
    ...                output="/scratch/me/demo")
    >>> sbatch_directives(job, "train")[:2]
    ['#SBATCH --job-name=demo.train', '#SBATCH --output=/scratch/me/demo/logs/slurm-train-%j.out']
    >>> [d for d in sbatch_directives(job, "train") if "tasks" in d or "queue" in d]
    ['#SBATCH --ntasks-per-node=2', '#SBATCH --requeue']
    >>> stage_resources(job, "plan").tasks_per_node
    1
    >>> stage_command(job, "train").split()[:2]
    ['srun', '--mpi=pmi2']
    >>> sbatch_argv(Path("/scratch/me/demo/slurm/plan.sbatch"), "101")
    ['sbatch', '--parsable', '--dependency=afterok:101', '/scratch/me/demo/slurm/plan.sbatch']
    >>> Slurm().script_path(RunLayout(job.run_dir), "plan")
    PosixPath('/scratch/me/demo/slurm/plan.sbatch')
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galmock import stages as registry
from galmock.config import JobConfig
from galmock.errors import ConfigError
from galmock.layout import RunLayout
from galmock.schedulers.base import Scheduler, SchedulerError

FINISHED_BAD = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE")  # fmt: skip


class SlurmError(SchedulerError):
    """Slurm is missing or refused a request; the message carries Slurm's own words."""


# -- resources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResources:
    """What one stage's job asks Slurm for (after per-stage overrides)."""

    partition: str | None
    account: str | None
    qos: str | None
    time: str
    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    memory: str | None
    extra_directives: tuple[str, ...]
    launched: bool  # ranks started by slurm.mpi_launcher


def stage_resources(job: JobConfig, stage: str) -> StageResources:
    """The resources of ``stage``'s job: the ``slurm`` section, the stage kind's defaults and
    ``slurm.stages.<stage>``. Raises :class:`ConfigError` naming the key for impossible ones.

    Example:
        >>> stage_resources(load_job("jobs/demo.yaml"), "train").tasks_per_node
        1
    """
    cfg, over = job.slurm, job.slurm.stages.get(stage)
    kind = registry.stage(stage).kind
    key = f"slurm.stages.{stage}"

    def pick(name: str, default: Any) -> Any:
        value = getattr(over, name) if over is not None else None
        return default if value is None else value

    cluster = job.convert.cluster
    if kind == "mpi":
        nodes, tasks, cpus, gpus = (
            cfg.nodes,
            cfg.tasks_per_node,
            cfg.cpus_per_task,
            cfg.gpus_per_node,
        )
        launched = True
    elif kind == "dask" and cluster == "mpi":
        # dask-mpi: rank 0 scheduler, rank 1 client, the rest workers.
        nodes, tasks, cpus, gpus = 1, job.convert.n_workers + 2, job.convert.threads_per_worker, 0
        launched = True
    elif kind == "dask" and cluster == "local":
        nodes, tasks, gpus = 1, 1, 0
        cpus = job.convert.n_workers * job.convert.threads_per_worker
        launched = False
    else:  # serial stages and the driver of a SLURMCluster
        nodes, tasks, cpus, gpus, launched = 1, 1, cfg.cpus_per_task, 0, False
    res = StageResources(
        partition=pick("partition", cfg.partition),
        account=pick("account", cfg.account),
        qos=pick("qos", cfg.qos),
        time=pick("time", cfg.time),
        nodes=pick("nodes", nodes),
        tasks_per_node=pick("tasks_per_node", tasks),
        cpus_per_task=pick("cpus_per_task", cpus),
        gpus_per_node=pick("gpus_per_node", gpus),
        memory=pick("memory", cfg.memory),
        extra_directives=(*cfg.extra_directives, *(pick("extra_directives", []))),
        launched=launched,
    )
    if not launched and res.nodes * res.tasks_per_node != 1:
        raise ConfigError(
            f"{key}.nodes = {res.nodes}, {key}.tasks_per_node = {res.tasks_per_node}: the "
            f"{stage} stage runs as one process (one node, one task)"
        )
    if kind == "dask" and cluster == "mpi" and res.nodes * res.tasks_per_node < 3:
        raise ConfigError(
            f"{key}.tasks_per_node = {res.tasks_per_node} on {res.nodes} node(s): convert.cluster "
            "= 'mpi' needs at least 3 ranks (scheduler, client, worker)"
        )
    if res.gpus_per_node and cfg.gpu_request == "gpus-per-task":
        if res.gpus_per_node % res.tasks_per_node:
            where = key if over is not None and over.gpus_per_node is not None else "slurm"
            raise ConfigError(
                f"{where}.gpus_per_node = {res.gpus_per_node} is not a multiple of "
                f"tasks_per_node = {res.tasks_per_node} (slurm.gpu_request = 'gpus-per-task' "
                "gives each rank the same number of GPUs; use 'gres' otherwise)"
            )
    return res


def sbatch_directives(job: JobConfig, stage: str, res: StageResources | None = None) -> list[str]:
    """The ``#SBATCH`` lines of ``stage``'s script, in a fixed order."""
    res = res or stage_resources(job, stage)
    cfg, layout = job.slurm, RunLayout(job.run_dir)
    out = [
        f"--job-name={job.name}.{stage}",
        f"--output={layout.logs / f'slurm-{stage}-%j.out'}",
        "--open-mode=append",
        f"--chdir={Path.cwd()}",  # relative paths in the job (galaxy.path) mean what they did
        f"--time={res.time}",
        f"--nodes={res.nodes}",
        f"--ntasks-per-node={res.tasks_per_node}",
        f"--cpus-per-task={res.cpus_per_task}",
    ]
    for name, value in (("partition", res.partition), ("account", res.account),
                        ("qos", res.qos), ("mem", res.memory)):  # fmt: skip
        if value is not None:
            out.append(f"--{name}={value}")
    if res.gpus_per_node:
        if cfg.gpu_request == "gres":
            out.append(f"--gres=gpu:{res.gpus_per_node}")
        else:
            out.append(f"--gpus-per-task={res.gpus_per_node // res.tasks_per_node}")
    out.append("--kill-on-invalid-dep=yes")  # a failed stage cancels its dependants
    if cfg.requeue:
        out.append("--requeue")
        if cfg.signal_lead_s:
            out.append(f"--signal=B:USR1@{cfg.signal_lead_s}")
    else:
        out.append("--no-requeue")
    out.extend(d.strip() for d in res.extra_directives)
    return [f"#SBATCH {d}" for d in out]


# -- scripts -----------------------------------------------------------------------------------


def galmock_command(job: JobConfig) -> str:
    """How a job runs galmock: ``slurm.galmock_command``, else this interpreter's module."""
    return job.slurm.galmock_command or f"{shlex.quote(sys.executable)} -m galmock"


def stage_command(job: JobConfig, stage: str, res: StageResources | None = None) -> str:
    """The script's command line: ``[launcher] galmock <stage> <run>/job.yaml``."""
    res = res or stage_resources(job, stage)
    line = f"{galmock_command(job)} {stage} {shlex.quote(str(RunLayout(job.run_dir).job))}"
    return f"{job.slurm.mpi_launcher} {line}" if res.launched else line


def sbatch_argv(script: Path, after: str | None) -> list[str]:
    """The sbatch command line for one stage, depending on job ``after`` when given."""
    dep = [f"--dependency=afterok:{after}"] if after else []
    return ["sbatch", "--parsable", *dep, str(script)]


# -- Slurm's commands --------------------------------------------------------------------------


def _slurm_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(
            f"{name} not found on PATH: galmock submit/status need the Slurm "
            "client commands (run on a login node, or module load slurm)"
        )
    return path


def _sbatch(argv: list[str]) -> str:
    _slurm_tool("sbatch")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise SlurmError(
            f"sbatch rejected {argv[-1]} (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch {argv[-1]}: unexpected reply {done.stdout.strip()!r}")
    return job_id


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Each job's state, e.g. ``RUNNING``, ``PENDING (Dependency)``, ``FAILED (exit 1:0)``:
    from squeue, else sacct (where accounting works), else ``scontrol show job``; jobs Slurm no
    longer knows are absent."""
    states: dict[str, str] = {}
    ids = [i for i in job_ids if i]
    if not ids:
        return states
    out = _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"])
    for line in (out or "").splitlines():
        jid, state, why = [*line.split("|"), "", ""][:3]
        if jid in ids:
            reason = why if why and why != "None" else ""
            states[jid] = f"{state} ({reason})" if reason else state
    rest = [i for i in ids if i not in states]
    if rest:
        out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(rest), "-o", "JobID,State,ExitCode"])
        for line in (out or "").splitlines():
            jid, state, code = [*line.split("|"), "", ""][:3]
            if jid in rest and state:
                states[jid] = _with_exit(state.split()[0], code)
    for jid in (i for i in ids if i not in states):
        out = _run(["scontrol", "-o", "show", "job", jid])
        if out:
            fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
            state = fields.get("JobState", "UNKNOWN")
            reason = fields.get("Reason", "None")
            text = _with_exit(state, fields.get("ExitCode", ""))
            if state in ("PENDING", "CANCELLED") and reason != "None":
                text = f"{state} ({reason})"  # e.g. CANCELLED (DependencyNeverSatisfied)
            states[jid] = text
    return states


def _with_exit(state: str, code: str) -> str:
    failed = state in FINISHED_BAD and state != "CANCELLED"
    return f"{state} (exit {code})" if failed and code else state


# -- the scheduler -----------------------------------------------------------------------------


class Slurm(Scheduler):
    """Slurm through its client commands (``sbatch``, ``scancel``, ``squeue``, ``sacct``,
    ``scontrol``)."""

    name = "slurm"
    title = "Slurm"
    template_suffix = ".sbatch"
    finished_bad = FINISHED_BAD

    def script_path(self, layout: RunLayout, stage: str) -> Path:
        return layout.sbatch_script(stage)

    def jobs_path(self, layout: RunLayout) -> Path:
        return layout.slurm_jobs

    def user_templates(self, job: JobConfig) -> str | None:
        return job.slurm.templates

    def template_values(self, job: JobConfig, stage: str) -> dict[str, str]:
        res = stage_resources(job, stage)
        return {
            **self.common_values(job, stage),
            "directives": "\n".join(sbatch_directives(job, stage, res)),
            "setup": "\n".join(job.slurm.setup),
            "command": stage_command(job, stage, res),
            "cluster": job.convert.cluster,
        }

    def submit_argv(self, script: Path, after: str | None) -> list[str]:
        return sbatch_argv(script, after)

    def submit_one(self, script: Path, after: str | None) -> str:
        return _sbatch(sbatch_argv(script, after))

    def cancel(self, job_ids: Sequence[str]) -> None:
        try:
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass  # best effort: the refused submission is the error to report

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return slurm_states(job_ids)
