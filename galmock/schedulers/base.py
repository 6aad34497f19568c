r"""What a batch scheduler does for galmock, and the parts every scheduler shares.

A scheduler runs the stage chain (:data:`galmock.stages.STAGES`) as batch jobs: one script per
stage, each job depending on the one before, so ``galmock submit`` hands the whole chain over
and ``galmock status`` reads it back. :class:`Scheduler` is the interface; a scheduler is one
subclass (:class:`galmock.schedulers.slurm.Slurm`) that says how to

- name its files: :meth:`~Scheduler.script_path` and :meth:`~Scheduler.jobs_path` in the run
  directory (:class:`galmock.layout.RunLayout`);
- render a stage's script: :meth:`~Scheduler.template_values` (its batch directives, the
  command line), filled into the template of the stage's ``kind`` (``serial``, ``mpi``,
  ``dask``; :attr:`galmock.stages.Stage.kind`) -- or :meth:`~Scheduler.render_script` whole;
- submit one script after another job (:meth:`~Scheduler.submit_argv`,
  :meth:`~Scheduler.submit_one`), cancel jobs (:meth:`~Scheduler.cancel`) and ask for their
  states (:meth:`~Scheduler.states`, with :attr:`~Scheduler.finished_bad`).

The rest lives here, the same for every scheduler: choosing the chain ``--from`` .. ``--until``,
writing ``<run>/job.yaml`` (run directory absolute, so every job loads exactly the submitted
job) and the scripts (all rendered before anything is written), submitting them in order with
each job depending on the previous one (``--dry-run`` prints the submit commands with
``<stage-jobid>`` placeholders instead), cancelling the already-submitted jobs when a submission
is refused (nothing half-chained is left), the jobs file (format
``galmock.<scheduler>-jobs/1``: ``{"format", "run", "stages": {stage: Submitted}}``, merged per
stage so a resubmission ``--from`` a stage replaces its entries), and the status table: per
stage its job id, the scheduler's state and the stage's ``progress(layout)``.

Templates are package data (``galmock/schedulers/templates/<kind><template_suffix>``, read with
:mod:`importlib.resources`, so a wheel install has them); :meth:`~Scheduler.user_templates` may
name a directory of the user's own. ``{{ field }}`` is replaced by the field's value; a field
the scheduler does not know is a :class:`~galmock.errors.ConfigError` that lists the known ones.

Example:
    >>> fill_template("galmock {{ stage }} {{job_file}}", {"stage": "plan", "job_file": "j.yaml"})
    'galmock plan j.yaml'
    >>> fill_template("{{nodes}}", {"stage": "plan"}, "mine.sbatch")
    Traceback (most recent call last):
    ...
    galmock.errors.ConfigError: mine.sbatch: unknown template field(s) nodes; known: stage
    >>> jobs_format("slurm")
    'galmock.slurm-jobs/1'
"""

from __future__ import annotations

import json
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, ClassVar

from galmock import stages as registry
from galmock.atomic import atomic_write_text, current_umask
from galmock.config import JobConfig
from galmock.errors import ConfigError, GalmockError, InputError
from galmock.layout import RunLayout
from galmock.preempt import EXIT_PREEMPTED

TEMPLATES: Traversable = files("galmock.schedulers") / "templates"
_FIELD = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class SchedulerError(GalmockError):
    """A scheduler is missing or refused a request; the message carries its own words."""


@dataclass(frozen=True)
class Submitted:
    """One submitted stage job, as the jobs file records it."""

    stage: str
    job_id: str
    script: str
    dependency: str | None


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


def jobs_format(name: str) -> str:
    """The ``format`` of scheduler ``name``'s jobs file."""
    return f"galmock.{name}-jobs/1"


def resolved_job(job: JobConfig) -> JobConfig:
    """The job with an absolute run directory, as ``<run>/job.yaml`` records it."""
    return job.model_copy(update={"output": str(job.run_dir)})


def chain_names(first: str, last: str) -> list[str]:
    """The chain's stage names ``first`` .. ``last``; a :class:`ConfigError` when they are out
    of order.

    Example:
        >>> chain_names("train", "convert")
        ['train', 'upsample', 'convert']
    """
    try:
        return [s.name for s in registry.chain(first, last)]
    except ValueError as err:
        raise ConfigError(str(err)) from None


