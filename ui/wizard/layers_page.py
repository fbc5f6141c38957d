"""Wizard page 2: the layer table with live totals."""

from __future__ import annotations

from fnmatch import fnmatchcase

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStyledItemDelegate,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from engine.choices import ENCODING_SHORT_TITLES  # torch-free: the engine's own titles
from ui.formatting import format_count, format_ratio
from ui.wizard.layer_plan_model import (
    ACTIVATION,
    ACTIVATIONS,
    DEPTH,
    ENCODE,
    ENCODING,
    ENCODINGS,
    MAX_DEPTH,
    NAME,
    LayerPlanModel,
)

DEPTH_EDITOR_MIN_WIDTH = 84  # room for three digits beside the arrows


class DepthSpinBox(QSpinBox):
    """A depth editor that accepts any number typed and says when it is above the engine's
    limit, instead of silently dropping the digits that would exceed it."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setRange(1, MAX_DEPTH)
        self.typed_too_large = 0  # the number typed, when above the limit
        self.setToolTip(f"ADTN depth, 1 to {MAX_DEPTH} (the engine's limit)")

    def validate(self, text: str, pos: int):
        digits = text.strip()
        if digits.isdigit() and int(digits) > self.maximum():
            return QValidator.State.Intermediate, text, pos  # kept; fixed up on commit
        return super().validate(text, pos)

    def fixup(self, text: str) -> str:
        digits = text.strip()
        if digits.isdigit() and int(digits) > self.maximum():
            self.typed_too_large = int(digits)
            return str(self.maximum())
        return super().fixup(text)

    def committed_value(self) -> int:
        """The value to store: what was typed, capped at the limit (noted in
        ``typed_too_large``)."""
        digits = self.lineEdit().text().strip()
        if digits.isdigit() and int(digits) > self.maximum():
            self.typed_too_large = int(digits)
            return self.maximum()
        self.interpretText()
        return self.value()


class _DepthDelegate(QStyledItemDelegate):
    capped = Signal(int)  # a typed depth above the limit (it was set to the limit)

    def createEditor(self, parent, option, index):
        editor = DepthSpinBox(parent)
        editor.setFrame(False)
        editor.setMinimumWidth(DEPTH_EDITOR_MIN_WIDTH)
        return editor

    def updateEditorGeometry(self, editor, option, index):
        # wider than the cell when needed: the arrows must not cover the digits
        rect = option.rect
        rect.setWidth(max(rect.width(), editor.minimumWidth()))
        editor.setGeometry(rect)

    def setEditorData(self, editor, index):
        editor.setValue(int(index.data(Qt.ItemDataRole.EditRole) or 1))

    def setModelData(self, editor, model, index):
        value = editor.committed_value()
        model.setData(index, value)
        if editor.typed_too_large:
            self.capped.emit(editor.typed_too_large)
            editor.typed_too_large = 0


class _ChoiceDelegate(QStyledItemDelegate):
    """A combo box of the engine's names for one column (activation, encoding)."""

    def __init__(self, choices, parent=None) -> None:
        super().__init__(parent)
        self._choices = tuple(choices)

    def createEditor(self, parent, option, index):
        editor = QComboBox(parent)
        editor.addItems(self._choices)
        # Commit as soon as a choice is made, not only when the editor loses focus.
        editor.activated.connect(lambda _=0, e=editor: self.commitData.emit(e))
        return editor

    def setEditorData(self, editor, index):
        editor.setCurrentText(str(index.data(Qt.ItemDataRole.EditRole) or self._choices[0]))

    def setModelData(self, editor, model, index):
        model.setData(index, editor.currentText())


