"""The ``galmock`` command line: parses arguments and calls one stage per subcommand.

Subcommands come from the stage registry (:mod:`galmock.stages`): one per stage of the chain,
``run`` for the chain, ``suite`` and ``generate``; ``submit``/``status`` go to the scheduler
(:mod:`galmock.schedulers`), ``models`` to the model registry (:mod:`galmock.flows.registry`).
Nothing imports this module.

Exit codes: 0 success; 1 bad input (:class:`~galmock.errors.GalmockError`: the message names the
file, key or field and the value) or an environment error (a file system refusing: unwritable
or full output, a path that is a file; the message names the path and the reason); 2 bad
command line (argparse); 70 internal error (a bug in galmock: the traceback is printed, please
report it); 75 preempted (:data:`galmock.preempt.EXIT_PREEMPTED`).

Example:
    >>> parser = build_parser()
    >>> parser.parse_args(["run", "jobs/demo.yaml", "--until", "plan"]).last
    'plan'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence

from galmock.config import load_job
from galmock.errors import GalmockError
from galmock.flows import registry
from galmock.schedulers import status_command, submit_command
from galmock.stages import COMMANDS, STAGE_NAMES, STAGES, run_pipeline, run_stage, stage
from galmock.version import __version__

EXIT_ERROR = 1
EXIT_INTERNAL = 70  # EX_SOFTWARE: galmock itself failed, not the user's input

_CHAIN_HELP = f"run the stages in order ({', '.join(STAGE_NAMES)})"
_SCHEDULER_HELP = {
    "submit": "render the Slurm scripts into <run>/slurm/ and submit the stage chain with sbatch",
    "status": "show each stage's Slurm state and progress",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per registered stage, plus run/submit/status/models."""
    parser = argparse.ArgumentParser(
        prog="galmock",
        description="Upsample a simulated galaxy into Gaia-like mock star catalogs.",
    )
    parser.add_argument("--version", action="version", version=f"galmock {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {s.name: s.help for s in STAGES}
    helps["run"] = _CHAIN_HELP
    helps.update(_SCHEDULER_HELP)
    helps.update({s.name: s.help for s in COMMANDS})
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("job", metavar="JOB", help="job file (YAML), e.g. jobs/demo.yaml")
        p.add_argument("--output", metavar="DIR", help="run directory (overrides 'output')")
        p.add_argument(
            "--set",
            dest="overrides",
            metavar="KEY.PATH=VALUE",
            action="append",
            default=[],
            help="override a job key, e.g. --set galaxy.demo.n_particles=20000 (repeatable)",
        )
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name in ("run", "submit"):
            p.add_argument("--from", dest="first", choices=STAGE_NAMES, default=STAGE_NAMES[0])
            p.add_argument("--until", dest="last", choices=STAGE_NAMES, default=STAGE_NAMES[-1])
        if name == "submit":
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="render the scripts and print the sbatch commands without submitting",
            )

    models = sub.add_parser(
        "models",
        help="list, show and register pretrained region models",
        description="The model registry maps names to trained artifacts (paths or fsspec URLs); "
        "a job loads one with flows.load. Registry file: $GALMOCK_MODEL_REGISTRY or "
        "~/.config/galmock/models.json.",
    )
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="list registered models")
    show = msub.add_parser("show", help="print a model's manifest (name, path or URL)")
    show.add_argument("model", metavar="MODEL")
    reg = msub.add_parser("register", help="register an artifact under a name")
    reg.add_argument("name")
    reg.add_argument("location", help="artifact directory or fsspec URL")
    reg.add_argument("--overwrite", action="store_true")
    return parser


def _models(args: argparse.Namespace) -> None:
    if args.models_command == "list":
        entries = registry.list_models()
        if not entries:
            print(f"no models registered in {registry.registry_path()}")
        for entry in entries:
            print(f"{entry.name}\t{entry.location}\t{entry.registered}")
    elif args.models_command == "show":
        print(json.dumps(registry.describe(args.model), indent=2, sort_keys=True))
    else:
        entry = registry.register(args.name, args.location, overwrite=args.overwrite)
        print(f"registered {entry.name} -> {entry.location}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    first, last = getattr(args, "first", None), getattr(args, "last", None)
    if first is not None and STAGE_NAMES.index(first) > STAGE_NAMES.index(last):
        parser.error(f"--from {first} comes after --until {last}")  # exit 2: bad command line
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "models":
            _models(args)
            return 0
        job = load_job(args.job, overrides=args.overrides, output=args.output)
        if args.command == "run":
            run_pipeline(job, args.first, args.last)
        elif args.command == "submit":
            submit_command(job, args)
        elif args.command == "status":
            status_command(job, args)
        elif args.command in STAGE_NAMES:
            run_stage(job, args.command)
        else:  # suite, generate, verify: no chain stage, so no job.yaml or stage log of their own
            stage(args.command).run(job)
    except GalmockError as err:
        print(f"galmock {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # the environment: permissions, a full disk, a file in the way
        print(f"galmock {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:
        traceback.print_exc()
        print(f"galmock {args.command}: internal error (a bug in galmock {__version__}; please "
              "report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0


def describe_os_error(err: OSError) -> str:
    """``path: reason`` for an error the file system raised.

    Example:
        >>> describe_os_error(PermissionError(13, "Permission denied", "/scratch/run/plan.json"))
        '/scratch/run/plan.json: Permission denied'
        >>> describe_os_error(OSError(28, "No space left on device"))
        'No space left on device'
    """
    reason = err.strerror or str(err)
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    return ": ".join([" -> ".join(str(p) for p in paths), reason] if paths else [reason])


if __name__ == "__main__":
    sys.exit(main())
