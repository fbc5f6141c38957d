"""Per-layer view of the encoded layers of the running model: parameters and gradient norm."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from ui.formatting import format_count, format_ratio

# "dense weight": the entries of the dense weight the encoding replaces (the engine's
# LayerReport.dense_params), which the ratio divides; the bias stays dense and is not in it.
COLUMNS = ("layer", "encoding", "parameters", "dense weight", "ratio", "grad norm")

RIGHT_ALIGNED = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


class LayerActivityTable(QTableWidget):
    """One row per encoded layer; the gradient-norm column follows the trainer's reports."""

    def __init__(self, parent=None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().hide()
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
        self.setAlternatingRowColors(True)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # names stay whole
        self._rows: dict[str, int] = {}

    def set_layers(self, rows: list) -> None:
        """``rows``: the encoded layers, as the ``layers`` of CompressionReport.to_dict()."""
        self.setRowCount(len(rows))
        self._rows = {}
        for index, row in enumerate(rows):
            self._rows[row["name"]] = index
            encoding = f"{row.get('encoding', 'adtn')}: {row.get('detail', '')}".rstrip(": ")
            values = (
                row["name"],
                encoding,
                format_count(row["encoded_params"]),
                format_count(row["dense_params"]),
                format_ratio(row["ratio"]),
                "–",
            )
            for column, text in enumerate(values):
                item = QTableWidgetItem(text)
                if column:
                    item.setTextAlignment(RIGHT_ALIGNED)
                self.setItem(index, column, item)

    def set_grad_norms(self, norms: dict[str, float]) -> None:
        for name, norm in norms.items():
            row = self._rows.get(name)
            if row is not None:
                self.item(row, len(COLUMNS) - 1).setText(f"{norm:.3g}")

    def grad_norm_text(self, name: str) -> str:
        return self.item(self._rows[name], len(COLUMNS) - 1).text()
