"""Wizard page 1: preset, network, data set and where the data lives (download if missing)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.choices import DATASET_TITLES, IMAGEFOLDER_PREFIX, TORCHVISION_PREFIX
from engine.config import RunConfig
from ui.engine_catalog import EngineCatalog
from ui.settings import last_folder, remember_folder

CUSTOM_PRESET = ""
OWN_MODEL = "\x00own-model"  # the "Your own model…" entry of the network list
IMAGE_FOLDER = "\x00image-folder"  # the "Image folder…" entry of the data-set list
DEFAULT_FACTORY = "build_model"


def data_root_key(dataset: str) -> str:
    """Settings key of the data folder remembered for ``dataset`` (one per data set)."""
    return f"data_root/{dataset}"


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
        self.weights_edit = QLineEdit()
        self.weights_edit.setPlaceholderText(
            "none: train from scratch (or a .safetensors / .pt file, or torchvision:DEFAULT)"
        )
        self.weights_edit.setToolTip(
            "Pretrained weights for the network. The dense model's test accuracy is measured "
            "with them before compression, and shown beside the compressed one."
        )
        self.weights_button = QPushButton("Browse…")
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.weights_edit, 1)
        weights_row.addWidget(self.weights_button)
        status_row = QHBoxLayout()
        status_row.addWidget(self.data_status, 1)
        status_row.addWidget(self.download_button)

        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        form.addRow("Preset", self.preset_combo)
        form.addRow("", self.preset_description)
        form.addRow("Network", self.model_combo)
        form.addRow("Weights", weights_row)
        form.addRow("Data set", self.dataset_combo)
        form.addRow("Data folder", root_row)
        form.addRow("", status_row)
        form.addRow("", self.download_progress)

        place_form(self, form)

        self._descriptions: dict[str, str] = {}
        self.preset_combo.activated.connect(self._on_preset_activated)
        self.browse_button.clicked.connect(self._browse)
        self.data_root_edit.editingFinished.connect(self.data_root_changed)
        self.data_root_edit.editingFinished.connect(self._remember_data_root)
        self.weights_button.clicked.connect(self._browse_weights)
        self.model_combo.activated.connect(self._on_model_activated)
        self.dataset_combo.activated.connect(self._on_dataset_activated)
        self.dataset_combo.currentIndexChanged.connect(self._on_dataset_changed)
        self._model_index = self._dataset_index = 0  # to return to when a picker is cancelled
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
            if name.startswith(TORCHVISION_PREFIX):
                title = f"{name[len(TORCHVISION_PREFIX) :]} (torchvision)"
            else:
                title = model_titles.get(name, name)
            self.model_combo.addItem(title, name)
        self.model_combo.insertSeparator(self.model_combo.count())
        self.model_combo.addItem("Your own model…", OWN_MODEL)
        self.model_combo.setMaxVisibleItems(20)
        self.dataset_combo.blockSignals(True)
        self.dataset_combo.clear()
        for name in catalog.datasets:
            self.dataset_combo.addItem(DATASET_TITLES.get(name, name), name)
        self.dataset_combo.insertSeparator(self.dataset_combo.count())
        self.dataset_combo.addItem("Image folder…", IMAGE_FOLDER)
        self.dataset_combo.blockSignals(False)

    # -- config <-> widgets -----------------------------------------------------------

    def show_preset(self, name: str) -> None:
        index = self.preset_combo.findData(name)
        self.preset_combo.setCurrentIndex(max(index, 0))
        self.preset_description.setText(self._descriptions.get(name, ""))

    def load(self, config: RunConfig) -> None:
        self._select(self.model_combo, config.model, self._model_title(config.model))
        self._model_index = self.model_combo.currentIndex()
        self.dataset_combo.blockSignals(True)
        self._select(
            self.dataset_combo, config.dataset, DATASET_TITLES.get(config.dataset, config.dataset)
        )
        self.dataset_combo.blockSignals(False)
        self._dataset_index = self.dataset_combo.currentIndex()
        # a preset names no folder: the one remembered for its data set (across launches)
        remembered = last_folder(data_root_key(config.dataset), "")
        self.data_root_edit.setText(config.data_root or remembered)
        self.weights_edit.setText(config.weights)
        self._show_folder_row(config.dataset)

    def apply(self, config: RunConfig) -> RunConfig:
        return config.replace(
            model=self.model_combo.currentData(),
            dataset=self.dataset_combo.currentData(),
            data_root=self.data_root_edit.text().strip(),
            weights=self.weights_edit.text().strip(),
        )

    # -- the user's own model and images ------------------------------------------------

    def ask_model_file(self) -> tuple[str, str] | None:
        """(Python file, factory name) from dialogs, or None when cancelled (tests replace
        this method)."""
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Your own model: a Python file",
            last_folder("model_file", str(Path.home())),
            "Python files (*.py)",
        )
        if not path:
            return None
        remember_folder("model_file", str(Path(path).parent))
        factory, ok = QInputDialog.getText(
            self,
            "Your own model",
            "Function or class that builds the model (called with "
            "in_channels, image_size, num_classes when it takes them):",
            text=DEFAULT_FACTORY,
        )
        factory = factory.strip()
        return (path, factory) if ok and factory.isidentifier() else None

    def ask_weights_file(self) -> str | None:
        """A weights file, or None when cancelled (tests replace this method)."""
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Pretrained weights",
            last_folder("weights_file", str(Path.home())),
            "Weights (*.safetensors *.pt *.pth);;All files (*)",
        )
        if path:
            remember_folder("weights_file", str(Path(path).parent))
        return path or None

    def _browse_weights(self) -> None:
        path = self.ask_weights_file()
        if path:
            self.weights_edit.setText(path)

    def ask_image_folder(self) -> str | None:
        """A folder of class folders (or with train/ and test/), or None when cancelled."""
        folder = QFileDialog.getExistingDirectory(
            self,
            "Image folder: one folder per class, or train/ and test/ folders",
            last_folder("image_folder", str(Path.home())),
        )
        if folder:
            remember_folder("image_folder", folder)
        return folder or None

    @Slot(int)
    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) != OWN_MODEL:
            self._model_index = index
            return
        chosen = self.ask_model_file()
        if chosen is None:
            self.model_combo.setCurrentIndex(self._model_index)
            return
        spec = f"{chosen[0]}:{chosen[1]}"
        self._select(self.model_combo, spec, self._model_title(spec))
        self._model_index = self.model_combo.currentIndex()

    @Slot(int)
    def _on_dataset_activated(self, index: int) -> None:
        if self.dataset_combo.itemData(index) != IMAGE_FOLDER:
            self._dataset_index = index
            return
        folder = self.ask_image_folder()
        if folder is None:
            self.dataset_combo.setCurrentIndex(self._dataset_index)
            return
        spec = IMAGEFOLDER_PREFIX + folder
        self._select(self.dataset_combo, spec, spec)
        self._dataset_index = self.dataset_combo.currentIndex()

    @Slot(int)
    def _on_dataset_changed(self, index: int) -> None:
        dataset = self.dataset_combo.itemData(index)
        if not dataset or dataset == IMAGE_FOLDER:
            return  # the picker decides; the entry itself is no data set
        self.data_root_edit.setText(last_folder(data_root_key(dataset), ""))
        self._show_folder_row(dataset)
        self.data_root_changed.emit()

    def _remember_data_root(self) -> None:
        dataset = self.dataset_combo.currentData()
        if dataset and dataset != IMAGE_FOLDER:
            remember_folder(data_root_key(dataset), self.data_root_edit.text().strip())

    def _show_folder_row(self, dataset: str) -> None:
        # an image folder is its own location; the data folder applies to named sets
        named = not str(dataset).startswith(IMAGEFOLDER_PREFIX)
        self.data_root_edit.setEnabled(named)
        self.browse_button.setEnabled(named)

    @staticmethod
    def _select(combo: QComboBox, value: str, title: str) -> None:
        """Select ``value``, first adding it (before the trailing "…" entry) if absent."""
        index = combo.findData(value)
        if index < 0:
            index = max(combo.count() - 2, 0)  # before the separator and the "…" entry
            combo.insertItem(index, title, value)
        combo.setCurrentIndex(index)

    @staticmethod
    def _model_title(spec: str) -> str:
        if spec.startswith(TORCHVISION_PREFIX):
            return f"{spec[len(TORCHVISION_PREFIX) :]} (torchvision)"
        path, sep, factory = spec.rpartition(":")
        return f"{factory} ({Path(path).name})" if sep and path.endswith(".py") else spec

    # -- data availability (the wizard checks and downloads; this page shows) ----------

    def show_data_status(self, available: bool, text: str) -> None:
        self.data_status.setText(text)
        self.data_status.setProperty("state", "ok" if available else "missing")
        self.data_status.style().unpolish(self.data_status)
        self.data_status.style().polish(self.data_status)
        folder = str(self.dataset_combo.currentData()).startswith(IMAGEFOLDER_PREFIX)
        self.download_button.setVisible(not available and not folder)  # nothing to download

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
            self._remember_data_root()
            self.data_root_changed.emit()
