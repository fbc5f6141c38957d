"""Wizard page 2: the layer table with live totals."""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QStyledItemDelegate,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ui.formatting import format_count, format_ratio
from ui.wizard.layer_plan_model import (
    ACTIVATION,
    ACTIVATIONS,
    DEPTH,
    ENCODE,
    MAX_DEPTH,
    NAME,
    LayerPlanModel,
)


class _DepthDelegate(QStyledItemDelegate):
    def createEditor(self, parent, option, index):
        editor = QSpinBox(parent)
        editor.setRange(1, MAX_DEPTH)
        editor.setFrame(False)
        return editor

    def setEditorData(self, editor, index):
        editor.setValue(int(index.data(Qt.ItemDataRole.EditRole) or 1))

    def setModelData(self, editor, model, index):
        editor.interpretText()
        model.setData(index, editor.value())


class _ActivationDelegate(QStyledItemDelegate):
    def createEditor(self, parent, option, index):
        editor = QComboBox(parent)
        editor.addItems(ACTIVATIONS)
        # Commit as soon as a choice is made, not only when the editor loses focus.
        editor.activated.connect(lambda _=0, e=editor: self.commitData.emit(e))
        return editor

    def setEditorData(self, editor, index):
        editor.setCurrentText(str(index.data(Qt.ItemDataRole.EditRole) or "relu"))

    def setModelData(self, editor, model, index):
        model.setData(index, editor.currentText())


class LayersPage(QWidget):
    """Choose the layers to encode; the totals follow every edit."""

    title = "Layers"
    subtitle = ("Tick the layers to encode as ADTNs and choose their depth. "
                "Double-click depth or activation to change them.")

    def __init__(self, model: LayerPlanModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.table = QTableView()
        self.table.setModel(model)
        self.table.setItemDelegateForColumn(DEPTH, _DepthDelegate(self.table))
        self.table.setItemDelegateForColumn(ACTIVATION, _ActivationDelegate(self.table))
        self.table.setEditTriggers(QTableView.EditTrigger.DoubleClicked
                                   | QTableView.EditTrigger.SelectedClicked
                                   | QTableView.EditTrigger.EditKeyPressed)
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(60)

        self.status = QLabel("")  # "building the network…" or an error
        self.status.setWordWrap(True)
        self.before_label = QLabel()
        self.after_label = QLabel()
        self.ratio_label = QLabel()
        for label in (self.before_label, self.after_label, self.ratio_label):
            label.setObjectName("totalLabel")

        encode_all = QPushButton("Encode all")
        encode_none = QPushButton("Encode none")
        encode_all.clicked.connect(lambda: self._encode_every_layer(True))
        encode_none.clicked.connect(lambda: self._encode_every_layer(False))

        totals = QHBoxLayout()
        totals.addWidget(self.before_label)
        totals.addSpacing(24)
        totals.addWidget(self.after_label)
        totals.addSpacing(24)
        totals.addWidget(self.ratio_label)
        totals.addStretch(1)
        totals.addWidget(encode_all)
        totals.addWidget(encode_none)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)
        layout.addLayout(totals)

        model.totals_changed.connect(self._show_totals)
        self._show_totals()

    def set_status(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(bool(text))

    @Slot()
    def _show_totals(self) -> None:
        report = self.model.report
        before = report.model_params_before if report is not None else None
        after = report.model_params_after if report is not None else None
        self.before_label.setText(f"Parameters before: <b>{format_count(before)}</b>")
        self.after_label.setText(f"after: <b>{format_count(after)}</b>")
        ratio = report.ratio if report is not None else None
        self.ratio_label.setText(f"overall: <b>{format_ratio(ratio)}</b> smaller")

    def _encode_every_layer(self, encode: bool) -> None:
        for row in range(self.model.rowCount()):
            index = self.model.index(row, ENCODE)
            if self.model.flags(index) & Qt.ItemFlag.ItemIsUserCheckable:
                self.model.setData(index, (Qt.CheckState.Checked if encode
                                           else Qt.CheckState.Unchecked),
                                   Qt.ItemDataRole.CheckStateRole)
