"""``adtn-studio train``: run a preset or a config file headless, with a progress bar.

The console plumbing here (progress bars, Ctrl-C handling, the final summary) is shared with
``adtn-studio resume``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from adtn_studio.cli import CommandError
from engine.events import RunControl, TrainerCallback  # plain Python: no torch at start-up

if TYPE_CHECKING:
    from engine.config import RunConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model with chosen layers compressed as ADTNs",
        description="Train a preset or a configuration file. Progress goes to stderr, the "
                    "final summary to stdout. Ctrl-C stops after the current batch; "
                    "'adtn-studio resume RUN_DIR' continues from the last finished epoch.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", metavar="NAME", help="a built-in preset (see 'presets')")
    source.add_argument("--config", metavar="FILE", type=Path, help="a run configuration (TOML)")
    parser.add_argument("--out", metavar="RUN_DIR", type=Path,
                        help="run folder (default: a new folder under the runs folder)")
    add_override_arguments(parser)
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs of the compressed model")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed")
    parser.add_argument("--limit-train", type=int, metavar="N",
                        help="use only the first N training examples (quick runs)")
    parser.add_argument("--limit-test", type=int, metavar="N",
                        help="use only the first N test examples (quick runs)")
    parser.set_defaults(func=run_train)


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that ``train`` and ``resume`` share: where the data is, which device."""
    parser.add_argument("--data-root", metavar="DIR",
                        help="folder holding the data sets (default: $ADTN_DATA_DIR or a "
                             "per-user folder)")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N or mps")


def apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``config`` with the command-line options that were given, validated."""
    from engine.config import ConfigError

    names = {"data_root": "data_root", "device": "device", "epochs": "epochs", "seed": "seed",
             "limit_train": "limit_train", "limit_test": "limit_test"}
    changes = {field: getattr(args, arg) for arg, field in names.items()
               if getattr(args, arg, None) is not None}
    try:
        return config.replace(**changes).validate()
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def run_train(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, RunConfig
    from engine.presets import load_preset
    from engine.runs import new_run_dir

    try:
        config = load_preset(args.preset) if args.preset else RunConfig.load(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    config = apply_overrides(config, args)
    run_dir = args.out if args.out else new_run_dir(config)
    return run_and_report(config, run_dir, resume=False)


def run_and_report(config: RunConfig, run_dir: Path, resume: bool) -> int:
    """Train with a console progress display; print the summary; raise on failure or stop."""
    from engine.trainer import train

    control = RunControl()
    progress = ConsoleProgress(config)
    with _stop_on_ctrl_c(control):
        summary = train(config, run_dir, callbacks=[progress], control=control, resume=resume)
    progress.close()
    if summary.status == "failed":
        raise CommandError(summary.error_message)
    print(format_summary(summary))
    if summary.status == "stopped":
        raise CommandError(f"stopped after epoch {summary.epochs_completed} of "
                           f"{summary.epochs}; continue with: adtn-studio resume {run_dir}")
    return 0


def format_summary(summary) -> str:
    report = summary.compression
    lines = [
        f"run folder:  {summary.run_dir}",
        f"status:      {summary.status} ({summary.epochs_completed}/{summary.epochs} epochs, "
        f"{summary.device})",
        f"test acc:    {summary.test_acc:.2%} (best {summary.best_test_acc:.2%} at epoch "
        f"{summary.best_epoch})",
        f"parameters:  {summary.params_total:,} (dense {summary.dense_params_total:,}; "
        f"{summary.compression_ratio:.2f}x smaller)",
    ]
    if report.get("layers"):
        names = ", ".join(f"{row['name']} (depth {row['depth']})" for row in report["layers"])
        lines.append(
            f"ADTN layers: {names}: {report['compressed_layers_adtn_params']:,} parameters "
            f"instead of {report['compressed_layers_dense_params']:,} "
            f"({report['compressed_layers_ratio']:.1f}x)")
    lines.append(f"time:        {summary.seconds_total:.1f} s "
                 f"({summary.seconds_per_epoch:.2f} s/epoch)")
    return "\n".join(lines)


class ConsoleProgress(TrainerCallback):
    """A tqdm bar per epoch on stderr, and one line per finished epoch."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.bar: tqdm | None = None
        self.epochs = config.total_epochs

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_run_start(self, event) -> None:
        self.epochs = event.epochs
        resumed = f", resuming at epoch {event.start_epoch}" if event.start_epoch > 1 else ""
        if not self.config.layers:  # say so: nothing is compressed in this run
            tqdm.write(f"{self.config.run_name}: dense baseline run (dense_baseline = true), "
                       "no layer is compressed", file=sys.stderr)
        tqdm.write(f"{self.config.run_name}: {self.config.model} on {self.config.dataset}, "
                   f"{event.params_total:,} parameters (dense {event.dense_params_total:,}), "
                   f"{event.device}, {event.epochs} epochs{resumed} -> {event.run_dir}",
                   file=sys.stderr)

    def on_download(self, event) -> None:
        if self.bar is None:
            self.bar = tqdm(total=event.total_bytes or None, unit="B", unit_scale=True,
                            desc=f"downloading {event.dataset}", file=sys.stderr)
        self.bar.update(event.done_bytes - self.bar.n)
        if event.total_bytes and event.done_bytes >= event.total_bytes:
            self._close_bar()

    def on_batch_end(self, event) -> None:
        if self.bar is None:
            label = " (dense)" if event.phase == "pretrain" else ""
            self.bar = tqdm(total=event.batches, desc=f"epoch {event.epoch}/{self.epochs}{label}",
                            unit="batch", file=sys.stderr, leave=False)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{event.loss:.4f}", acc=f"{event.acc:.3f}", refresh=False)

    def on_epoch_end(self, event) -> None:
        self._close_bar()
        tqdm.write(f"epoch {event.epoch}/{self.epochs}: train loss {event.train_loss:.4f} "
                   f"acc {event.train_acc:.2%} | test loss {event.test_loss:.4f} "
                   f"acc {event.test_acc:.2%} | {event.params_total:,} params | "
                   f"{event.seconds:.1f} s", file=sys.stderr)

    def close(self) -> None:
        self._close_bar()


class _stop_on_ctrl_c:
    """First Ctrl-C: ask the trainer to stop after the current batch. Second: abort."""

    def __init__(self, control: RunControl) -> None:
        self.control = control
        self.previous = None

    def _handle(self, signum, frame) -> None:
        if self.control.stop_requested:
            raise KeyboardInterrupt
        self.control.request_stop()
        tqdm.write("stopping after the current batch (Ctrl-C again to abort)", file=sys.stderr)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGINT, self.previous)
