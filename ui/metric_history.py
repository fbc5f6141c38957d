"""The curves of one run as plain lists: filled live from engine events or read from a run
folder's ``metrics.csv``. No Qt here; plots and the Runs page read it."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.choices import METRIC_COLUMNS, PHASE_TRAIN  # torch-free: the engine's names
from engine.metrics import best_test_accuracy

# The engine's numeric columns (every column of metrics.csv but the phase, kept apart).
EPOCH_COLUMNS = tuple(name for name in METRIC_COLUMNS if name != "phase")


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


@dataclass
class MetricHistory:
    """Epoch-level metrics (one entry per column and epoch) plus the running batch loss."""

    epochs: dict[str, list[float]] = field(
        default_factory=lambda: {name: [] for name in EPOCH_COLUMNS}
    )
    batch_x: list[float] = field(default_factory=list)  # fractional epoch, 1-based
    batch_loss: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)  # "pretrain" (dense) or "train", per epoch

    def __len__(self) -> int:
        return len(self.epochs["epoch"])

    def column(self, name: str) -> list[float]:
        return self.epochs[name]

    def add_epoch(self, values: dict[str, object]) -> None:
        for name in EPOCH_COLUMNS:
            self.epochs[name].append(_number(values.get(name)))
        self.phases.append(str(values.get("phase") or PHASE_TRAIN))

    def add_batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        # Batches are counted from 1 within an epoch that is counted from 1, so the last
        # batch of epoch 1 sits at x = 1, under the first epoch point.
        self.batch_x.append(epoch - 1 + batch / max(batches, 1))
        self.batch_loss.append(_number(loss))

    def rows(self) -> list[dict[str, object]]:
        """The epoch table as rows keyed like ``metrics.csv`` (phase included)."""
        return [
            {"phase": phase, **{name: self.epochs[name][index] for name in EPOCH_COLUMNS}}
            for index, phase in enumerate(self.phases)
        ]

    def best_test_acc(self) -> float:
        """The run's best test accuracy by the engine's rule (``engine.metrics``): that of the
        compressed model, dense pre-training epochs left out. NaN until such an epoch ended."""
        return best_test_accuracy(self.rows())

    def to_csv(self, path: str | Path) -> None:
        """Write the epoch table (atomically: a failed write leaves no partial file; an
        unwritable place raises OSError)."""
        path = Path(path)
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(METRIC_COLUMNS)
        for row in self.rows():
            writer.writerow(
                [
                    ""
                    if isinstance(value, float) and math.isnan(value)
                    else value
                    if isinstance(value, str)
                    else f"{value:g}"
                    for value in (row[name] for name in METRIC_COLUMNS)
                ]
            )
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            temporary.write_text(buffer.getvalue(), encoding="utf-8", newline="")
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    @classmethod
    def from_csv(cls, path: str | Path) -> MetricHistory:
        """Read a run folder's ``metrics.csv``; columns it lacks stay NaN."""
        history = cls()
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                history.add_epoch(row)
        return history
