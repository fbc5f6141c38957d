"""The layer table's model: which layers are encoded, how, and what that saves.

No widgets here. The parameter counts come from the engine (``plan_compression``); this
model only keeps the user's choices and hands them to the engine after every edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal

from engine.choices import ACTIVATIONS, ENCODINGS  # torch-free: the engine's own names
from engine.layer_spec import LayerSpec
from engine.limits import MAX_DEPTH  # plain numbers, no torch: the engine's own limit
from ui.formatting import format_count, format_ratio

if TYPE_CHECKING:  # engine.compression loads PyTorch; the table only reads its results
    from engine.compression import CompressionReport, LayerInfo, LayerReport

ENCODE, NAME, KIND, SHAPE, DENSE, ENCODING, DEPTH, ACTIVATION, PARAMS, RATIO, OPTIONS = range(11)
HEADERS = (
    "encode",
    "layer",
    "kind",
    "weight shape",
    "dense weight",
    "encoding",
    "depth",
    "activation",
    "parameters",
    "ratio",
    "options",
)
# Other encodings than the ADTN take the ADTN's count at this depth as their budget, so the
# depth column sets every layer's size whatever its encoding.

Index = QModelIndex | QPersistentModelIndex
Planner = Callable[[list[LayerSpec]], "CompressionReport"]  # specs -> the engine's counts
SpecFactory = Callable[..., LayerSpec]
_DEFAULT_SPEC = LayerSpec("")  # a layer's options start at the engine's defaults


@dataclass
class LayerChoice:
    encode: bool = False
    depth: int = _DEFAULT_SPEC.depth
    activation: str = _DEFAULT_SPEC.activation
    layout: str = _DEFAULT_SPEC.layout
    encoding: str = _DEFAULT_SPEC.encoding
    # Options the table has no column for are kept as a preset or configuration set them.
    index_order: str = _DEFAULT_SPEC.index_order
    gate_init: str = _DEFAULT_SPEC.gate_init


class LayerPlanModel(QAbstractTableModel):
    """Rows are the model's Linear/Conv2d layers (the engine's LayerInfo list)."""

    totals_changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._layers: list[LayerInfo] = []
        self._choices: dict[str, LayerChoice] = {}
        self._planner: Planner | None = None
        self._spec_factory: SpecFactory | None = None
        self.report: CompressionReport | None = None
        self.problems: dict[str, str] = {}  # layer name -> why the engine cannot encode it

    # -- set-up ---------------------------------------------------------------------------

    def set_layers(
        self,
        layers: list[LayerInfo],
        planner: Planner,
        spec_factory: SpecFactory,
        specs: list[LayerSpec] | tuple = (),
    ) -> None:
        """``layers``: engine LayerInfo rows; ``planner(specs)`` returns a CompressionReport;
        ``spec_factory(name=, depth=, activation=, layout=)`` builds an engine LayerSpec;
        ``specs`` are the layers a configuration already encodes."""
        self.beginResetModel()
        self._layers = list(layers)
        self._planner = planner
        self._spec_factory = spec_factory
        self._choices = {info.name: LayerChoice() for info in self._layers}
        for spec in specs:
            if spec.name in self._choices:
                self._choices[spec.name] = LayerChoice(
                    True,
                    spec.depth,
                    spec.activation,
                    spec.layout,
                    spec.encoding,
                    spec.index_order,
                    spec.gate_init,
                )
        self._replan()
        self.endResetModel()
        self.totals_changed.emit()

    def clear(self) -> None:
        self.beginResetModel()
        self._layers, self._choices, self.report = [], {}, None
        self.endResetModel()
        self.totals_changed.emit()

    # -- what the wizard reads --------------------------------------------------------

    def specs(self) -> list[LayerSpec]:
        """The engine LayerSpecs of the layers to encode, in model order."""
        if self._spec_factory is None:
            return []
        return [
            self._spec_factory(
                name=info.name,
                depth=c.depth,
                activation=c.activation,
                layout=c.layout,
                encoding=c.encoding,
                index_order=c.index_order,
                gate_init=c.gate_init,
            )
            for info in self._layers
            if (c := self._choices[info.name]).encode
        ]

    def layer_names(self) -> list[str]:
        return [info.name for info in self._layers]

    def set_encoded(self, name: str, encode: bool) -> None:
        self.setData(
            self.index(self.layer_names().index(name), ENCODE),
            Qt.CheckState.Checked if encode else Qt.CheckState.Unchecked,
            Qt.ItemDataRole.CheckStateRole,
        )

    def set_depth(self, name: str, depth: int) -> None:
        self.setData(self.index(self.layer_names().index(name), DEPTH), depth)

    def set_encoding(self, name: str, encoding: str) -> None:
        self.setData(self.index(self.layer_names().index(name), ENCODING), encoding)

    def set_encoding_of_encoded(self, encoding: str) -> int:
        """Give every ticked layer ``encoding`` with one re-plan; return how many changed."""
        if encoding not in ENCODINGS:
            return 0
        changed = 0
        for info in self._layers:
            choice = self._choices[info.name]
            if choice.encode and choice.encoding != encoding:
                choice.encoding = encoding
                changed += 1
        if changed:
            self._replan_every_row()
        return changed

    def layer_infos(self) -> list[LayerInfo]:
        """The engine's LayerInfo rows, in model order."""
        return list(self._layers)

    def set_encoded_many(self, names, encode: bool) -> int:
        """Tick (or untick) every encodable layer of ``names`` with one re-plan (a network
        with hundreds of layers would otherwise re-plan per row); return how many changed."""
        wanted = set(names)
        changed = 0
        for info in self._layers:
            choice = self._choices[info.name]
            if info.name in wanted and info.encodable and choice.encode != encode:
                choice.encode = encode
                changed += 1
        if changed:
            self._replan_every_row()
        return changed

    def _replan_every_row(self) -> None:
        """One re-plan after changes to many rows, and one signal for all of them."""
        self._replan()
        self.dataChanged.emit(self.index(0, 0), self.index(len(self._layers) - 1, len(HEADERS) - 1))
        self.totals_changed.emit()

    # -- Qt model interface -------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._layers)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        info = self._layers[index.row()]
        if not info.encodable:
            return Qt.ItemFlag.ItemIsSelectable  # shown greyed out, with the reason as tip
        if index.column() == ENCODE:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        elif index.column() in (ENCODING, DEPTH, ACTIVATION) and self._choices[info.name].encode:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        info = self._layers[index.row()]
        choice = self._choices[info.name]
        column = index.column()
        if role == Qt.ItemDataRole.CheckStateRole and column == ENCODE:
            return Qt.CheckState.Checked if choice.encode else Qt.CheckState.Unchecked
        if role == Qt.ItemDataRole.ToolTipRole and not info.encodable:
            return info.reason or "This layer cannot be encoded."
        problem = self.problems.get(info.name) if choice.encode else None
        if role == Qt.ItemDataRole.ToolTipRole and problem:
            return problem
        if role == Qt.ItemDataRole.ToolTipRole and column == DEPTH and choice.encoding != "adtn":
            return "The ADTN depth whose parameter count this encoding matches"
        if role == Qt.ItemDataRole.ForegroundRole and problem and column == OPTIONS:
            from PySide6.QtGui import QColor

            return QColor("#b00020")
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (DENSE, DEPTH, PARAMS, RATIO):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.EditRole:
            return {
                DEPTH: choice.depth,
                ACTIVATION: choice.activation,
                ENCODING: choice.encoding,
            }.get(column)
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        row = self._report_row(info.name) if choice.encode else None
        if column == NAME:
            return info.name
        if column == KIND:
            return info.kind
        if column == SHAPE:
            return " × ".join(str(n) for n in info.weight_shape)
        if column == DENSE:  # the weight alone, as the monitor and the ratios count it
            return format_count(info.weight_params)
        if column == ENCODING:
            return choice.encoding if choice.encode else ""
        if column == DEPTH:
            return str(choice.depth) if choice.encode else ""
        if column == ACTIVATION:
            return choice.activation if choice.encode and choice.encoding == "adtn" else ""
        if column == PARAMS:
            return format_count(row.encoded_params) if row is not None else ""
        if column == RATIO:
            return format_ratio(row.ratio) if row is not None else ""
        if column == OPTIONS:
            if problem:
                return "does not fit: " + problem
            return row.detail if row is not None else ""
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid() or not (self.flags(index) & Qt.ItemFlag.ItemIsEnabled):
            return False
        choice = self._choices[self._layers[index.row()].name]
        column = index.column()
        if column == ENCODE and role == Qt.ItemDataRole.CheckStateRole:
            choice.encode = Qt.CheckState(value) == Qt.CheckState.Checked
        elif column == DEPTH and role == Qt.ItemDataRole.EditRole and choice.encode:
            choice.depth = max(1, min(int(value), MAX_DEPTH))
        elif column == ACTIVATION and role == Qt.ItemDataRole.EditRole and choice.encode:
            if value not in ACTIVATIONS:
                return False
            choice.activation = str(value)
        elif column == ENCODING and role == Qt.ItemDataRole.EditRole and choice.encode:
            if value not in ENCODINGS:
                return False
            choice.encoding = str(value)
        else:
            return False
        self._replan()
        self.dataChanged.emit(self.index(index.row(), 0), self.index(index.row(), len(HEADERS) - 1))
        self.totals_changed.emit()
        return True

    # -- the engine's plan ------------------------------------------------------------

    def _replan(self) -> None:
        """Ask the engine for the counts. A layer the engine cannot encode as chosen (a budget
        below an encoding's smallest size) is left out of the totals and its reason kept."""
        self.problems = {}
        if self._planner is None:
            self.report = None
            return
        specs = self.specs()
        try:
            self.report = self._planner(specs)
            return
        except ValueError:
            pass
        usable = []
        for spec in specs:
            try:
                self._planner([spec])
                usable.append(spec)
            except ValueError as exc:
                reason = str(exc).removeprefix("cannot compress: ")
                self.problems[spec.name] = reason.removeprefix(
                    f"'{spec.name}' cannot be encoded as {spec.encoding}: "
                )
        self.report = self._planner(usable)

    def _report_row(self, name: str) -> LayerReport | None:
        if self.report is None:
            return None
        for row in self.report.rows:
            if row.name == name:
                return row
        return None
