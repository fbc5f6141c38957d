"""``adtn-studio train``: run a preset or a config file headless, with a progress bar.

The console plumbing here (progress bars, Ctrl-C handling, the final summary) is shared with
``adtn-studio resume``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from adtn_studio.cli import CommandError
from adtn_studio.launch import (
    add_launch_arguments,
    every_gpu,
    launch,
    launch_requested,
    lower_priority,
)
from engine.choices import IMAGEFOLDER_PREFIX, PHASE_PRETRAIN, TORCHVISION_PREFIX, RunStatus

# plain Python: no torch at start-up
from engine.events import (
    BatchEnded,
    DownloadProgress,
    EpochEnded,
    RunControl,
    RunStarted,
    TrainerCallback,
)

if TYPE_CHECKING:
    from engine.config import RunConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model with chosen layers compressed as ADTNs",
        description="Train a preset or a configuration file. Progress goes to stderr, the "
        "final summary to stdout. Ctrl-C stops after the current batch; "
        "'adtn-studio resume RUN_DIR' continues from the last finished epoch.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="a built-in preset (see 'presets')")
    source.add_argument("--config", metavar="FILE", type=Path, help="a run configuration (TOML)")
    add_source_arguments(parser)
    parser.add_argument(
        "--out",
        metavar="RUN_DIR",
        type=Path,
        help="run folder (default: a new folder under the runs folder)",
    )
    add_override_arguments(parser)
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs of the compressed model")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed")
    parser.add_argument(
        "--limit-train",
        type=int,
        metavar="N",
        help="use only the first N training examples (quick runs)",
    )
    parser.add_argument(
        "--limit-test",
        type=int,
        metavar="N",
        help="use only the first N test examples (quick runs)",
    )
    parser.add_argument(
        "--teacher",
        metavar="RUN_DIR|FILE",
        help="distil from a trained model: a run folder (its best checkpoint) or a weights "
        "file of the dense model",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        metavar="W",
        help="share of the loss taken from the teacher's outputs (0 to 1, default 0.5)",
    )
    parser.add_argument(
        "--distill-temperature",
        type=float,
        metavar="T",
        help="softening of both models' outputs (default 4)",
    )
    parser.set_defaults(func=run_train)


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that ``train`` and ``resume`` share: where the data is, which device."""
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding the data sets (default: $ADTN_DATA_DIR or a per-user folder)",
    )
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N or mps")
    add_launch_arguments(parser)  # --nproc-per-node and the rest of torchrun's options


def apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``config`` with the command-line options that were given, validated."""
    from engine.config import ConfigError

    names = {
        "data_root": "data_root",
        "device": "device",
        "epochs": "epochs",
        "seed": "seed",
        "limit_train": "limit_train",
        "limit_test": "limit_test",
        "teacher": "teacher",
        "distill_weight": "distill_weight",
        "distill_temperature": "distill_temperature",
    }
    changes = {
        field: getattr(args, arg)
        for arg, field in names.items()
        if getattr(args, arg, None) is not None
    }
    try:
        return config.replace(**changes).validate()
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def run_train(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, RunConfig
    from engine.presets import load_preset
    from engine.runs import new_run_dir

    if not (args.preset or args.config or (args.model and args.dataset)):
        raise CommandError(
            "say what to train: --preset NAME, --config FILE, or --model MODEL "
            "--dataset DATASET --encode PATTERNS"
        )
    try:
        if args.preset:
            config = load_preset(args.preset)
        elif args.config:
            config = RunConfig.load(args.config)
        else:
            config = RunConfig()
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    config = apply_source_arguments(config, args)
    config = apply_overrides(config, args)
    launch_requested(args)  # bad launch options fail before a run folder is made
    run_dir = args.out if args.out else new_run_dir(config)
    return run_and_report(config, run_dir, resume=False, options=args)


def run_and_report(
    config: RunConfig, run_dir: Path, resume: bool, options: argparse.Namespace | None = None
) -> int:
    """Train with a console progress display; print the summary; raise on failure or stop.

    ``options`` (the parsed command line) may ask for a data-parallel launch, an event log
    and a control file (see ``adtn_studio.launch``)."""
    from engine.distributed import detect_environment
    from engine.trainer import train

    if options is not None:
        lower_priority(options)
        every_gpu(config, options)
        if launch_requested(options):
            return launch(options, config, Path(run_dir), resume)
    control = RunControl()
    callbacks: list = [ConsoleProgress(config)]
    if options is not None and options.control_file:
        from engine.event_log import FileRunControl

        control = FileRunControl(options.control_file)
    if options is not None and options.event_log:
        from engine.event_log import EventLogWriter

        callbacks.append(EventLogWriter(options.event_log))
    env = detect_environment()
    if env is not None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        resume = True  # torchrun restarted the workers (--max-restarts): continue the run
    with _stop_on_ctrl_c(control):
        summary = train(config, run_dir, callbacks=callbacks, control=control, resume=resume)
    callbacks[0].close()
    if env is not None and env.rank != 0:  # rank 0 speaks for the job
        if summary.status == RunStatus.FAILED:
            raise CommandError(f"rank {env.rank}: {summary.error_message}")
        return 0
    if summary.status == RunStatus.FAILED:
        raise CommandError(summary.error_message)
    print(format_summary(summary))
    if summary.status == RunStatus.STOPPED and env is not None:
        return 0  # a requested stop is no failure of the worker; the launcher reports it
    if summary.status == RunStatus.STOPPED:
        raise CommandError(
            f"stopped after epoch {summary.epochs_completed} of "
            f"{summary.epochs}; continue with: adtn-studio resume {run_dir}"
        )
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
    dense_acc = getattr(summary, "dense_test_acc", None)
    if dense_acc is not None:  # pretrained weights: before and after, side by side
        lines.insert(
            3,
            f"before:      {dense_acc:.2%} test accuracy of the dense model with "
            "its pretrained weights, before compression",
        )
    if report.get("layers"):
        names = ", ".join(
            f"{row['name']} ({row.get('encoding', 'adtn')}: {row.get('detail', '')})"
            for row in report["layers"]
        )
        lines.append(
            f"encoded layers: {names}: {report['compressed_layers_encoded_params']:,} parameters "
            f"instead of {report['compressed_layers_dense_params']:,} "
            f"({report['compressed_layers_ratio']:.1f}x)"
        )
    lines.append(
        f"time:        {summary.seconds_total:.1f} s ({summary.seconds_per_epoch:.2f} s/epoch)"
    )
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

    def on_run_start(self, event: RunStarted) -> None:
        self.epochs = event.epochs
        resumed = f", resuming at epoch {event.start_epoch}" if event.start_epoch > 1 else ""
        if not self.config.layers:  # say so: nothing is compressed in this run
            tqdm.write(
                f"{self.config.run_name}: dense baseline run (dense_baseline = true), "
                "no layer is compressed",
                file=sys.stderr,
            )
        tqdm.write(
            f"{self.config.run_name}: {self.config.model} on {self.config.dataset}, "
            f"{event.params_total:,} parameters (dense {event.dense_params_total:,}), "
            f"{event.device}, {event.epochs} epochs{resumed} -> {event.run_dir}",
            file=sys.stderr,
        )
        if event.parallel:
            tqdm.write(event.parallel, file=sys.stderr)
        for note in event.notes:  # adapted layers, weights, skipped files
            tqdm.write(f"  {note}", file=sys.stderr)

    def on_download(self, event: DownloadProgress) -> None:
        if self.bar is None:
            loading = event.what == "load"  # images being decoded
            self.bar = tqdm(
                total=event.total_bytes or None,
                unit="img" if loading else "B",
                unit_scale=not loading,
                file=sys.stderr,
                desc=f"{'loading' if loading else 'downloading'} {event.dataset}",
            )
        self.bar.update(event.done_bytes - self.bar.n)
        if event.total_bytes and event.done_bytes >= event.total_bytes:
            self._close_bar()

    def on_batch_end(self, event: BatchEnded) -> None:
        if self.bar is None:
            label = " (dense)" if event.phase == PHASE_PRETRAIN else ""
            self.bar = tqdm(
                total=event.batches,
                desc=f"epoch {event.epoch}/{self.epochs}{label}",
                unit="batch",
                file=sys.stderr,
                leave=False,
            )
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{event.loss:.4f}", acc=f"{event.acc:.3f}", refresh=False)

    def on_epoch_end(self, event: EpochEnded) -> None:
        self._close_bar()
        tqdm.write(
            f"epoch {event.epoch}/{self.epochs}: train loss {event.train_loss:.4f} "
            f"acc {event.train_acc:.2%} | test loss {event.test_loss:.4f} "
            f"acc {event.test_acc:.2%} | {event.params_total:,} params | "
            f"{event.seconds:.1f} s",
            file=sys.stderr,
        )

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


# -- model, data and layers from the command line (no configuration file needed) -----------


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --dataset, --weights, --encode and their companions (``train`` only)."""
    group = parser.add_argument_group(
        "model, data and layers (instead of, or on top of, --preset / --config)"
    )
    group.add_argument(
        "--model",
        metavar="MODEL",
        help="lenet5, fc2, ...; torchvision:NAME (e.g. torchvision:resnet18); "
        "or path/to/file.py:factory",
    )
    group.add_argument(
        "--dataset",
        metavar="DATASET",
        help="mnist, fashionmnist, kmnist, cifar10, cifar100, synthetic, or "
        "imagefolder:DIR (one folder per class)",
    )
    group.add_argument(
        "--weights",
        metavar="FILE",
        help="pretrained weights: a .safetensors file or a PyTorch state dict "
        "(read with weights_only), or torchvision:DEFAULT for a "
        "torchvision model; ADTNs are then fitted to these weights",
    )
    group.add_argument(
        "--encode",
        metavar="PATTERNS",
        help="layers to compress, comma-separated name patterns such as "
        "'fc,layer4.*' (see 'adtn-studio layers')",
    )
    group.add_argument("--depth", type=int, metavar="N", help="ADTN depth of encoded layers")
    group.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="image folders: input size in pixels (default: the images' own)",
    )
    group.add_argument("--batch-size", type=int, metavar="N", help="examples per batch")
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="image folders too large for memory: processes that decode the "
        "files (default 0: one per core, at most 4)",
    )
    group.add_argument("--lr", type=float, metavar="X", help="learning rate")
    group.add_argument("--name", metavar="NAME", help="run name")


