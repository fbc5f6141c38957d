"""Entry point: no arguments opens the window, a subcommand runs headless."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = bool(args) and set(args) <= {"-v", "--verbose"}  # the window, verbose
    if not args or verbose:
        from adtn_studio.extras import explain_missing_gui, missing_gui_packages

        missing = missing_gui_packages()  # a headless installation has no Qt at all
        if missing:
            print(explain_missing_gui(missing), file=sys.stderr)
            return 1
        from ui.platform_check import check_platform

        problem = check_platform()  # Qt aborts without its X libraries: name them first
        if problem:
            print(problem, file=sys.stderr)
            return 1
        from ui.app import run_app  # Qt is imported only when the window is wanted

        return run_app(verbose=verbose)
    from adtn_studio.cli import run_cli

    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
