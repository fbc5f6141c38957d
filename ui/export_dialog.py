"""Export a run's model (ADTN bundle, dense safetensors, ONNX) and show the verification."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.choices import CHECKPOINT_TITLES, EXPORT_FORMAT_TITLES, EXPORT_FORMATS
from engine.paths import RunPaths
from engine.units import format_bytes
from ui.formatting import format_count, format_ratio
from ui.messages import describe_exception
from ui.workers import BackgroundTask

FORMAT_LABELS = {fmt: EXPORT_FORMAT_TITLES[fmt] for fmt in EXPORT_FORMATS}


def export_run_in_worker(
    run_dir: Path, out: Path, formats: tuple[str, ...], checkpoint: str, report
):
    from engine.export import export_run

    return export_run(run_dir, out, formats=formats, checkpoint=checkpoint, progress=report)


def existing_outputs(run_dir: Path, out: Path, formats: tuple[str, ...]) -> list[Path]:
    """The files an export of ``run_dir`` into ``out`` would replace (the engine names them)."""
    from engine.config import RunConfig
    from engine.export.run_export import output_paths

    stem = RunConfig.load(RunPaths(run_dir).config).run_name
    return [path for path in output_paths(out, formats, stem).values() if path.exists()]


def confirm_overwrite(parent: QWidget, paths: list[Path]) -> bool:
    """Ask before replacing files (tests replace this on the dialog)."""
    names = "\n".join(f"  {path}" for path in paths)
    answer = QMessageBox.question(
        parent,
        "Replace files?",
        f"These files exist already and would be replaced:\n{names}\n\nReplace them?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


RIGHT_ALIGNED = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


class ExportDialog(QDialog):
    """Choose formats, checkpoint and folder; export in a background task; show the report."""

    exported = Signal(object)  # the engine's ExportReport

    def __init__(self, run_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Export — {run_dir.name}")
        self.setMinimumWidth(720)
        self.run_dir = run_dir
        self.report = None
        self._task: BackgroundTask | None = None

        self.format_boxes = {fmt: QCheckBox(label) for fmt, label in FORMAT_LABELS.items()}
        formats = QHBoxLayout()
        for box in self.format_boxes.values():
            box.setChecked(True)
            box.toggled.connect(self._update_buttons)
            formats.addWidget(box)
        formats.addStretch(1)
        self.checkpoint = QComboBox()
        for kind, title in CHECKPOINT_TITLES.items():  # best first: what is usually wanted
            self.checkpoint.addItem(title, kind)
        # Always the run's own export folder: a folder remembered from another run would
        # put this run's files beside that run's.
        self.out_edit = QLineEdit(str(run_dir / "export"))
        self.confirm_overwrite = lambda paths: confirm_overwrite(self, paths)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(browse)

        form = QFormLayout()
        form.addRow("Formats", formats)
        form.addRow("Checkpoint", self.checkpoint)
        form.addRow("Output folder", out_row)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("not started")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.files_table = QTableWidget(0, 4)
        self.files_table.setHorizontalHeaderLabels(("format", "file", "size", "largest difference"))
        self.files_table.verticalHeader().hide()
        self.files_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.files_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.files_table.setVisible(False)

        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton(
            "Export", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.export_button.clicked.connect(self.start_export)
        self.close_button.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.summary)
        layout.addWidget(self.files_table, 1)
        layout.addWidget(self.buttons)

    def chosen_formats(self) -> tuple[str, ...]:
        return tuple(fmt for fmt, box in self.format_boxes.items() if box.isChecked())

    @Slot()
    def _update_buttons(self) -> None:
        self.export_button.setEnabled(bool(self.chosen_formats()) and self._task is None)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into folder", self.out_edit.text())
        if folder:
            self.out_edit.setText(folder)

    @Slot()
    def start_export(self) -> None:
        formats = self.chosen_formats()
        if not formats or self._task is not None:
            return
        out = Path(self.out_edit.text().strip() or self.run_dir / "export")
        try:
            existing = existing_outputs(self.run_dir, out, formats)
        except Exception as exc:  # an unreadable run folder: say so, export nothing
            self._on_failed(exc)
            return
        if existing and not self.confirm_overwrite(existing):
            self.summary.setText("Export cancelled: the existing files were kept.")
            return
        run_dir, checkpoint = self.run_dir, self.checkpoint.currentData()
        self.summary.setText("")
        self.files_table.setVisible(False)
        self._task = BackgroundTask(
            lambda report: export_run_in_worker(run_dir, out, formats, checkpoint, report), self
        )
        self._task.progressed.connect(self._on_progress)
        self._task.succeeded.connect(self._on_exported)
        self._task.failed.connect(self._on_failed)
        self._task.ended.connect(self._on_export_ended)
        self._update_buttons()
        self.close_button.setEnabled(False)  # the export finishes or fails; it leaves no half files
        self._task.start()

    def is_exporting(self) -> bool:
        return self._task is not None

    @Slot(float, str)
    def _on_progress(self, fraction: float, text: str) -> None:
        self.progress.setValue(int(1000 * max(fraction, 0.0)))
        self.progress.setFormat(f"{text} · %p %")

    @Slot(object)
    def _on_exported(self, report) -> None:
        self.report = report
        self.progress.setValue(1000)
        self.progress.setFormat("verified ✓" if report.passed else "verification failed")
        self.summary.setText(
            f"<b>Largest difference</b> between the trained model and the exported files: "
            f"<b>{report.max_abs_diff:.2e}</b> (tolerance {report.tolerance:g}, "
            f"{'passed' if report.passed else 'FAILED'}; {report.batch_source} batch of "
            f"{report.batch_shape[0] if report.batch_shape else '?'}).<br>"
            f"<b>Compression</b>: {format_count(report.params_compressed)} parameters instead "
            f"of {format_count(report.params_dense)} ({format_ratio(report.compression_ratio)} "
            f"smaller); dense float32 size {format_bytes(report.dense_float32_bytes)}.<br>"
            f"<b>Dense CPU latency</b>: {report.dense_latency_ms:.2f} ms per batch."
        )
        self.files_table.setRowCount(len(report.files))
        for row, exported in enumerate(report.files):
            values = (
                FORMAT_LABELS.get(exported.format, exported.format),
                exported.path,
                format_bytes(exported.size_bytes),
                f"{exported.max_abs_diff:.2e}",
            )
            for column, text in enumerate(values):
                item = QTableWidgetItem(text)
                if column in (2, 3):
                    item.setTextAlignment(RIGHT_ALIGNED)
                self.files_table.setItem(row, column, item)
        self._fit_table_height()
        self.files_table.setVisible(True)
        self.exported.emit(report)

    def _fit_table_height(self) -> None:
        """Tall enough for every row (three at most), so no row is cut in half."""
        table = self.files_table
        table.resizeRowsToContents()
        rows = sum(table.rowHeight(row) for row in range(table.rowCount()))
        frame = 2 * table.frameWidth()
        scroll = table.horizontalScrollBar().sizeHint().height()
        table.setMinimumHeight(table.horizontalHeader().height() + rows + frame + scroll)

    @Slot(object)
    def _on_failed(self, exc: Exception) -> None:
        self.progress.setFormat("failed")
        self.summary.setText(
            f'<span style="color:#B3261E">Export failed: {describe_exception(exc)}</span>'
        )

    @Slot()
    def _on_export_ended(self) -> None:
        self._task = None
        self.close_button.setEnabled(True)
        self._update_buttons()

    def reject(self) -> None:
        if self._task is None:  # never close under a running export
            super().reject()