def apply_source_arguments(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``config`` with --model/--dataset/--weights/--encode/... applied; file and folder
    paths are made absolute, so the run folder's config.toml works from anywhere."""
    from engine.config import ConfigError

    changes: dict = {}
    if args.model:
        changes["model"] = absolute_model(args.model)
    if args.dataset:
        changes["dataset"] = absolute_dataset(args.dataset)
    if args.weights:
        changes["weights"] = absolute_weights(args.weights)
        if args.weights and not args.preset and not args.config:
            changes.update(init="pretrained", pretrain_epochs=0)  # fit ADTNs to the weights
    for arg, field in (
        ("image_size", "image_size"),
        ("batch_size", "batch_size"),
        ("workers", "workers"),
        ("lr", "lr"),
        ("name", "name"),
    ):
        if getattr(args, arg, None) is not None:
            changes[field] = getattr(args, arg)
    try:
        config = config.replace(**changes)
    except (ConfigError, TypeError) as exc:
        raise CommandError(str(exc)) from None
    if args.encode:
        config = config.replace(layers=encode_layers(config, args.encode, args.depth or 1))
    elif args.depth is not None:
        if not config.layers:
            raise CommandError("--depth needs layers to encode: add --encode PATTERNS")
        config = config.replace(layers=[_with_depth(spec, args.depth) for spec in config.layers])
    elif not config.layers and args.model and not args.preset and not args.config:
        raise CommandError(
            "say which layers to compress with --encode PATTERNS (e.g. "
            f"--encode 'fc*'); 'adtn-studio layers --model {args.model} "
            f"--dataset {args.dataset}' lists them"
        )
    return config


def absolute_model(model: str) -> str:
    from engine.model_sources import parse_model_spec

    try:
        source = parse_model_spec(model)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if source.kind == "file":
        return f"{Path(source.path).expanduser().resolve()}:{source.name}"
    return model


def absolute_dataset(dataset: str) -> str:
    if dataset.startswith(IMAGEFOLDER_PREFIX) and dataset[len(IMAGEFOLDER_PREFIX) :].strip():
        folder = Path(dataset[len(IMAGEFOLDER_PREFIX) :]).expanduser().resolve()
        return IMAGEFOLDER_PREFIX + str(folder)
    return dataset


def absolute_weights(weights: str) -> str:
    if weights.startswith(TORCHVISION_PREFIX):
        return weights
    return str(Path(weights).expanduser().resolve())


def encode_layers(config: RunConfig, patterns: str, depth: int) -> list:
    """LayerSpecs for the layers of ``config``'s model that match ``patterns``."""
    from engine.config import LayerSpec
    from engine.layer_select import select_layer_names

    try:
        infos = describe_config_layers(config)
        names = select_layer_names(infos, patterns)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return [LayerSpec(name=name, depth=depth) for name in names]


def describe_config_layers(config: RunConfig) -> list:
    """The layers of ``config``'s model for its data set: ``engine.describe_layers`` rows."""
    from engine.compression import describe_layers

    return describe_layers(config_skeleton(config))


def config_skeleton(config: RunConfig):
    """``config``'s model for its data set, built on the meta device (no memory, no
    initialisation); every failure is one ``CommandError`` line."""
    import torch

    from engine.data import DataUnavailableError, config_dataset_info
    from engine.models import build_model

    try:
        info = config_dataset_info(config)
        with torch.device("meta"):
            return build_model(config.model, info.in_channels, info.image_size, info.num_classes)
    except (DataUnavailableError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _with_depth(spec, depth: int):
    import dataclasses

    return dataclasses.replace(spec, depth=depth)
