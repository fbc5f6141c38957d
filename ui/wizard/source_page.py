"""Wizard page 1: preset, network, data set and where the data lives (download if missing)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ui.engine_catalog import EngineCatalog
from ui.settings import last_folder, remember_folder

CUSTOM_PRESET = ""
FORM_WIDTH = 860  # wizard forms stop growing here


def place_form(page: QWidget, form) -> None:
    """Lay ``form`` out at the top of ``page``, no wider than FORM_WIDTH: long fields read
    badly across a wide window."""
    form_box = QWidget()
    form_box.setLayout(form)
    form_box.setMaximumWidth(FORM_WIDTH)
    layout = QVBoxLayout(page)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(form_box)
    layout.addStretch(1)


class SourcePage(QWidget):
    """Emits ``preset_chosen`` when the user picks a preset; the wizard loads it."""

    title = "Network and data"
    subtitle = "Start from a preset of the paper's settings, or pick a network and a data set."

    preset_chosen = Signal(str)
    data_root_changed = Signal()
    download_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.preset_combo = QComboBox()
        self.preset_description = QLabel("")
        self.preset_description.setObjectName("hintLabel")
        self.preset_description.setWordWrap(True)
        self.model_combo = QComboBox()
        self.dataset_combo = QComboBox()
        self.data_root_edit = QLineEdit()
        self.data_root_edit.setPlaceholderText("default data folder")
        self.browse_button = QPushButton("Browse…")
        self.data_status = QLabel("")
        self.data_status.setWordWrap(True)
        self.download_button = QPushButton("Download")
        self.download_progress = QProgressBar()
        self.download_progress.setVisible(False)

        root_row = QHBoxLayout()
        root_row.addWidget(self.data_root_edit, 1)
        root_row.addWidget(self.browse_button)
        status_row = QHBoxLayout()
        status_row.addWidget(self.data_status, 1)
        status_row.addWidget(self.download_button)

        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        form.addRow("Preset", self.preset_combo)
        form.addRow("", self.preset_description)
        form.addRow("Network", self.model_combo)
        form.addRow("Data set", self.dataset_combo)
        form.addRow("Data folder", root_row)
        form.addRow("", status_row)
        form.addRow("", self.download_progress)

        place_form(self, form)

        self._descriptions: dict[str, str] = {}
        self.preset_combo.activated.connect(self._on_preset_activated)
        self.browse_button.clicked.connect(self._browse)
        self.data_root_edit.editingFinished.connect(self.data_root_changed)
        self.dataset_combo.currentIndexChanged.connect(lambda _i: self.data_root_changed.emit())
        self.download_button.clicked.connect(self.download_requested)
        self.download_button.setVisible(False)

    def set_catalog(self, catalog: EngineCatalog, model_titles: dict[str, str]) -> None:
        self.preset_combo.clear()
        self.preset_combo.addItem("(custom)", CUSTOM_PRESET)
        for name, description in catalog.presets:
            self.preset_combo.addItem(name, name)
            self._descriptions[name] = description
        self.model_combo.clear()
        for name in catalog.models:
            self.model_combo.addItem(model_titles.get(name, name), name)
        self.dataset_combo.clear()
        for name in catalog.datasets:
            self.dataset_combo.addItem(name, name)

    # -- config <-> widgets -----------------------------------------------------------

    def show_preset(self, name: str) -> None:
        index = self.preset_combo.findData(name)
        self.preset_combo.setCurrentIndex(max(index, 0))
        self.preset_description.setText(self._descriptions.get(name, ""))

    def load(self, config) -> None:
        self.model_combo.setCurrentIndex(max(self.model_combo.findData(config.model), 0))
        self.dataset_combo.setCurrentIndex(max(self.dataset_combo.findData(config.dataset), 0))
        self.data_root_edit.setText(config.data_root or last_folder("data_root", ""))

    def apply(self, config):
        return config.replace(model=self.model_combo.currentData(),
                              dataset=self.dataset_combo.currentData(),
                              data_root=self.data_root_edit.text().strip())

    # -- data availability (the wizard checks and downloads; this page shows) ----------

    def show_data_status(self, available: bool, text: str) -> None:
        self.data_status.setText(text)
        self.data_status.setProperty("state", "ok" if available else "missing")
        self.data_status.style().unpolish(self.data_status)
        self.data_status.style().polish(self.data_status)
        self.download_button.setVisible(not available)

    def show_download_progress(self, fraction: float, text: str) -> None:
        self.download_progress.setVisible(True)
        if fraction < 0:
            self.download_progress.setRange(0, 0)
        else:
            self.download_progress.setRange(0, 1000)
            self.download_progress.setValue(int(1000 * fraction))
        self.download_progress.setFormat(text or "%p %")

    def set_downloading(self, downloading: bool) -> None:
        self.download_button.setEnabled(not downloading)
        self.dataset_combo.setEnabled(not downloading)
        self.data_root_edit.setEnabled(not downloading)
        self.browse_button.setEnabled(not downloading)
        if not downloading:
            self.download_progress.setVisible(False)

    @Slot(int)
    def _on_preset_activated(self, index: int) -> None:
        name = self.preset_combo.itemData(index)
        self.preset_description.setText(self._descriptions.get(name, ""))
        if name:
            self.preset_chosen.emit(name)

    def _browse(self) -> None:
        start = self.data_root_edit.text() or last_folder("data_root", str(Path.home()))
        folder = QFileDialog.getExistingDirectory(self, "Data folder", start)
        if folder:
            remember_folder("data_root", folder)
            self.data_root_edit.setText(folder)
            self.data_root_changed.emit()
