"""The self-test: prove that this installation, from source or frozen, really works.

It needs no display (Qt runs offscreen unless QT_QPA_PLATFORM says otherwise), no network and
no data set: it builds the main window, then trains a LeNet-5 with ADTN layers for a few steps
on the generated ``synthetic`` data set through the real trainer, exports it (.adtn, dense,
ONNX), reloads each file and checks that all of them compute the same outputs. Each step
prints one PASS, FAIL or SKIP line; the result is 0 only if every step passed.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from adtn_studio import __version__
from adtn_studio.extras import missing_gui_packages
from engine.choices import RunStatus
from engine.events import EpochEnded, TrainerCallback  # plain Python: no torch at start-up

if TYPE_CHECKING:  # each step imports what it checks, when it runs
    from engine.config import RunConfig

MODEL = "lenet5"
DATASET = "synthetic"
ADTN_LAYERS = {"fc1": 2, "fc2": 2}  # name -> depth


@dataclass
class Context:
    """What the steps hand on to each other."""

    work: Path
    device: str
    config: RunConfig | None = None
    run_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


# -- the steps: each returns a one-line detail or raises -----------------------------------


def check_versions(ctx: Context) -> str:
    import numpy
    import onnxruntime
    import torch
    import torchvision

    return (
        f"Python {platform.python_version()}, PyTorch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {_qt_version()}, numpy "
        f"{numpy.__version__}, ONNX Runtime {onnxruntime.__version__}"
    )


def _qt_version() -> str:
    if missing_gui_packages():
        return "no Qt (engine and command line only)"
    import PySide6
    from PySide6.QtCore import qVersion

    return f"Qt {qVersion()} (PySide6 {PySide6.__version__})"


def check_device(ctx: Context) -> str:
    import torch

    from engine.trainer import describe_device, resolve_device

    device = resolve_device(ctx.device)
    ctx.device = str(device)
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    found = (
        f"{torch.cuda.device_count()} CUDA device(s)"
        if torch.cuda.is_available()
        else "no CUDA device"
    )
    from engine import adtn_gpu, adtn_native

    gpu = f"; on the GPU: {adtn_gpu.describe()}" if torch.cuda.is_available() else ""
    return (
        f"training on {describe_device(device)} (PyTorch {build}, {found} found); "
        f"ADTN contraction on the CPU: {adtn_native.describe()}{gpu}"
    )


def check_window(ctx: Context) -> str:
    """Build, show and render the main window: proves Qt and its plugins are installed."""
    from PySide6.QtGui import QGuiApplication

    from ui.app import create_application
    from ui.main_window import MainWindow

    # Keep the user's settings (window geometry...) out of it.
    saved = os.environ.get("ADTN_CONFIG_DIR")
    os.environ["ADTN_CONFIG_DIR"] = str(ctx.work / "config")
    try:
        app = create_application(["adtn-studio"])
        window = MainWindow()
        window.show()
        app.processEvents()
        image = window.grab().toImage()
        window.close()
        app.processEvents()
    finally:
        if saved is None:
            del os.environ["ADTN_CONFIG_DIR"]
        else:
            os.environ["ADTN_CONFIG_DIR"] = saved
    if image.isNull() or image.width() < 100:
        raise RuntimeError("the main window could not be drawn")
    return (
        f"main window '{window.windowTitle()}' drawn at {image.width()}x{image.height()} "
        f"on Qt platform '{QGuiApplication.platformName()}'"
    )


class _EpochRecorder(TrainerCallback):
    """Keeps the trainer's epoch-end events."""

    def __init__(self) -> None:
        self.epochs: list[EpochEnded] = []

    def on_epoch_end(self, event: EpochEnded) -> None:
        self.epochs.append(event)


def check_train(ctx: Context) -> str:
    from engine.config import LayerSpec, RunConfig
    from engine.trainer import train

    ctx.config = RunConfig(
        name="selftest",
        model=MODEL,
        dataset=DATASET,
        download=False,
        layers=[LayerSpec(name, depth=depth) for name, depth in ADTN_LAYERS.items()],
        epochs=2,
        batch_size=32,
        limit_train=128,
        limit_test=64,
        schedule="none",
        device=ctx.device,
        amp=False,
        seed=0,
    ).validate()
    ctx.run_dir = ctx.work / "run"
    recorder = _EpochRecorder()
    summary = train(ctx.config, ctx.run_dir, callbacks=[recorder])
    if summary.status != RunStatus.FINISHED:
        raise RuntimeError(f"training {summary.status}: {summary.error_message}")
    losses = [event.train_loss for event in recorder.epochs]
    if len(losses) != ctx.config.epochs or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"training losses per epoch: {losses}")
    return (
        f"{MODEL} on {DATASET} with {', '.join(ADTN_LAYERS)} as ADTNs: "
        f"{summary.dense_params_total:,} -> {summary.params_total:,} parameters; "
        f"{len(losses)} epochs on {summary.device}, train loss "
        f"{' -> '.join(f'{x:.3f}' for x in losses)}, test accuracy "
        f"{summary.best_test_acc:.0%}"
    )


