"""Run folders: their layout, the files written into them, listing them, and rebuilding the
trained model of one.

A run folder holds ``config.toml`` (the resolved configuration), ``metrics.csv`` (one row per
epoch), ``summary.json`` and ``checkpoints/{last,best}.{safetensors,json}``; every file is
written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from engine.checkpoint import CheckpointError, load_checkpoint
from engine.compression import CompressionReport, compress, plan_compression
from engine.config import ConfigError, RunConfig
from engine.data import dataset_info
from engine.models import build_model
from engine.paths import atomic_write_text, default_runs_root

CHECKPOINT_KINDS = ("last", "best")
METRIC_COLUMNS = (
    "epoch", "phase", "train_loss", "train_acc", "test_loss", "test_acc", "best_test_acc",
    "params_total", "dense_params_total", "seconds", "lr",
)


@dataclass(frozen=True)
class RunPaths:
    """The files of the run folder ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, kind: str) -> Path:
        """``checkpoints/<kind>.safetensors`` for kind "last" or "best"."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINT_KINDS)} "
                             f"(got {kind!r})")
        return self.checkpoints / f"{kind}.safetensors"


def new_run_dir(config: RunConfig, root: str | Path | None = None) -> Path:
    """Create and return a fresh folder ``<root>/<date>-<time>-<run name>`` (root defaults to
    ``engine.paths.default_runs_root()``)."""
    root = Path(root) if root else default_runs_root()
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + _safe_name(config.run_name)
    for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
        candidate = root / (stem + suffix)
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run folder under {root}")


def write_metrics(path: str | Path, history: Iterable[dict[str, Any]]) -> None:
    """Write the per-epoch ``history`` rows as CSV with ``METRIC_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def read_summary(path: str | Path) -> dict[str, Any] | None:
    """The summary, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- listing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run folder as the history view lists it."""

    path: str
    name: str
    model: str
    dataset: str
    started_at: str  # ISO 8601, local time
    status: str  # "running", "interrupted" (killed), "finished", "stopped", "failed", "unreadable"
    epochs_completed: int
    epochs: int
    params_total: int
    dense_params_total: int
    compression_ratio: float
    best_test_acc: float
    test_acc: float


def list_runs(root: str | Path | None = None) -> list[RunRecord]:
    """Every run folder (one with a ``config.toml``) directly under ``root``, newest first.
    ``root`` defaults to ``engine.paths.default_runs_root()``."""
    root = Path(root) if root else default_runs_root()
    if not root.is_dir():
        return []
    records = [_run_record(folder) for folder in root.iterdir()
               if (folder / "config.toml").is_file()]
    return sorted(records, key=lambda record: record.started_at, reverse=True)


def _run_record(folder: Path) -> RunRecord:
    paths = RunPaths(folder)
    summary = read_summary(paths.summary) or {}
    try:
        config = RunConfig.load(paths.config)
        model, dataset, name = config.model, config.dataset, config.run_name
    except ConfigError:
        model = dataset = "?"
        name, summary = folder.name, {**summary, "status": "unreadable"}
    started = summary.get("started_at") or time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.localtime(paths.config.stat().st_mtime))
    return RunRecord(
        path=str(folder), name=name, model=model, dataset=dataset, started_at=started,
        status=_live_status(summary),
        epochs_completed=int(summary.get("epochs_completed", 0)),
        epochs=int(summary.get("epochs", 0)),
        params_total=int(summary.get("params_total", 0)),
        dense_params_total=int(summary.get("dense_params_total", 0)),
        compression_ratio=float(summary.get("compression_ratio", 0.0)),
        best_test_acc=float(summary.get("best_test_acc", 0.0)),
        test_acc=float(summary.get("test_acc", 0.0)),
    )


def _live_status(summary: dict) -> str:
    """The summary's status, except that a "running" run whose process on this machine has
    ended was killed: it is "interrupted" (and can be resumed)."""
    status = summary.get("status", "unknown")
    pid = int(summary.get("pid") or 0)
    if status != "running" or pid <= 0 or summary.get("host") != socket.gethostname():
        return status
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return "interrupted"
    except OSError:  # exists but belongs to someone else, or cannot be asked
        pass
    return status


# -- models of a configuration or a run -------------------------------------------------


def build_config_model(config: RunConfig, compressed: bool = True
                       ) -> tuple[nn.Module, CompressionReport]:
    """The freshly initialised model of ``config``; with ``compressed`` its chosen layers are
    ADTNs (fresh, not fitted). Also returns the compression report (planned when not
    compressed). Initialisation is seeded by ``config.seed``."""
    import torch

    info = dataset_info(config.dataset)
    torch.manual_seed(config.seed)
    model = build_model(config.model, info.in_channels, info.image_size, info.num_classes)
    if compressed and config.layers:
        report = compress(model, config.layers)
    else:
        report = plan_compression(model, config.layers)
    return model, report


def build_run_model(run_dir: str | Path, checkpoint: str = "best") -> nn.Module:
    """The trained model of run folder ``run_dir`` with the weights of its ``"best"`` or
    ``"last"`` checkpoint, compressed as its ``config.toml`` says, in eval mode on the CPU.

    Raises ``CheckpointError`` when that checkpoint does not exist (a run stopped before its
    first epoch with the compressed model ended has no "best") or cannot be read, and
    ``ConfigError`` when the run's configuration is unreadable.
    """
    paths = RunPaths(Path(run_dir))
    config = RunConfig.load(paths.config)
    loaded = load_checkpoint(paths.checkpoint(checkpoint))
    model, _ = build_config_model(config, compressed=bool(loaded.state.get("compressed")))
    try:
        model.load_state_dict(loaded.model_state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{paths.checkpoint(checkpoint)} does not match the model of {paths.config} ({exc})"
        ) from exc
    return model.eval()


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return cleaned or "run"
