"""Export a trained model to the requested formats, verify every file, then publish them.

All files are staged beside their destination, read back and run on one batch next to the
trained model; only when every output agrees within ``TOLERANCE`` are they renamed into place.
Any failure, a failed verification or Ctrl-C leaves no file behind (``StagedFiles``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.choices import EXPORT_FORMATS
from engine.export.atomic import StagedFiles, write_failure
from engine.export.bundle import load_bundle, write_bundle
from engine.export.dense import load_dense_into, write_dense
from engine.export.errors import ExportError
from engine.export.onnx_export import write_onnx
from engine.export.report import ExportedFile, ExportReport
from engine.export.verify import (
    LATENCY_RUNS,
    TOLERANCE,
    max_abs_diff,
    median_latency_ms,
    model_outputs,
    onnx_outputs,
)

FORMATS = EXPORT_FORMATS  # engine.choices
SUFFIXES = {"adtn": ".adtn", "dense": ".safetensors", "onnx": ".onnx"}
VERIFY_BATCH = 32

# Called with (fraction done in [0, 1], what is happening now).
ProgressCallback = Callable[[float, str], None]


def output_paths(out: str | Path, formats: Sequence[str], stem: str) -> dict[str, Path]:
    """Where each format goes. ``out`` is a folder (existing, or a path without suffix): files
    ``<stem>.adtn``, ``<stem>.safetensors``, ``<stem>.onnx`` in it. A path with a suffix is the
    file itself for one format, and the common stem for several."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        return {fmt: out / f"{stem}{SUFFIXES[fmt]}" for fmt in formats}
    if len(formats) == 1:
        return {formats[0]: out}
    return {fmt: out.with_suffix(SUFFIXES[fmt]) for fmt in formats}


def export_run(
    run_dir: str | Path,
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    checkpoint: str = "best",
    progress: ProgressCallback | None = None,
) -> ExportReport:
    """Export the model of run folder ``run_dir`` at its ``best`` or ``last`` checkpoint.

    Raises ``ConfigError`` / ``CheckpointError`` for an unreadable run, ``ExportError`` when
    export or verification fails (nothing is written then).
    """
    from engine.config import RunConfig
    from engine.runs import RunPaths, build_run_model

    run_dir = Path(run_dir)
    config = RunConfig.load(RunPaths(run_dir).config)
    model = build_run_model(run_dir, checkpoint=checkpoint)
    report = export_model(model, config, out, formats, progress)
    report.source, report.checkpoint = str(run_dir), checkpoint
    return report


