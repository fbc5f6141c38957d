"""The headless command line: one subcommand a module under ``adtn_studio/commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from adtn_studio import __version__

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func``.
COMMAND_MODULES = ("train", "resume", "compare", "presets", "layers", "export", "inspect",
                   "selftest")


class CommandError(Exception):
    """A failure the user can act on; printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adtn-studio",
        description="Compress neural networks with deep tensor networks (ADTN). "
        "Run without arguments to open the application window.",
    )
    parser.add_argument("--version", action="version", version=f"adtn-studio {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"adtn_studio.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"adtn_studio.commands.{name}":
                raise
            continue  # a command that is not built yet is simply absent
        module.register(subparsers)
    return parser


def run_cli(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"adtn-studio {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"adtn-studio {args.command}: interrupted", file=sys.stderr)
        return 130
