""" "Compare encodings": queue the variants of a comparison and follow their progress.

The dialog builds an ``engine.compare.CompareRequest`` from the wizard's configuration and
the choices here, runs ``engine.compare.run_compare`` in a background task and shows each
variant's stage; the results (computed by the engine) fill the table when it ends. No tensor
maths here.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.choices import ENCODING_LABELS, RunStatus
from engine.compare import COMPARE_CHOICES, DENSE, CompareProgress  # torch-free at import
from engine.events import RunControl
from ui.formatting import format_count, format_percent
from ui.messages import describe_exception
from ui.workers import BackgroundTask

COLUMNS = (
    "variant",
    "status",
    "parameters",
    "learning rate",
    "best test acc (mean)",
    "per seed",
    "s / epoch",
)
DEFAULT_CHOSEN = ("dense", "adtn", "tt", "lowrank")


def _numbers(text: str, kind=int) -> list:
    return [kind(part) for part in text.replace(" ", "").split(",") if part]


class CompareDialog(QDialog):
    """Choose encodings, budgets and seeds; run; watch; read the verdict."""

    results_shown = Signal(str)  # the output folder, once its results fill the table

    def __init__(self, config, runs_root: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare encodings")
        self.resize(900, 560)
        self.config = config  # the run configuration whose layers the comparison encodes
        self._runs_root = Path(runs_root)
        self._task: BackgroundTask | None = None
        self._control = RunControl()
        self._rows: dict[str, int] = {}
        self.out_dir: Path | None = None

        self.encoding_boxes: dict[str, QCheckBox] = {}
        boxes = QHBoxLayout()
        for name in COMPARE_CHOICES:
            box = QCheckBox(name)
            box.setToolTip(ENCODING_LABELS.get(name, "the uncompressed model, for reference"))
            box.setChecked(name in DEFAULT_CHOSEN)
            self.encoding_boxes[name] = box
            boxes.addWidget(box)
        boxes.addStretch(1)
        depths = sorted({spec.depth for spec in config.layers}) or [3]
        self.depths_edit = QLineEdit(",".join(map(str, depths)))
        self.depths_edit.setToolTip(
            "ADTN depths whose parameter counts are the budgets, "
            "matched per layer by every encoding"
        )
        self.seeds_edit = QLineEdit("0,1")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 10_000)
        self.epochs_spin.setValue(max(1, int(config.epochs)))
        self.search_box = QCheckBox(
            "search each variant's learning rate on held-out training examples first"
        )
        self.search_box.setChecked(True)

        form = QFormLayout()
        form.addRow("Encodings", boxes)
        form.addRow("Budgets (ADTN depths)", self.depths_edit)
        form.addRow("Seeds", self.seeds_edit)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("", self.search_box)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Every variant trains with the same data, epochs and schedule.")
        self.status.setWordWrap(True)
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.verdict.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.close_button = QPushButton("Close")
        buttons = QHBoxLayout()
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.verdict)
        layout.addLayout(buttons)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.close_button.clicked.connect(self.close)

    # -- the request --------------------------------------------------------------------

    def request(self):
        """The comparison as chosen; ``ValueError`` with a message for the user."""
        from engine.compare import CompareRequest

        encodings = [name for name, box in self.encoding_boxes.items() if box.isChecked()]
        try:
            depths, seeds = _numbers(self.depths_edit.text()), _numbers(self.seeds_edit.text())
        except ValueError:
            raise ValueError("Budgets and seeds are whole numbers separated by commas.") from None
        if self.out_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.out_dir = self._runs_root / f"compare-{self.config.run_name}-{stamp}"
        request = CompareRequest(
            base=self.config,
            out=self.out_dir,
            encodings=encodings,
            depths=depths,
            seeds=seeds,
            epochs=self.epochs_spin.value(),
            lr_search=self.search_box.isChecked(),
        )
        return request.validate()

    def _fill_rows(self, request) -> None:
        variants = request.variants()
        self.table.setRowCount(len(variants))
        self._rows = {}
        for index, variant in enumerate(variants):
            self._rows[variant.key] = index
            self._set(index, 0, variant.label)
            self._set(index, 1, "queued")

    def _set(self, row: int, column: int, text: str) -> None:
        item = QTableWidgetItem(text)
        if column >= 2:
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.table.setItem(row, column, item)

    # -- running ------------------------------------------------------------------------

    @Slot()
    def start(self) -> None:
        try:
            request = self.request()
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        self._fill_rows(request)
        self._control = RunControl()
        control = self._control

        def work(report):
            from engine.compare import run_compare

            def forward(step: CompareProgress) -> None:
                report(step.done / max(1, step.total), _encode(step))

            return run_compare(request, progress=forward, control=control)

        self._task = BackgroundTask(work, self)
        self._task.progressed.connect(self._on_progress)
        self._task.succeeded.connect(self._on_results)
        self._task.failed.connect(self._on_failed)
        self._task.ended.connect(self._on_compare_ended)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.status.setText(f"Running; the runs are kept in {self.out_dir}")
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        for widget in self._choice_widgets():
            widget.setEnabled(False)
        self._task.start()

    def _choice_widgets(self) -> tuple:
        return (
            *self.encoding_boxes.values(),
            self.depths_edit,
            self.seeds_edit,
            self.epochs_spin,
            self.search_box,
        )

    @Slot()
    def stop(self) -> None:
        self._control.request_stop()
        self.status.setText("Stopping after the current batch; Start again resumes.")
        self.stop_button.setEnabled(False)

    def is_running(self) -> bool:
        return self._task is not None and self._task.is_running()

    @Slot(float, str)
    def _on_progress(self, fraction: float, text: str) -> None:
        self.progress.setValue(int(1000 * fraction))
        step = _decode(text)
        row = self._rows.get(step["variant"])
        if row is None:
            return
        stage = step["stage"]
        if stage == "search":
            self._set(row, 1, f"searching: lr {step['lr']}")
        elif stage == "train":
            self._set(row, 1, f"training: seed {step['seed']}")
        elif stage == "skip":
            self._set(row, 1, "does not fit the budget")
            self.table.item(row, 1).setToolTip(step["message"])
        for _other, index in self._rows.items():
            item = self.table.item(index, 1)
            if (
                index < row
                and item is not None
                and item.text().startswith(("queued", "search", "training"))
            ):
                self._set(index, 1, "done")

    @Slot(object)
    def _on_results(self, results) -> None:
        from engine.compare_report import verdict

        for result in results:
            row = self._rows.get(result.key)
            if row is None:
                continue
            if not result.fits:
                self._set(row, 1, "does not fit the budget")
                self.table.item(row, 1).setToolTip(result.reason)
                continue
            finished = sum(1 for s in result.status if s == RunStatus.FINISHED)
            self._set(
                row,
                1,
                f"done ({finished} of {len(result.status)} seeds)" if result.status else "not run",
            )
            params = result.model_params if result.encoding == DENSE else result.layer_params
            self._set(row, 2, format_count(params))
            self._set(row, 3, f"{result.lr:g}")
            self._set(row, 4, format_percent(result.mean_best) if result.best_test_acc else "–")
            self._set(row, 5, ", ".join(format_percent(a) for a in result.best_test_acc) or "–")
            self._set(row, 6, f"{result.mean_seconds:.1f} s" if result.mean_seconds else "–")
        self.verdict.setText(verdict(results).replace("**", ""))
        self.results_shown.emit(str(self.out_dir))

    @Slot(object)
    def _on_failed(self, exc: Exception) -> None:
        self.status.setText(describe_exception(exc))

    @Slot()
    def _on_compare_ended(self) -> None:
        self.progress.setValue(
            self.progress.maximum() if not self._control.stop_requested else self.progress.value()
        )
        stopped = self._control.stop_requested
        self.status.setText(
            ("Stopped; Resume goes on. " if stopped else "Done. ")
            + f"Table, CSV and plot: {self.out_dir / 'compare.md'}"
        )
        self.start_button.setEnabled(True)
        self.start_button.setText("Resume" if stopped else "Start")
        self.stop_button.setEnabled(False)
        for widget in self._choice_widgets():
            widget.setEnabled(not stopped)  # a stopped comparison resumes as it was chosen
        if not stopped:
            self.out_dir = None  # a new Start is a new comparison, in a new folder

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self.is_running():
            self._control.request_stop()
            self._task.wait(60_000)
        super().closeEvent(event)


def _encode(step: CompareProgress) -> str:
    # Progress crosses threads as text (BackgroundTask's signal); one line, fields by "|".
    return "|".join(
        (step.variant, step.stage, str(step.seed), f"{step.lr:g}", step.message.replace("|", "/"))
    )


def _decode(text: str) -> dict:
    variant, stage, seed, lr, message = (text.split("|", 4) + [""] * 5)[:5]
    return {"variant": variant, "stage": stage, "seed": seed, "lr": lr, "message": message}