def check_export(ctx: Context) -> str:
    from engine.export import export_run
    from engine.units import format_bytes

    report = export_run(ctx.run_dir, ctx.work / "export", formats=("adtn", "dense", "onnx"))
    ctx.files = {exported.format: Path(exported.path) for exported in report.files}
    sizes = ", ".join(
        f"{exported.format} {format_bytes(exported.size_bytes)}" for exported in report.files
    )
    return f"{sizes}; verified, largest difference {report.max_abs_diff:.1e}"


def check_reload(ctx: Context) -> str:
    """Load each exported file afresh and run the three on the same input."""
    import numpy
    import onnxruntime
    import torch

    from engine.data import dataset_info
    from engine.export import load_bundle
    from engine.export.dense import load_dense_into
    from engine.export.run_export import plain_model
    from engine.export.verify import TOLERANCE

    info = dataset_info(DATASET)
    inputs = torch.randn(
        8,
        info.in_channels,
        info.image_size,
        info.image_size,
        generator=torch.Generator().manual_seed(1),
    )
    compressed = load_bundle(ctx.files["adtn"])
    dense = load_dense_into(plain_model(ctx.config), ctx.files["dense"])
    session = onnxruntime.InferenceSession(
        str(ctx.files["onnx"]), providers=["CPUExecutionProvider"]
    )
    with torch.no_grad():
        expected = compressed(inputs).numpy()
        outputs = {"dense": dense(inputs).numpy()}
    outputs["onnx"] = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    differences = {name: float(numpy.abs(out - expected).max()) for name, out in outputs.items()}
    worst = max(differences, key=differences.get)
    if differences[worst] > TOLERANCE:
        raise RuntimeError(
            f"the reloaded {worst} model differs from the .adtn bundle by "
            f"{differences[worst]:.2e} (tolerance {TOLERANCE:g})"
        )
    return (
        f".adtn, dense and ONNX (ONNX Runtime) reloaded; outputs agree within "
        f"{differences[worst]:.1e}"
    )


# -- running them --------------------------------------------------------------------------

Step = Callable[[Context], str]


def selftest_steps(window: bool = True) -> list[tuple[str, Step, bool]]:
    """(name, step, needs the previous step) in order."""
    steps = [("versions", check_versions, False), ("device", check_device, False)]
    if window and not missing_gui_packages():  # a headless installation has no window
        steps.append(("window", check_window, False))
    steps += [
        ("train", check_train, False),
        ("export", check_export, True),
        ("reload", check_reload, True),
    ]
    return steps


def run_selftest(
    device: str = "auto",
    window: bool = True,
    show_tracebacks: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run every step, printing a line each to ``out`` (standard output); 0 if all passed."""
    out = sys.stdout if out is None else out
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    frozen = "frozen" if getattr(sys, "frozen", False) else "from source"
    print(
        f"ADTN Studio {__version__} self-test ({frozen}, {platform.platform()})",
        file=out,
        flush=True,
    )
    started = time.perf_counter()
    failed = 0
    previous_ok = True
    with tempfile.TemporaryDirectory(prefix="adtn-selftest-") as work:
        ctx = Context(work=Path(work), device=device)
        steps = selftest_steps(window)
        for name, step, needs_previous in steps:
            if needs_previous and not previous_ok:
                print(f"SKIP  {name:<8}  (the step before failed)", file=out, flush=True)
                failed += 1
                continue
            step_started = time.perf_counter()
            try:
                detail = step(ctx)
            except Exception as exc:  # every failure is reported, none stops the test
                previous_ok = False
                failed += 1
                print(f"FAIL  {name:<8}  {type(exc).__name__}: {exc}", file=out, flush=True)
                if show_tracebacks:
                    traceback.print_exc(file=out)
                continue
            previous_ok = True
            elapsed = time.perf_counter() - step_started
            print(f"PASS  {name:<8}  {detail} ({elapsed:.1f} s)", file=out, flush=True)
    verdict = "PASS" if failed == 0 else f"FAIL ({failed} of {len(steps)} steps)"
    print(f"selftest: {verdict} in {time.perf_counter() - started:.1f} s", file=out, flush=True)
    return 0 if failed == 0 else 1
