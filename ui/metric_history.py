"""The curves of one run as plain lists: filled live from engine events or read from a run
folder's ``metrics.csv``. No Qt here; plots and the Runs page read it."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

EPOCH_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "best_test_acc",
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
    phases: list[str] = field(default_factory=list)  # "pretrain" (dense) or "train", per epoch

    def __len__(self) -> int:
        return len(self.epochs["epoch"])

    def column(self, name: str) -> list[float]:
        return self.epochs[name]

    def add_epoch(self, values: dict[str, object]) -> None:
        for name in EPOCH_COLUMNS:
            self.epochs[name].append(_number(values.get(name)))
        self.phases.append(str(values.get("phase") or "train"))

    def add_batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        # Batches are counted from 1 within an epoch that is counted from 1, so the last
        # batch of epoch 1 sits at x = 1, under the first epoch point.
        self.batch_x.append(epoch - 1 + batch / max(batches, 1))
        self.batch_loss.append(_number(loss))

    def best_test_acc(self) -> float:
        """The engine's best test accuracy of the compressed model: dense pre-training epochs
        do not count. NaN until a compressed epoch has ended."""
        compressed = [i for i, phase in enumerate(self.phases) if phase != "pretrain"]
        engine_best = [self.epochs["best_test_acc"][i] for i in compressed
                       if not math.isnan(self.epochs["best_test_acc"][i])]
        if engine_best:
            return engine_best[-1]
        finite = [self.epochs["test_acc"][i] for i in compressed
                  if not math.isnan(self.epochs["test_acc"][i])]
        return max(finite) if finite else math.nan

    def to_csv(self, path: str | Path) -> None:
        """Write the epoch table (atomically: a failed write leaves no partial file; an
        unwritable place raises OSError)."""
        path = Path(path)
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow((EPOCH_COLUMNS[0], "phase", *EPOCH_COLUMNS[1:]))
        for index, row in enumerate(zip(*(self.epochs[name] for name in EPOCH_COLUMNS))):
            cells = ["" if math.isnan(v) else f"{v:g}" for v in row]
            writer.writerow((cells[0], self.phases[index], *cells[1:]))
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
