"""The runs table's model: one row per run folder, as the engine lists them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from engine.choices import RunStatus
from ui.formatting import format_count, format_percent, format_ratio

if TYPE_CHECKING:  # engine.runs loads PyTorch; the table only shows what it listed
    from engine.runs import RunRecord

HEADERS = ("run", "model", "data set", "date", "params", "ratio", "best test acc", "status")
Index = QModelIndex | QPersistentModelIndex


def resumable(run: RunRecord) -> bool:
    """Whether a run (an engine RunRecord) can continue from its last checkpoint."""
    return run.status in (RunStatus.STOPPED, RunStatus.FAILED, RunStatus.INTERRUPTED) and run.epochs_completed < run.epochs


def _date(iso: str) -> str:
    return iso.replace("T", " ")[:16]


class RunTableModel(QAbstractTableModel):
    """The runs table's model: one row per run folder (the engine's RunRecord)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list[RunRecord] = []

    def set_rows(self, rows: list) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        run = self.rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            done = run.epochs_completed > 0
            # A run that failed before building its model, or has not written its counts
            # yet, has no ratio: "–", never a made-up 1.0×.
            counted = run.params_total > 0 and run.dense_params_total > 0
            return (run.name, run.model, run.dataset, _date(run.started_at),
                    format_count(run.params_total) if counted else "–",
                    format_ratio(run.compression_ratio) if counted else "–",
                    format_percent(run.best_test_acc) if done else "–",
                    f"{run.status} ({run.epochs_completed}/{run.epochs})")[column]
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{run.name}, started {_date(run.started_at)}\n{run.path}"
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (4, 5, 6):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None
