"""The headless command line: one subcommand a module under ``adtn_studio/commands``.

Failures are reported by type: a ``CommandError`` or an engine error (``engine.errors``) is
the user's to fix and prints as one line; anything else is a bug, printed as one line that
names the log file holding its traceback (or, with ``--verbose``, as the traceback itself).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from adtn_studio import __version__

log = logging.getLogger(__name__)
VERBOSE_HELP = "debug messages on the console; an unexpected error prints its traceback"

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func``.
COMMAND_MODULES = (
    "train",
    "resume",
    "compare",
    "presets",
    "layers",
    "export",
    "inspect",
    "selftest",
)


class CommandError(Exception):
    """A failure the user can act on; printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adtn-studio",
        description="Compress neural networks with deep tensor networks (ADTN). "
        "Run without arguments to open the application window.",
    )
    parser.add_argument("--version", action="version", version=f"adtn-studio {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"adtn_studio.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"adtn_studio.commands.{name}":
                raise
            continue  # a command that is not built yet is simply absent
        module.register(subparsers)
    # --verbose also after the subcommand; SUPPRESS keeps one given before it
    for subparser in {id(p): p for p in subparsers.choices.values()}.values():
        subparser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def run_cli(argv: list[str]) -> int:
    from engine.errors import EngineError
    from engine.logging_setup import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    verbose = bool(getattr(args, "verbose", False))
    log_file = configure_logging(verbose=verbose)
    log.debug("adtn-studio %s: %s", __version__, " ".join(argv))
    try:
        return int(args.func(args) or 0)
    except (CommandError, EngineError) as exc:
        log.info("%s failed: %s", args.command, exc)
        print(f"adtn-studio {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"adtn-studio {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: its traceback goes to the log file (and, verbose, here)
        log.error("%s failed", args.command, exc_info=exc)
        line = f"adtn-studio {args.command}: unexpected error: {type(exc).__name__}: {exc}"
        if not verbose:
            line += f" (details in {log_file})" if log_file else " (run with --verbose)"
        print(line, file=sys.stderr)
        return 1