def export_model(
    model: nn.Module,
    config: Any,
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    progress: ProgressCallback | None = None,
) -> ExportReport:
    """Export compressed zoo ``model`` (on the CPU) trained with run configuration ``config``,
    verified. ``progress`` may raise to cancel: as on any failure, nothing is left behind.

    Raises:
        ValueError: an unknown format, or a model not on the CPU.
        ExportError: export or verification failed; nothing was written.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be among {', '.join(FORMATS)} (got {list(formats)})")
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        raise ValueError("export needs the model on the CPU (model.cpu())")
    notify = progress or (lambda fraction, message: None)
    steps = 3 + 2 * len(formats)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        notify(done / steps, message)
        done += 1

    from engine.compression import materialize

    model = model.eval()
    step("preparing the verification batch")
    batch, batch_source = verification_batch(config)
    reference = model_outputs(model, batch)
    dense_model = materialize(model).eval()
    stem = config.run_name
    paths = output_paths(out, formats, stem)

    report = ExportReport(
        source="",
        checkpoint=None,
        model=config.model,
        dataset=config.dataset,
        params_compressed=sum(p.numel() for p in model.parameters()),
        params_dense=sum(p.numel() for p in dense_model.parameters()),
        dense_float32_bytes=4 * sum(t.numel() for t in dense_model.state_dict().values()),
        batch_shape=tuple(batch.shape),
        batch_source=batch_source,
        tolerance=TOLERANCE,
        latency_runs=LATENCY_RUNS,
    )
    destination = Path(out)  # the file being written when a write fails
    try:
        _write_verified(model, dense_model, batch, reference, config, paths, report, step)
    except Exception as exc:
        failure = write_failure(exc, destination)
        if failure is None:
            raise
        raise failure from exc  # a full disk is one line, not a writer's traceback
    notify(1.0, "done")
    return report


def _write_verified(
    model: nn.Module,
    dense_model: nn.Module,
    batch: torch.Tensor,
    reference: np.ndarray,
    config: Any,
    paths: dict[str, Path],
    report: ExportReport,
    step: Callable[[str], None],
) -> None:
    """Stage, write and verify every file, then publish them all; on any failure none."""
    with StagedFiles() as staged:
        staged_paths = {fmt: staged.path_for(path) for fmt, path in paths.items()}
        diffs = {}
        for fmt, path in staged_paths.items():
            step(f"writing {paths[fmt].name}")
            _write(fmt, model, dense_model, batch, path, config)
            step(f"verifying {paths[fmt].name}")
            diffs[fmt] = _difference(fmt, path, batch, reference, config)
        step("measuring dense CPU latency")
        report.dense_latency_ms = median_latency_ms(dense_model, batch)
        report.files = [
            ExportedFile(fmt, str(paths[fmt]), path.stat().st_size, diffs[fmt])
            for fmt, path in staged_paths.items()
        ]
        if not report.passed:
            failures = ", ".join(
                f"{f.format} {f.max_abs_diff:.3g}"
                for f in report.files
                if f.max_abs_diff > TOLERANCE
            )
            raise ExportError(
                f"verification failed: outputs differ from the trained model by "
                f"more than {TOLERANCE:g} ({failures}); nothing was written"
            )
        staged.commit()


def verification_batch(config: Any) -> tuple[torch.Tensor, str]:
    """A test-set batch of ``config``'s data set when it is on disk, else random input."""
    from engine.data import BatchIterator, DataUnavailableError, config_dataset_info, load_data

    info = config_dataset_info(config)
    try:
        # Never download during an export: a missing data set just means random input.
        loaded = load_data(config.replace(download=False, limit_train=1, limit_test=VERIFY_BATCH))
        images, _ = next(
            BatchIterator(loaded.test, loaded.info, VERIFY_BATCH, torch.device("cpu")).epoch(0)
        )
    except (DataUnavailableError, OSError, ValueError):  # ValueError: a damaged image folder
        images = None
    if images is not None and len(images) >= 2:  # ONNX needs two samples for a dynamic batch
        return images, "test set"
    generator = torch.Generator().manual_seed(0)
    shape = (VERIFY_BATCH, info.in_channels, info.image_size, info.image_size)
    return torch.randn(shape, generator=generator), "random"


def _write(
    fmt: str, model: nn.Module, dense_model: nn.Module, batch: torch.Tensor, path: Path, config: Any
) -> None:
    if fmt == "adtn":
        write_bundle(model, path, config)
    elif fmt == "dense":
        write_dense(model, dense_model, path, config)
    else:
        write_onnx(dense_model, batch, path)


def _difference(
    fmt: str, path: Path, batch: torch.Tensor, reference: np.ndarray, config: Any
) -> float:
    """Largest output difference between the written file, read back, and the trained model."""
    if fmt == "adtn":
        # a user's model is rebuilt from its factory, never from the bundle's word
        own = plain_model(config) if config is not None and _user_model(config) else None
        return max_abs_diff(reference, model_outputs(load_bundle(path, model=own), batch))
    if fmt == "dense":
        return max_abs_diff(
            reference, model_outputs(load_dense_into(plain_model(config), path), batch)
        )
    # A second, smaller batch proves the batch axis is dynamic.
    return max(
        max_abs_diff(reference, onnx_outputs(path, batch)),
        max_abs_diff(reference[:3], onnx_outputs(path, batch[:3])),
    )


def plain_model(config: Any) -> nn.Module:
    """The uncompressed zoo model ``config`` describes, freshly initialised."""
    from engine.data import config_dataset_info
    from engine.models import build_model

    info = config_dataset_info(config)
    return build_model(config.model, info.in_channels, info.image_size, info.num_classes)


def _user_model(config: Any) -> bool:
    from engine.model_sources import parse_model_spec

    return parse_model_spec(config.model).kind == "file"
