"""``adtn-studio resume RUN_DIR``: continue a stopped or interrupted run from the end of its
last finished epoch."""

from __future__ import annotations

import argparse
from pathlib import Path

from adtn_studio.cli import CommandError
from adtn_studio.commands.train import add_override_arguments, apply_overrides, run_and_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resume", help="continue a run from its last checkpoint",
        description="Continue the run in RUN_DIR from its last checkpoint (the end of its "
                    "last finished epoch), with the configuration saved in the folder.")
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    add_override_arguments(parser)
    parser.set_defaults(func=run_resume)


def run_resume(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, RunConfig

    config_path = args.run_dir / "config.toml"
    if not config_path.is_file():
        raise CommandError(f"{args.run_dir} is not a run folder (it has no config.toml)")
    try:
        config = RunConfig.load(config_path)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    return run_and_report(apply_overrides(config, args), args.run_dir, resume=True)
