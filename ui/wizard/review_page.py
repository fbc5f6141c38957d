"""Wizard page 4: the run configuration as TOML, saved on request; Start sits below."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.paths import CONFIG_FILE


class ReviewPage(QWidget):
    title = "Review"
    subtitle = (
        "The settings of the run as TOML: what the pages before offer, and any other "
        f"that this configuration changes. The run folder keeps them in {CONFIG_FILE}."
    )

    name_edited = Signal()
    save_requested = Signal()
    compare_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("model-dataset")
        self.toml_view = QPlainTextEdit()
        self.toml_view.setReadOnly(True)
        self.toml_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.problem = QLabel("")
        self.problem.setObjectName("errorLabel")
        self.problem.setWordWrap(True)
        self.save_button = QPushButton("Save config…")
        self.compare_button = QPushButton("Compare encodings…")
        self.compare_button.setToolTip(
            "Train these layers as an ADTN, a tensor train, low "
            "rank and more at equal parameter budgets, side by side"
        )

        form = QFormLayout()
        form.addRow("Run name", self.name_edit)
        buttons = QHBoxLayout()
        buttons.addWidget(self.problem, 1)
        buttons.addStretch(0)  # the button keeps its size when there is no problem to show
        buttons.addWidget(self.save_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.toml_view, 1)
        layout.addLayout(buttons)
        self.name_edit.editingFinished.connect(self.name_edited)
        self.save_button.clicked.connect(self.save_requested)
        self.compare_button.clicked.connect(self.compare_requested)

    def load(self, config) -> None:
        self.name_edit.setText(config.name)

    def apply(self, config):
        return config.replace(name=self.name_edit.text().strip())

    def show_config(self, toml_text: str, problem: str) -> None:
        self.toml_view.setPlainText(toml_text)
        self.problem.setText(problem)
        self.problem.setVisible(bool(problem))
