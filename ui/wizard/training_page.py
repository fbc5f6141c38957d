"""Wizard page 3: how to train (epochs, batch, optimiser, initialisation, seed, device)."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QWidget,
)

from engine import choices  # torch-free: the engine's own names and titles
from engine.config import RunConfig
from ui.engine_catalog import EngineCatalog
from ui.settings import last_folder, remember_folder
from ui.wizard.source_page import place_form

# (title, value) for each combo box, in the engine's order: the engine's values, no copies.
OPTIMIZERS = tuple((choices.OPTIMIZER_TITLES[name], name) for name in choices.OPTIMIZERS)
INITS = tuple((choices.INIT_TITLES[name], name) for name in choices.INITS)
SCHEDULES = tuple((choices.SCHEDULE_TITLES[name], name) for name in choices.SCHEDULES)


class ScientificSpinBox(QDoubleSpinBox):
    """A spin box for rates: reads and shows ``1e-3`` as well as ``0.001``, keeps every
    significant digit (a QDoubleSpinBox rounds to its decimals), and steps by factors of two,
    since rates are tuned on a log scale."""

    def __init__(self, minimum: float, maximum: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(12)  # the value is kept as typed; the text shows it with %g
        self.setRange(minimum, maximum)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt's name)
        return f"{value:g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802
        if self.specialValueText() and text == self.specialValueText():
            return self.minimum()
        try:
            return float(text.strip().replace(",", "."))
        except ValueError:
            return self.value()

    def validate(self, text: str, position: int):
        if self.specialValueText() and text == self.specialValueText():
            return QValidator.State.Acceptable, text, position
        stripped = text.strip().replace(",", ".")
        try:
            value = float(stripped)
        except ValueError:
            # Half-typed numbers ("1e", "1e-", "-", ".") may still become valid.
            allowed = set("0123456789.eE+-")
            state = (
                QValidator.State.Intermediate
                if stripped == "" or set(stripped) <= allowed
                else QValidator.State.Invalid
            )
            return state, text, position
        if not math.isfinite(value):
            return QValidator.State.Invalid, text, position
        inside = self.minimum() <= value <= self.maximum()
        return (
            QValidator.State.Acceptable if inside else QValidator.State.Intermediate,
            text,
            position,
        )

    def stepBy(self, steps: int) -> None:  # noqa: N802
        value = self.value()
        if value <= 0:
            value = max(self.minimum(), 1e-4) if steps > 0 else value
        else:
            value *= 2.0**steps
        self.setValue(min(max(value, self.minimum()), self.maximum()))


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
        self.lr = ScientificSpinBox(1e-8, 100.0)
        self.lr.setToolTip("Type 0.001 or 1e-3; the arrows double or halve it")
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

        # Settings of the run configuration that the presets set and the review shows.
        self.adtn_lr = ScientificSpinBox(0.0, 100.0)
        self.adtn_lr.setSpecialValueText("same as the learning rate")
        self.adtn_lr.setToolTip("Learning rate of the ADTN tensors (0: the learning rate)")
        self.weight_decay = ScientificSpinBox(0.0, 10.0)
        self.weight_decay.setSpecialValueText("none")
        self.weight_decay.setToolTip("Not applied to the ADTN tensors")
        self.momentum = QDoubleSpinBox()
        self.momentum.setRange(0.0, 0.999)
        self.momentum.setDecimals(3)
        self.momentum.setSingleStep(0.05)
        self.fit_steps = QSpinBox()
        self.fit_steps.setRange(0, 1_000_000)
        self.fit_steps.setSingleStep(100)
        self.fit_steps.setToolTip("Optimisation steps fitting each ADTN to its pretrained weight")
        self.augment = QCheckBox("random crops and flips (CIFAR data sets)")
        self.amp = QCheckBox("mixed precision on CUDA GPUs")
        # Knowledge distillation: a trained run whose outputs the compressed model learns from.
        self.teacher = QLineEdit()
        self.teacher.setPlaceholderText("none (or a run folder, or a weights file of the network)")
        self.teacher.setToolTip(
            "Distil from a trained model: the compressed model also learns from its outputs, "
            "softened by the temperature. A run folder gives its best checkpoint."
        )
        self.teacher_button = QPushButton("Browse…")
        self.teacher_button.clicked.connect(self._browse_teacher)
        self.teacher_row = QWidget()
        teacher_layout = QHBoxLayout(self.teacher_row)
        teacher_layout.setContentsMargins(0, 0, 0, 0)
        teacher_layout.addWidget(self.teacher, 1)
        teacher_layout.addWidget(self.teacher_button)
        self.distill_weight = QDoubleSpinBox()
        self.distill_weight.setRange(0.0, 1.0)
        self.distill_weight.setDecimals(2)
        self.distill_weight.setSingleStep(0.1)
        self.distill_weight.setToolTip("Share of the loss taken from the teacher's outputs")
        self.distill_temperature = QDoubleSpinBox()
        self.distill_temperature.setRange(0.1, 100.0)
        self.distill_temperature.setDecimals(1)
        self.distill_temperature.setToolTip("How much both models' outputs are softened")
        self.teacher.textChanged.connect(self._follow_init)
        self.advanced_rows = (
            ("ADTN learning rate", self.adtn_lr),
            ("Weight decay", self.weight_decay),
            ("Momentum (SGD)", self.momentum),
            ("ADTN fitting steps", self.fit_steps),
            ("Augmentation", self.augment),
            ("Precision", self.amp),
            ("Teacher (distillation)", self.teacher_row),
            ("Distillation weight", self.distill_weight),
            ("Distillation temperature", self.distill_temperature),
        )
        # Folded at first (the preset's values serve most runs); the arrow unfolds it.
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced settings")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setAutoRaise(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.toggled.connect(self._fold_advanced)

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
        form.addRow(self.advanced_toggle)
        for label, field in self.advanced_rows:
            form.addRow(label, field)
        self.form = form

        place_form(self, form)
        self.init.currentIndexChanged.connect(self._follow_init)
        self.optimizer.currentIndexChanged.connect(self._follow_init)
        self._fold_advanced(False)

    def set_catalog(self, catalog: EngineCatalog) -> None:
        self.device.clear()
        for choice in catalog.devices:
            self.device.addItem(choice.label, choice.id)
        gpus = [
            c for c in catalog.devices if c.id.startswith(("cuda", "mps")) and c.id != "cuda:all"
        ]  # not a GPU
        self.device_hint.setText(
            f"{len(gpus)} GPU(s) found" if gpus else "No GPU found: training runs on the CPU."
        )

    def load(self, config: RunConfig) -> None:
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
        self.adtn_lr.setValue(config.adtn_lr)
        self.weight_decay.setValue(config.weight_decay)
        self.momentum.setValue(config.momentum)
        self.fit_steps.setValue(config.fit_steps)
        self.augment.setChecked(config.augment)
        self.amp.setChecked(config.amp)
        self.teacher.setText(config.teacher)
        self.distill_weight.setValue(config.distill_weight)
        self.distill_temperature.setValue(config.distill_temperature)
        self._follow_init()

    def apply(self, config: RunConfig) -> RunConfig:
        init = self.init.currentData()
        return config.replace(
            epochs=self.epochs.value(),
            batch_size=self.batch_size.value(),
            optimizer=self.optimizer.currentData(),
            lr=self.lr.value(),
            schedule=self.schedule.currentData(),
            init=init,
            pretrain_epochs=self.pretrain_epochs.value() if init == "pretrained" else 0,
            seed=self.seed.value(),
            device=self.device.currentData() or "auto",
            limit_train=self.limit_train.value(),
            limit_test=self.limit_test.value(),
            adtn_lr=self.adtn_lr.value(),
            weight_decay=self.weight_decay.value(),
            momentum=self.momentum.value(),
            fit_steps=self.fit_steps.value(),
            augment=self.augment.isChecked(),
            amp=self.amp.isChecked(),
            teacher=self.teacher.text().strip(),
            distill_weight=self.distill_weight.value(),
            distill_temperature=self.distill_temperature.value(),
        )

    def _follow_init(self) -> None:
        pretrained = self.init.currentData() == "pretrained"
        self.pretrain_epochs.setEnabled(pretrained)
        self.fit_steps.setEnabled(pretrained)
        self.momentum.setEnabled(self.optimizer.currentData() == "sgd")
        taught = bool(self.teacher.text().strip())
        self.distill_weight.setEnabled(taught)
        self.distill_temperature.setEnabled(taught)

    def ask_teacher_folder(self) -> str | None:
        """A run folder to distil from, or None when cancelled (tests replace this method)."""
        folder = QFileDialog.getExistingDirectory(
            self, "Teacher: a trained run folder", last_folder("teacher_run", "")
        )
        if folder:
            remember_folder("teacher_run", folder)
        return folder or None

    def _browse_teacher(self) -> None:
        folder = self.ask_teacher_folder()
        if folder:
            self.teacher.setText(folder)

    def _fold_advanced(self, unfolded: bool) -> None:
        for _label, field in self.advanced_rows:
            self.form.setRowVisible(field, unfolded)
        self.advanced_toggle.setArrowType(
            Qt.ArrowType.DownArrow if unfolded else Qt.ArrowType.RightArrow
        )
