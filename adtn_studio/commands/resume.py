"""``adtn-studio resume RUN_DIR``: continue a stopped or interrupted run from the end of its
last finished epoch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adtn_studio.cli import CommandError
from adtn_studio.commands.train import add_override_arguments, apply_overrides, run_and_report
from engine.paths import CONFIG_FILE, RunPaths  # torch-free


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resume",
        help="continue a run from its last checkpoint",
        description="Continue the run in RUN_DIR from its last checkpoint (the end of its "
        "last finished epoch), with the configuration saved in the folder. A run "
        "whose last checkpoint is missing is refused unless --restart is given.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    parser.add_argument(
        "--restart",
        action="store_true",
        help="when checkpoints/last.safetensors is missing, start the run "
        "again at epoch 1 in the same folder (its old best checkpoint "
        "is kept as best-before-restart)",
    )
    add_override_arguments(parser)
    parser.set_defaults(func=run_resume)


def run_resume(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, RunConfig

    paths = RunPaths(args.run_dir)
    config_path = paths.config
    if not config_path.is_file():
        raise CommandError(f"{args.run_dir} is not a run folder (it has no {CONFIG_FILE})")
    try:
        config = RunConfig.load(config_path)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    config = apply_overrides(config, args)
    if not args.restart:
        return run_and_report(config, args.run_dir, resume=True, options=args)
    if paths.checkpoint("last").exists():
        raise CommandError(
            f"{paths.checkpoint('last')} exists: resume without --restart "
            "(or train into a new folder to start over)"
        )
    _keep_old_best(paths)
    print(f"starting {args.run_dir} again at epoch 1", file=sys.stderr)
    return run_and_report(config, args.run_dir, resume=False, options=args)


def _keep_old_best(paths: RunPaths) -> None:
    """Move the previous attempt's best checkpoint aside, so that an export of the restarted
    run never picks it up, while nothing the user had is deleted."""
    best = paths.checkpoint("best")
    for old in (best, best.with_suffix(".json")):
        if old.exists():
            old.replace(old.with_name(f"best-before-restart{old.suffix}"))
