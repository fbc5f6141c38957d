"""Wizard page 3: how to train (epochs, batch, optimiser, initialisation, seed, device)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from ui.engine_catalog import EngineCatalog
from ui.wizard.source_page import place_form

OPTIMIZERS = (("Adam", "adam"), ("AdamW", "adamw"), ("SGD with momentum", "sgd"))
INITS = (("from scratch", "scratch"), ("pretrained: train dense, fit ADTNs, fine-tune",
                                       "pretrained"))
SCHEDULES = (("cosine", "cosine"), ("constant", "none"))


def _combo(items: tuple[tuple[str, str], ...]) -> QComboBox:
    combo = QComboBox()
    for label, value in items:
        combo.addItem(label, value)
    return combo


def _select(combo: QComboBox, value: str) -> None:
    index = combo.findData(value)
    if index < 0:  # a value the config holds but the combo did not list (e.g. cuda:3)
        combo.addItem(value, value)
        index = combo.count() - 1
    combo.setCurrentIndex(index)


class TrainingPage(QWidget):
    title = "Training"
    subtitle = "How long and how to train. The defaults come from the preset."

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 65_536)
        self.optimizer = _combo(OPTIMIZERS)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 10.0)
        self.lr.setSingleStep(1e-4)
        self.schedule = _combo(SCHEDULES)
        self.init = _combo(INITS)
        self.pretrain_epochs = QSpinBox()
        self.pretrain_epochs.setRange(1, 10_000)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.device = QComboBox()
        self.limit_train = QSpinBox()
        self.limit_train.setRange(0, 10_000_000)
        self.limit_train.setSpecialValueText("all")
        self.limit_train.setSingleStep(1000)
        self.limit_test = QSpinBox()
        self.limit_test.setRange(0, 10_000_000)
        self.limit_test.setSpecialValueText("all")
        self.limit_test.setSingleStep(1000)
        self.device_hint = QLabel("")
        self.device_hint.setObjectName("hintLabel")

        form = QFormLayout()
        form.addRow("Epochs", self.epochs)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Optimiser", self.optimizer)
        form.addRow("Learning rate", self.lr)
        form.addRow("Schedule", self.schedule)
        form.addRow("Initialisation", self.init)
        form.addRow("Dense pre-training epochs", self.pretrain_epochs)
        form.addRow("Seed", self.seed)
        form.addRow("Device", self.device)
        form.addRow("", self.device_hint)
        form.addRow("Training examples", self.limit_train)
        form.addRow("Test examples", self.limit_test)

        place_form(self, form)
        self.init.currentIndexChanged.connect(self._follow_init)

    def set_catalog(self, catalog: EngineCatalog) -> None:
        self.device.clear()
        for choice in catalog.devices:
            self.device.addItem(choice.label, choice.id)
        gpus = [c for c in catalog.devices if c.id.startswith(("cuda", "mps"))]
        self.device_hint.setText(f"{len(gpus)} GPU(s) found" if gpus
                                 else "No GPU found: training runs on the CPU.")

    def load(self, config) -> None:
        self.epochs.setValue(config.epochs)
        self.batch_size.setValue(config.batch_size)
        _select(self.optimizer, config.optimizer)
        self.lr.setValue(config.lr)
        _select(self.schedule, config.schedule)
        _select(self.init, config.init)
        self.pretrain_epochs.setValue(max(config.pretrain_epochs, 1))
        self.seed.setValue(config.seed)
        _select(self.device, config.device)
        self.limit_train.setValue(config.limit_train)
        self.limit_test.setValue(config.limit_test)
        self._follow_init()

    def apply(self, config):
        init = self.init.currentData()
        return config.replace(
            epochs=self.epochs.value(), batch_size=self.batch_size.value(),
            optimizer=self.optimizer.currentData(), lr=self.lr.value(),
            schedule=self.schedule.currentData(), init=init,
            pretrain_epochs=self.pretrain_epochs.value() if init == "pretrained" else 0,
            seed=self.seed.value(), device=self.device.currentData() or "auto",
            limit_train=self.limit_train.value(), limit_test=self.limit_test.value())

    def _follow_init(self) -> None:
        self.pretrain_epochs.setEnabled(self.init.currentData() == "pretrained")