class LayersPage(QWidget):
    """Choose the layers to encode; the totals follow every edit."""

    title = "Layers"
    subtitle = (
        "Tick the layers to encode and choose how: the ADTN of a depth, or a tensor "
        "train, low-rank, Tucker or CP layer with that ADTN's parameter count. "
        "Double-click encoding, depth or activation to change them. For large "
        "networks, filter by name (e.g. layer4.*) and tick what is shown."
    )

    def __init__(self, model: LayerPlanModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.table = QTableView()
        self.table.setModel(model)
        self.depth_delegate = _DepthDelegate(self.table)
        self.depth_delegate.capped.connect(self._depth_capped)
        self.table.setItemDelegateForColumn(DEPTH, self.depth_delegate)
        self.table.setItemDelegateForColumn(ACTIVATION, _ChoiceDelegate(ACTIVATIONS, self.table))
        self.table.setItemDelegateForColumn(ENCODING, _ChoiceDelegate(ENCODINGS, self.table))
        self.table.setEditTriggers(
            QTableView.EditTrigger.DoubleClicked
            | QTableView.EditTrigger.SelectedClicked
            | QTableView.EditTrigger.EditKeyPressed
        )
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(60)
        # the depth column is as wide as its editor, so the arrows never cover the digits
        header.setSectionResizeMode(DEPTH, QHeaderView.ResizeMode.Fixed)
        self.table.setColumnWidth(DEPTH, DEPTH_EDITOR_MIN_WIDTH)

        # Networks with hundreds of layers: a name filter, the parent modules as groups,
        # and ticking by group, kind and size (the engine's layer_select picks the names).
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter layers: name or pattern, e.g. layer4.* or fc")
        self.filter_edit.setClearButtonEnabled(True)
        self.group_combo = QComboBox()
        self.group_combo.setToolTip("Show the layers of one module (grouped by parent)")
        self.shown_label = QLabel("")
        tick_shown = QPushButton("Tick shown")
        untick_shown = QPushButton("Untick shown")
        tick_shown.setToolTip("Encode every layer the filter shows (a whole group at once)")
        all_linear = QPushButton("All linear layers")
        self.min_conv_params = QSpinBox()
        self.min_conv_params.setRange(0, 1_000_000_000)
        self.min_conv_params.setSingleStep(10_000)
        self.min_conv_params.setValue(100_000)
        self.min_conv_params.setGroupSeparatorShown(True)
        self.min_conv_params.setPrefix("≥ ")
        self.min_conv_params.setSuffix(" params")
        big_convs = QPushButton("Convolutions with at least")
        tick_shown.clicked.connect(lambda: self.tick_shown(True))
        untick_shown.clicked.connect(lambda: self.tick_shown(False))
        all_linear.clicked.connect(self.tick_all_linear)
        big_convs.clicked.connect(lambda: self.tick_convolutions(self.min_conv_params.value()))
        self.filter_edit.textChanged.connect(self._apply_filter)
        self.group_combo.activated.connect(self._on_group_chosen)
        model.modelReset.connect(self._on_layers_reset)

        filter_row = QHBoxLayout()
        filter_row.addWidget(self.filter_edit, 2)
        filter_row.addWidget(self.group_combo, 1)
        filter_row.addWidget(self.shown_label)
        filter_row.addWidget(tick_shown)
        filter_row.addWidget(untick_shown)
        select_row = QHBoxLayout()
        select_row.addWidget(all_linear)
        select_row.addWidget(big_convs)
        select_row.addWidget(self.min_conv_params)
        select_row.addStretch(1)

        self.status = QLabel("")  # "building the network…" or an error
        self.status.setWordWrap(True)
        # Which encoding measured best for this network (the engine reads the comparisons).
        self.recommendation = QLabel("")
        self.recommendation.setWordWrap(True)
        self.recommendation.setObjectName("hintLabel")
        self.recommendation.setVisible(False)
        # One click to follow it: the measured best encoding for every ticked layer.
        self.use_recommended_button = QPushButton("")
        self.use_recommended_button.setVisible(False)
        self.use_recommended_button.clicked.connect(self.use_recommended_encoding)
        self.recommended_encoding: str | None = None
        self.recommended_title = ""
        self.before_label = QLabel()
        self.after_label = QLabel()
        self.ratio_label = QLabel()
        for label in (self.before_label, self.after_label, self.ratio_label):
            label.setObjectName("totalLabel")

        self.encode_all_button = QPushButton("Encode all")
        self.encode_none_button = QPushButton("Encode none")
        self.encode_all_button.clicked.connect(lambda: self._encode_every_layer(True))
        self.encode_none_button.clicked.connect(lambda: self._encode_every_layer(False))

        totals = QHBoxLayout()
        totals.addWidget(self.before_label)
        totals.addSpacing(24)
        totals.addWidget(self.after_label)
        totals.addSpacing(24)
        totals.addWidget(self.ratio_label)
        totals.addStretch(1)
        totals.addWidget(self.encode_all_button)
        totals.addWidget(self.encode_none_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status)
        recommendation_row = QHBoxLayout()
        recommendation_row.addWidget(self.recommendation, 1)
        recommendation_row.addWidget(self.use_recommended_button)
        layout.addLayout(recommendation_row)
        layout.addLayout(filter_row)
        layout.addLayout(select_row)
        layout.addWidget(self.table, 1)
        layout.addLayout(totals)

        model.totals_changed.connect(self._show_totals)
        self._show_totals()

    # -- finding and ticking layers in large networks -----------------------------------

    def shown_layer_names(self) -> list[str]:
        return [
            name
            for row, name in enumerate(self.model.layer_names())
            if not self.table.isRowHidden(row)
        ]

    def tick_shown(self, encode: bool) -> int:
        return self.model.set_encoded_many(self.shown_layer_names(), encode)

    def tick_all_linear(self) -> int:
        from engine.layer_select import linear_layer_names

        return self.model.set_encoded_many(linear_layer_names(self.model.layer_infos()), True)

    def tick_convolutions(self, min_params: int) -> int:
        from engine.layer_select import conv_layer_names

        names = conv_layer_names(self.model.layer_infos(), min_params)
        return self.model.set_encoded_many(names, True)

    @Slot(str)
    def _apply_filter(self, text: str) -> None:
        patterns = [p.strip() for p in text.split(",") if p.strip()]
        names = self.model.layer_names()
        for row, name in enumerate(names):
            shown = not patterns or any(
                fnmatchcase(name, p) if any(c in p for c in "*?[") else p in name for p in patterns
            )
            self.table.setRowHidden(row, not shown)
        shown_count = len(self.shown_layer_names())
        self.shown_label.setText(
            f"{shown_count} of {len(names)} shown" if patterns else f"{len(names)} layers"
        )

    @Slot(int)
    def _on_group_chosen(self, index: int) -> None:
        group = self.group_combo.itemData(index)
        self.filter_edit.setText(f"{group}.*" if group else "")

    @Slot()
    def _on_layers_reset(self) -> None:
        # every module that holds two or more of the layers, outermost first
        # (layer4, layer4.0, layer4.1, ...), in model order
        counts: dict[str, int] = {}
        for name in self.model.layer_names():
            parts = name.split(".")
            for depth in range(1, len(parts)):
                module = ".".join(parts[:depth])
                counts[module] = counts.get(module, 0) + 1
        self.group_combo.clear()
        self.group_combo.addItem("all modules", "")
        for module, count in counts.items():
            if count >= 2:
                self.group_combo.addItem(f"{module} ({count} layers)", module)
        self._apply_filter(self.filter_edit.text())

    @Slot(int)
    def _depth_capped(self, typed: int) -> None:
        self.set_status(
            f"Depth {typed:,} is above the engine's limit of {MAX_DEPTH}; it was "
            f"set to {MAX_DEPTH}."
        )

    def set_recommendation(self, sentences: list[str], best: str | None = None) -> None:
        text = " ".join(sentences)
        self.recommended_encoding = best if text else None
        title = self.recommended_title = ENCODING_SHORT_TITLES.get(best or "", best or "")
        self.use_recommended_button.setText(f"Use {title} for the ticked layers")
        self.use_recommended_button.setToolTip(
            f"Encode every ticked layer as {title}, at the parameter count of the ADTN of its "
            "depth (the budget the measurement compared at)"
        )
        self.use_recommended_button.setVisible(self.recommended_encoding is not None)
        self.recommendation.setText(
            text
            + (
                " Compare encodings on the review page measures it for your settings."
                if text
                else ""
            )
        )
        self.recommendation.setVisible(bool(text))

    @Slot()
    def use_recommended_encoding(self) -> int:
        """Follow the recommendation: the measured best encoding for every ticked layer."""
        if self.recommended_encoding is None:
            return 0
        changed = self.model.set_encoding_of_encoded(self.recommended_encoding)
        title = self.recommended_title
        self.set_status(
            f"{changed} layer{'s' if changed != 1 else ''} now encoded as {title}."
            if changed
            else f"Every ticked layer is already encoded as {title}."
        )
        return changed

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
                self.model.setData(
                    index,
                    (Qt.CheckState.Checked if encode else Qt.CheckState.Unchecked),
                    Qt.ItemDataRole.CheckStateRole,
                )
