"""``adtn-studio export``: write a run's model as .adtn, dense safetensors and/or ONNX, verified."""

from __future__ import annotations

import argparse
import json
import sys

from adtn_studio.cli import CommandError
from engine.choices import CHECKPOINT_KINDS, EXPORT_FORMATS
from engine.units import format_bytes

FORMAT_CHOICES = (*EXPORT_FORMATS, "all")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run's model (.adtn bundle, dense safetensors, ONNX), verified",
        description="Export the trained model of RUN_DIR. Every file is read back and run on "
        "one batch next to the trained model; the export fails, leaving no file, if any "
        "output differs by more than 1e-4. Prints sizes, compression and dense CPU latency.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holds config.toml)")
    parser.add_argument(
        "--checkpoint",
        choices=CHECKPOINT_KINDS,
        default="best",
        help="which checkpoint to export (default: best)",
    )
    parser.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="all",
        help="file format to write (default: all three)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="output folder (files named after the run), or a file path for "
        "one format (for several, its stem is used with each suffix)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.checkpoint import CheckpointError
    from engine.config import ConfigError
    from engine.export import FORMATS, BundleError, ExportError, export_run

    formats = FORMATS if args.format == "all" else (args.format,)
    with _ProgressBar() as bar:
        try:
            report = export_run(
                args.run_dir,
                args.out,
                formats=formats,
                checkpoint=args.checkpoint,
                progress=bar.update,
            )
        except (ExportError, BundleError, CheckpointError, ConfigError, ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0


class _ProgressBar:
    """A tqdm bar on stderr driven by ``(fraction, message)`` progress calls."""

    def __enter__(self) -> _ProgressBar:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, pipes)
        self._bar = tqdm(
            total=100,
            file=sys.stderr,
            leave=False,
            disable=None,
            bar_format="{desc:<40} {bar} {percentage:3.0f}%",
        )
        return self

    def update(self, fraction: float, message: str) -> None:
        self._bar.set_description_str(message)
        self._bar.update(round(100 * fraction) - self._bar.n)

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()


def format_report(report) -> str:
    """The report as a few lines of plain text."""
    width = max(len(f.path) for f in report.files)
    lines = [
        f"Exported {report.model} ({report.dataset}) from {report.source}, "
        f"checkpoint {report.checkpoint}:",
        f"  {'format':<7} {'file':<{width}} {'size':>11} {'vs dense f32':>12} {'max |diff|':>11}",
    ]
    for exported in report.files:
        share = exported.size_bytes / report.dense_float32_bytes
        lines.append(
            f"  {exported.format:<7} {exported.path:<{width}} "
            f"{format_bytes(exported.size_bytes):>11} {share:>11.1%} "
            f"{exported.max_abs_diff:>11.2e}"
        )
    lines += [
        f"Dense float32 size {format_bytes(report.dense_float32_bytes)}; parameters "
        f"{report.params_dense:,} dense, {report.params_compressed:,} compressed "
        f"({report.compression_ratio:.1f}x fewer).",
        f"Verification on a {report.batch_source} batch of {report.batch_shape[0]}: largest "
        f"difference {report.max_abs_diff:.2e} <= {report.tolerance:g}, passed.",
        f"Dense model CPU latency: {report.dense_latency_ms:.2f} ms per batch of "
        f"{report.batch_shape[0]} (median of {report.latency_runs} runs).",
    ]
    return "\n".join(lines)