class Scheduler(ABC):
    """A batch scheduler: subclasses name their files, render scripts, submit and query jobs.

    Class attributes:
        name: the scheduler's name in :data:`galmock.schedulers.SCHEDULERS`; also the config
            section named in template errors (``<name>.templates``) and the jobs file's format.
        title: how messages name it (``UNKNOWN (no longer known to <title>)``).
        template_suffix: the package templates are ``templates/<kind><template_suffix>``.
        finished_bad: states (prefixes) of jobs that ended without success.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    template_suffix: ClassVar[str] = ""
    finished_bad: ClassVar[tuple[str, ...]] = ()

    # -- what a scheduler implements ------------------------------------------------------------

    @abstractmethod
    def script_path(self, layout: RunLayout, stage: str) -> Path:
        """Where ``stage``'s rendered script goes."""

    @abstractmethod
    def jobs_path(self, layout: RunLayout) -> Path:
        """The jobs file: the submitted stages' job ids."""

    @abstractmethod
    def template_values(self, job: JobConfig, stage: str) -> dict[str, str]:
        """The template fields of ``stage``'s script (start from :meth:`common_values`); raises
        :class:`ConfigError` for resources the scheduler cannot give."""

    @abstractmethod
    def submit_argv(self, script: Path, after: str | None) -> list[str]:
        """The command line that submits ``script``, after job ``after`` succeeds when given."""

    @abstractmethod
    def submit_one(self, script: Path, after: str | None) -> str:
        """Submit ``script`` (after job ``after`` when given); its job id. Raises
        :class:`SchedulerError` with the scheduler's words when it refuses."""

    @abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel ``job_ids`` (best effort: errors are ignored)."""

    @abstractmethod
    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Each job's state as one line, e.g. ``RUNNING``; jobs the scheduler no longer knows
        are absent."""

    def user_templates(self, job: JobConfig) -> str | None:
        """The user's own template directory (``None``: galmock's)."""
        return None

    # -- scripts --------------------------------------------------------------------------------

    def common_values(self, job: JobConfig, stage: str) -> dict[str, str]:
        """The template fields every scheduler gives: ``stage``, ``job_file``, ``run_dir`` and
        ``exit_preempted`` (:data:`galmock.preempt.EXIT_PREEMPTED`); ``template`` is added by
        :meth:`render_script`."""
        layout = RunLayout(job.run_dir)
        return {
            "stage": stage,
            "job_file": shlex.quote(str(layout.job)),
            "run_dir": shlex.quote(str(layout.root)),
            "exit_preempted": str(EXIT_PREEMPTED),
        }

    def template_path(self, job: JobConfig, stage: str) -> Path | Traversable:
        """The template of ``stage``'s kind: in :meth:`user_templates`, else galmock's own."""
        name = f"{registry.stage(stage).kind}{self.template_suffix}"
        folder = self.user_templates(job)
        path = Path(folder).expanduser() / name if folder else TEMPLATES / name
        if not path.is_file():
            raise ConfigError(
                f"{self.name}.templates = {folder!r}: no template {path} for the {stage} stage"
            )
        return path

    def render_script(self, job: JobConfig, stage: str) -> str:
        """``stage``'s script (deterministic: the same job gives the same bytes)."""
        values = self.template_values(job, stage)
        template = self.template_path(job, stage)
        values["template"] = str(template)
        return fill_template(template.read_text(), values, str(template))

    def write_scripts(self, job: JobConfig, stages: Sequence[str]) -> dict[str, Path]:
        """Write ``<run>/job.yaml`` and the scripts of ``stages``; their paths by stage."""
        job = resolved_job(job)
        scripts = {stage: self.render_script(job, stage) for stage in stages}  # errors first
        layout = RunLayout(job.run_dir)
        layout.logs.mkdir(parents=True, exist_ok=True)  # schedulers rarely create log folders
        atomic_write_text(layout.job, job.to_yaml())
        paths = {}
        for stage, text in scripts.items():
            paths[stage] = self.script_path(layout, stage)
            atomic_write_text(paths[stage], text)
            paths[stage].chmod(0o777 & ~current_umask())  # executable, readable as umask allows
        return paths

    # -- submit ---------------------------------------------------------------------------------

    def submit(
        self,
        job: JobConfig,
        first: str = registry.STAGE_NAMES[0],
        last: str = registry.STAGE_NAMES[-1],
        dry_run: bool = False,
        echo: Callable[[str], None] = print,
    ) -> list[Submitted]:
        """Render and submit ``first`` .. ``last`` as a dependency chain; record the job ids.

        Echoes ``<stage>\\t<job id>[\\tafter <job id>]`` per stage. With ``dry_run`` only the
        scripts are written and the submit commands echoed (with ``<stage-jobid>``
        placeholders), and nothing is returned. If the scheduler refuses a stage, the stages
        already submitted in this call are cancelled and the :class:`SchedulerError` raised.
        """
        names = chain_names(first, last)
        scripts = self.write_scripts(job, names)
        if dry_run:
            after = None
            for stage in names:
                echo(shlex.join(self.submit_argv(scripts[stage], after)))
                after = f"<{stage}-jobid>"
            return []
        submitted: list[Submitted] = []
        after = None
        try:
            for stage in names:
                job_id = self.submit_one(scripts[stage], after)
                submitted.append(Submitted(stage, job_id, str(scripts[stage]), after))
                echo(f"{stage}\t{job_id}" + (f"\tafter {after}" if after else ""))
                after = job_id
        except SchedulerError:
            if submitted:
                ids = [s.job_id for s in submitted]
                self.cancel(ids)
                echo(f"cancelled the stage job(s) already submitted: {' '.join(ids)}")
            raise
        self.record(job, submitted)
        return submitted

    # -- the jobs file --------------------------------------------------------------------------

    def jobs_file(self, job: JobConfig) -> Path:
        """``job``'s jobs file (:meth:`jobs_path` of its run directory)."""
        return self.jobs_path(RunLayout(job.run_dir))

    def record(self, job: JobConfig, submitted: Sequence[Submitted]) -> None:
        """Merge ``submitted`` into the jobs file (a resubmission replaces its stages')."""
        records = self.read_jobs(job, missing_ok=True)
        for s in submitted:
            records[s.stage] = asdict(s)
        ordered = {stage: records[stage] for stage in registry.STAGE_NAMES if stage in records}
        payload = {"format": jobs_format(self.name), "run": str(job.run_dir), "stages": ordered}
        atomic_write_text(self.jobs_file(job), json.dumps(payload, indent=1) + "\n")

    def read_jobs(self, job: JobConfig, missing_ok: bool = False) -> dict[str, dict[str, Any]]:
        """The submitted stages recorded in the jobs file, by stage; a missing file is an
        :class:`InputError` unless ``missing_ok``."""
        path = self.jobs_file(job)
        fmt = jobs_format(self.name)
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
        if not isinstance(data, dict) or data.get("format") != fmt:
            raise InputError(f"{path}: not a galmock submission record (format {fmt})")
        return dict(data["stages"])

    # -- status ---------------------------------------------------------------------------------

    def failed(self, state: str) -> bool:
        """Whether a job in ``state`` ended without success."""
        return state.startswith(self.finished_bad)

    def status_lines(self, job: JobConfig) -> list[str]:
        """A header, then per submitted stage: stage, job id, state, progress; and a hint
        naming the failed or cancelled stages, if any."""
        records = self.read_jobs(job)
        states = self.states([r["job_id"] for r in records.values()])
        layout = RunLayout(job.run_dir)
        lines = [f"{'stage':<9} {'job id':>8}  {'state':<40} progress"]
        for stage, rec in records.items():
            state = states.get(rec["job_id"], f"UNKNOWN (no longer known to {self.title})")
            lines.append(f"{stage:<9} {rec['job_id']:>8}  {state:<40} {progress(layout, stage)}")
        bad = [s for s, r in records.items() if self.failed(states.get(r["job_id"], ""))]
        if bad:
            lines.append(
                f"failed or cancelled: {', '.join(bad)}; see {layout.logs}; "
                f"resubmit with `galmock submit JOB --from {bad[0]}`"
            )
        return lines


def progress(layout: RunLayout, stage: str) -> str:
    """What the run directory says about ``stage`` (:attr:`galmock.stages.Stage.progress`);
    never raises: a half-written file must not break ``status``."""
    try:
        return registry.stage(stage).progress(layout)
    except Exception as err:
        return f"(unreadable: {err})"
