"""The curves of one run as plain lists: filled live from engine events or read from a run
folder's ``metrics.csv``. No Qt here; plots and the history view read it."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

EPOCH_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "params_total",
    "dense_params_total",
    "seconds",
)


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

    def __len__(self) -> int:
        return len(self.epochs["epoch"])

    def column(self, name: str) -> list[float]:
        return self.epochs[name]

    def add_epoch(self, values: dict[str, object]) -> None:
        for name in EPOCH_COLUMNS:
            self.epochs[name].append(_number(values.get(name)))

    def add_batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        # Batches are counted from 1 within an epoch that is counted from 1, so the last
        # batch of epoch 1 sits at x = 1, under the first epoch point.
        self.batch_x.append(epoch - 1 + batch / max(batches, 1))
        self.batch_loss.append(_number(loss))

    def best_test_acc(self) -> float:
        finite = [a for a in self.epochs["test_acc"] if not math.isnan(a)]
        return max(finite) if finite else math.nan

    def to_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(EPOCH_COLUMNS)
            for row in zip(*(self.epochs[name] for name in EPOCH_COLUMNS)):
                writer.writerow(["" if math.isnan(v) else f"{v:g}" for v in row])

    @classmethod
    def from_csv(cls, path: str | Path) -> MetricHistory:
        """Read a run folder's ``metrics.csv``; columns it lacks stay NaN."""
        history = cls()
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                history.add_epoch(row)
        return history
