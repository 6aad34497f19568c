"""The ``galmock`` command line: parses arguments and calls one stage function per subcommand."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from galmock import __version__
from galmock.errors import GalmockError, NotImplementedStageError

EXIT_ERROR = 1
EXIT_NOT_IMPLEMENTED = 3

STAGE_HELP = {
    "ingest": "read the galaxy source into <run>/particles.zarr (centred, aligned, validated)",
    "plan": "split the galaxy into regions; writes <run>/plan.json and prints a summary",
    "train": "train the flows of every region into <run>/models/",
    "upsample": "sample stars from the region flows into <run>/stars.zarr",
    "convert": "convert stars to Gaia-frame ICRS catalogs (<run>/catalog.zarr, catalog.hats/, "
    "selections/)",
    "validate": "compare upsamplers with classifier tests; writes <run>/report/",
    "run": "run the stages in order (ingest, plan, train, upsample, convert, validate)",
    "submit": "render the Slurm scripts into <run>/slurm/ and submit the stage chain with sbatch",
    "status": "show each stage's Slurm state and progress",
    "suite": "train the conditional galaxy model (GalacticFlow) on the job's suite of galaxies",
    "generate": "sample a galaxy from a conditional galaxy model into <run>/particles.zarr",
}

# Commands outside the stage chain: "module:function", each taking the JobConfig and the
# parsed arguments.
COMMANDS = {
    "submit": "galmock.slurm:submit_command",
    "status": "galmock.slurm:status_command",
    "suite": "galmock.suite:suite_command",
    "generate": "galmock.generate:generate_command",
}


def build_parser() -> argparse.ArgumentParser:
    from galmock.run import STAGES

    parser = argparse.ArgumentParser(
        prog="galmock",
        description="Upsample a simulated galaxy into Gaia-like mock star catalogs.",
    )
    parser.add_argument("--version", action="version", version=f"galmock {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in STAGE_HELP.items():
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
            p.add_argument("--from", dest="first", choices=STAGES, default=STAGES[0])
            p.add_argument("--until", dest="last", choices=STAGES, default=STAGES[-1])
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
    import json

    from galmock.flows import registry

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


def _command(name: str) -> Any:
    import importlib

    module_name, _, function = COMMANDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise NotImplementedStageError(f"'{name}' is not implemented yet") from None
    return getattr(module, function)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from galmock.config import load_job
    from galmock.run import STAGES, run_pipeline, run_stage

    try:
        if args.command == "models":
            _models(args)
            return 0
        job = load_job(args.job, overrides=args.overrides, output=args.output)
        if args.command in STAGES:
            run_stage(job, args.command)
        elif args.command == "run":
            run_pipeline(job, args.first, args.last)
        else:
            _command(args.command)(job, args)
    except NotImplementedStageError as err:
        print(f"galmock {args.command}: {err}", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    except GalmockError as err:
        print(f"galmock {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
