"""``adtn-studio selftest``: check that this installation trains, exports and reloads a model."""

from __future__ import annotations

import argparse

from adtn_studio.selftest import run_selftest


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "selftest",
        help="check this installation: window, training, export and reload (no display needed)",
        description="Build the main window offscreen, train a small LeNet-5 with ADTN layers "
        "for a few steps on generated data, export it (.adtn, dense, ONNX) and reload it. "
        "Prints one PASS/FAIL line a step; exits 0 only if every step passed.",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument(
        "--no-window", dest="window", action="store_false", help="skip building the main window"
    )
    parser.add_argument(
        "--traceback", action="store_true", help="print the full traceback of a step that fails"
    )
    parser.set_defaults(
        func=lambda args: run_selftest(
            device=args.device, window=args.window, show_tracebacks=args.traceback
        )
    )
