"""Slurm production: sbatch scripts per stage, ``galmock submit`` and ``galmock status``.

``submit`` writes the resolved job to ``<run>/job.yaml`` (run directory absolute), renders one
script per stage into ``<run>/slurm/<stage>.sbatch`` from the templates in ``slurm/templates/``
(``slurm.templates`` names your own) and the job's ``slurm`` section, and submits the stages
``--from`` .. ``--until`` with ``sbatch --parsable``, each ``--dependency=afterok`` on the one
before; the job ids go to ``<run>/slurm/jobs.json``. Every script runs
``galmock <stage> <run>/job.yaml``, so a resubmission reproduces the job exactly, and carries
``--kill-on-invalid-dep=yes`` (a failed stage cancels its dependants instead of leaving them
pending forever), ``--open-mode=append`` (a requeued job appends to
``<run>/logs/slurm-<stage>-<jobid>.out``) and, with ``slurm.requeue``, ``--requeue`` and
``--signal=B:USR1@<signal_lead_s>``. Scripts contain no timestamps: rendering twice gives the
same bytes (``--dry-run`` prints what would be submitted).

Stage kinds (template):

- ``serial`` (ingest, plan): one task;
- ``mpi`` (train, upsample): ``nodes`` x ``tasks_per_node`` ranks under ``slurm.mpi_launcher``,
  ``gpus_per_node`` as ``--gpus-per-task`` or ``--gres``; on the warning signal the ranks stop
  at a safe point and exit :data:`galmock.preempt.EXIT_PREEMPTED` (75), and the script requeues
  the job, which resumes where it stopped;
- ``dask`` (convert, validate) per ``convert.cluster``: ``local`` one task with
  ``n_workers * threads_per_worker`` CPUs, ``mpi`` dask-mpi on ``n_workers + 2`` ranks,
  ``slurm`` a one-CPU driver whose SLURMCluster submits the workers.

``status`` prints per stage the job id, the Slurm state (``squeue``, else ``sacct``, else
``scontrol show job``) and the progress read from the run directory.

Example:
    >>> print(render_script(load_job("jobs/demo.yaml"), "train"))  # doctest: +SKIP
    >>> submit(job, "ingest", "convert")                            # doctest: +SKIP
    [Submitted(stage='ingest', job_id='101', ...), ...]
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from galmock.atomic import atomic_write_text
from galmock.config import JobConfig
from galmock.errors import ConfigError, GalmockError, InputError
from galmock.preempt import EXIT_PREEMPTED
from galmock.run import STAGES

STAGE_KIND = {
    "ingest": "serial",
    "plan": "serial",
    "train": "mpi",
    "upsample": "mpi",
    "convert": "dask",
    "validate": "dask",
}
TEMPLATES = Path(__file__).resolve().parents[1] / "slurm" / "templates"
JOBS_FORMAT = "galmock.slurm-jobs/1"
FINISHED_BAD = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE")  # fmt: skip


class SlurmError(GalmockError):
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
        >>> stage_resources(job, "train").tasks_per_node  # doctest: +SKIP
        4
    """
    cfg, over = job.slurm, job.slurm.stages.get(stage)
    kind = STAGE_KIND[stage]
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
    cfg, run = job.slurm, job.run_dir
    out = [
        f"--job-name={job.name}.{stage}",
        f"--output={run / 'logs' / f'slurm-{stage}-%j.out'}",
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
    line = f"{galmock_command(job)} {stage} {shlex.quote(str(job.run_dir / 'job.yaml'))}"
    return f"{job.slurm.mpi_launcher} {line}" if res.launched else line


def template_path(job: JobConfig, stage: str) -> Path:
    """The template for ``stage``'s kind (``slurm.templates`` or galmock's own)."""
    folder = Path(job.slurm.templates).expanduser() if job.slurm.templates else TEMPLATES
    path = folder / f"{STAGE_KIND[stage]}.sbatch"
    if not path.is_file():
        raise ConfigError(
            f"slurm.templates = {job.slurm.templates!r}: no template {path} for the {stage} stage"
        )
    return path


_FIELD = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def fill_template(text: str, values: dict[str, str], source: str = "<template>") -> str:
    """Replace every ``{{name}}`` in ``text``; an unknown name is a :class:`ConfigError`.

    Example:
        >>> fill_template("run {{stage}}", {"stage": "train"})
        'run train'
    """
    unknown = sorted({m.group(1) for m in _FIELD.finditer(text)} - set(values))
    if unknown:
        raise ConfigError(
            f"{source}: unknown template field(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(values))}"
        )
    return _FIELD.sub(lambda m: values[m.group(1)], text)


def render_script(job: JobConfig, stage: str) -> str:
    """``stage``'s sbatch script (deterministic: the same job gives the same bytes)."""
    res = stage_resources(job, stage)
    template = template_path(job, stage)
    values = {
        "directives": "\n".join(sbatch_directives(job, stage, res)),
        "setup": "\n".join(job.slurm.setup),
        "stage": stage,
        "job_file": shlex.quote(str(job.run_dir / "job.yaml")),
        "run_dir": shlex.quote(str(job.run_dir)),
        "command": stage_command(job, stage, res),
        "exit_preempted": str(EXIT_PREEMPTED),
        "cluster": job.convert.cluster,
        "template": str(template),
    }
    return fill_template(template.read_text(), values, str(template))


def resolved_job(job: JobConfig) -> JobConfig:
    """The job with an absolute run directory, as ``<run>/job.yaml`` records it."""
    return job.model_copy(update={"output": str(job.run_dir)})


def write_scripts(job: JobConfig, stages: Sequence[str]) -> dict[str, Path]:
    """Write ``<run>/job.yaml`` and ``<run>/slurm/<stage>.sbatch`` for ``stages``."""
    job = resolved_job(job)
    scripts = {stage: render_script(job, stage) for stage in stages}  # all errors before writes
    run = job.run_dir
    (run / "logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create --output's folder
    atomic_write_text(run / "job.yaml", job.to_yaml())
    paths = {}
    for stage, text in scripts.items():
        paths[stage] = run / "slurm" / f"{stage}.sbatch"
        atomic_write_text(paths[stage], text)
        paths[stage].chmod(0o755)
    return paths


# -- submit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    """One submitted stage job."""

    stage: str
    job_id: str
    script: str
    dependency: str | None


def chain(first: str, last: str) -> list[str]:
    """The stages ``first`` .. ``last``; a :class:`ConfigError` when they are out of order."""
    i, j = STAGES.index(first), STAGES.index(last)
    if i > j:
        raise ConfigError(f"--from {first} comes after --until {last}")
    return list(STAGES[i : j + 1])


def sbatch_argv(script: Path, after: str | None) -> list[str]:
    """The sbatch command line for one stage, depending on job ``after`` when given."""
    dep = [f"--dependency=afterok:{after}"] if after else []
    return ["sbatch", "--parsable", *dep, str(script)]


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


def submit(
    job: JobConfig,
    first: str = STAGES[0],
    last: str = STAGES[-1],
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> list[Submitted]:
    """Render and submit ``first`` .. ``last`` as a dependency chain; record the job ids.

    With ``dry_run`` only the scripts are written and the sbatch lines printed (with
    ``<stage-jobid>`` placeholders). If sbatch refuses a stage, the stages already submitted in
    this call are cancelled (nothing half-chained is left) and :class:`SlurmError` carries
    sbatch's message.
    """
    stages = chain(first, last)
    scripts = write_scripts(job, stages)
    if dry_run:
        after = None
        for stage in stages:
            echo(shlex.join(sbatch_argv(scripts[stage], after)))
            after = f"<{stage}-jobid>"
        return []
    submitted: list[Submitted] = []
    after = None
    try:
        for stage in stages:
            job_id = _sbatch(sbatch_argv(scripts[stage], after))
            submitted.append(Submitted(stage, job_id, str(scripts[stage]), after))
            echo(f"{stage}\t{job_id}" + (f"\tafter {after}" if after else ""))
            after = job_id
    except SlurmError:
        if submitted:
            ids = [s.job_id for s in submitted]
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)
            echo(f"cancelled the stage job(s) already submitted: {' '.join(ids)}")
        raise
    _record(job, submitted)
    return submitted


def jobs_file(job: JobConfig) -> Path:
    return job.run_dir / "slurm" / "jobs.json"


def _record(job: JobConfig, submitted: list[Submitted]) -> None:
    """Merge ``submitted`` into ``jobs.json`` (a resubmission replaces its stages' entries)."""
    records = read_jobs(job, missing_ok=True)
    for s in submitted:
        records[s.stage] = asdict(s)
    ordered = {stage: records[stage] for stage in STAGES if stage in records}
    payload = {"format": JOBS_FORMAT, "run": str(job.run_dir), "stages": ordered}
    atomic_write_text(jobs_file(job), json.dumps(payload, indent=1) + "\n")


def read_jobs(job: JobConfig, missing_ok: bool = False) -> dict[str, dict[str, Any]]:
    """The submitted stages recorded in ``<run>/slurm/jobs.json``, by stage."""
    path = jobs_file(job)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise InputError(
            f"{path}: no submission record for job {job.name!r}; submit it with "
            "`galmock submit JOB` first"
        ) from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable submission record: {err}") from None
    if not isinstance(data, dict) or data.get("format") != JOBS_FORMAT:
        raise InputError(f"{path}: not a galmock submission record (format {JOBS_FORMAT})")
    return dict(data["stages"])


def submit_command(job: JobConfig, args: Any) -> None:
    """``galmock submit JOB [--from S] [--until S] [--dry-run]``."""
    submit(job, args.first, args.last, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"job ids in {jobs_file(job)}; follow with `galmock status {args.job}`")


# -- status ------------------------------------------------------------------------------------


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


def stage_progress(job: JobConfig, stage: str) -> str:
    """What the run directory says about ``stage`` (no Slurm involved)."""
    run = job.run_dir
    try:
        return _PROGRESS[stage](run)
    except Exception as err:  # a half-written file must not break status
        return f"(unreadable: {err})"


def _zarr_attrs(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return dict(meta.get("attributes", {}))


def _regions(run: Path) -> int | None:
    try:
        return len(json.loads((run / "plan.json").read_text())["regions"])
    except (OSError, ValueError, KeyError):
        return None


def _ingest_progress(run: Path) -> str:
    attrs = _zarr_attrs(run / "particles.zarr")
    return f"{attrs.get('n_particles', 0):,} particles" if attrs else "no particles.zarr yet"


def _plan_progress(run: Path) -> str:
    n = _regions(run)
    return "no plan.json yet" if n is None else f"{n} region(s)"


def _train_progress(run: Path) -> str:
    n = _regions(run)
    done = len(list((run / "models").glob("region-[0-9][0-9][0-9][0-9]/manifest.json")))
    working = len(list((run / "models").glob("region-*.work")))
    total = "?" if n is None else n
    return f"{done} of {total} region model(s) trained" + (
        f", {working} checkpointed" if working else ""
    )


def _upsample_progress(run: Path) -> str:
    attrs = _zarr_attrs(run / "stars.zarr")
    staging = run / ".stars.zarr.partial"
    if (staging / "layout.json").is_file():
        layout = json.loads((staging / "layout.json").read_text())
        counts = layout["counts"]
        records = [json.loads(p.read_text()) for p in (staging / "done").glob("block-*.json")]
        rows = sum(int(r["rows"]) for r in records)
        return (
            f"{len(records)} of {len(counts)} region(s) upsampled, {rows:,} of "
            f"{sum(counts):,} stars written"
        )
    if attrs and attrs.get("complete"):
        return f"{attrs.get('n_rows', 0):,} stars in stars.zarr (complete)"
    return "no stars.zarr yet"


def _convert_progress(run: Path) -> str:
    attrs = _zarr_attrs(run / "catalog.zarr")
    if attrs and attrs.get("complete"):
        extra = ", catalog.hats" if (run / "catalog.hats").is_dir() else ""
        return f"{attrs.get('n_rows', 0):,} stars in catalog.zarr{extra}"
    if (run / ".convert.partial").exists():
        return "converting (staged in .convert.partial)"
    return "no catalog.zarr yet"


def _validate_progress(run: Path) -> str:
    report = run / "report"
    return "report written" if (report / "report.json").is_file() else "no report yet"


_PROGRESS: dict[str, Callable[[Path], str]] = {
    "ingest": _ingest_progress,
    "plan": _plan_progress,
    "train": _train_progress,
    "upsample": _upsample_progress,
    "convert": _convert_progress,
    "validate": _validate_progress,
}


def status_lines(job: JobConfig) -> list[str]:
    """One line per submitted stage: stage, job id, Slurm state, progress."""
    records = read_jobs(job)
    states = slurm_states([r["job_id"] for r in records.values()])
    lines = [f"{'stage':<9} {'job id':>8}  {'state':<40} progress"]
    for stage, rec in records.items():
        state = states.get(rec["job_id"], "UNKNOWN (no longer known to Slurm)")
        lines.append(f"{stage:<9} {rec['job_id']:>8}  {state:<40} {stage_progress(job, stage)}")
    bad = [s for s, r in records.items() if states.get(r["job_id"], "").startswith(FINISHED_BAD)]
    if bad:
        lines.append(
            f"failed or cancelled: {', '.join(bad)}; see {job.run_dir / 'logs'}; "
            f"resubmit with `galmock submit JOB --from {bad[0]}`"
        )
    return lines


def status_command(job: JobConfig, args: Any) -> None:
    """``galmock status JOB``."""
    for line in status_lines(job):
        print(line)
