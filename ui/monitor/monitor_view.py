"""The training monitor page: progress, Stop/Pause/Resume, live curves, log, layer view.

A view only: it subscribes to a TrainingSession's signals and draws what they carry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QFont, QTextCursor
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from engine.choices import CHECKPOINT_KINDS, PHASE_PRETRAIN, RunStatus
from engine.events import (  # torch-free
    BatchEnded,
    CheckpointSaved,
    DownloadProgress,
    EpochEnded,
    RunEnded,
    RunStarted,
)
from engine.paths import METRICS_FILE, RunPaths
from ui.formatting import format_count, format_duration, format_percent, format_ratio
from ui.monitor.layer_activity import LayerActivityTable
from ui.plots import RunCurves, save_plot
from ui.settings import last_folder, remember_folder
from ui.training_session import TrainingSession

if TYPE_CHECKING:  # engine.runs loads PyTorch
    from engine.runs import RunRecord

LOG_COLOURS = {"info": "#333333", "warning": "#9A6700", "error": "#B3261E"}


EPOCH_REDRAW_SPACING_MS = 20  # between the repaints of the epoch plots


class MonitorView(QWidget):
    """Watches one TrainingSession."""

    export_requested = Signal(str)  # the run folder
    resume_requested = Signal(str)  # the run folder of a stopped run, to continue it
    outcome_shown = Signal(str)  # how the run ended, once the page shows it

    def __init__(self, session: TrainingSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._total_epochs = 0
        self._batches_dirty = False
        self._run_summary: dict = {}  # summary.json of the run that just ended
        self._progress_text = ""  # the progress label without its ETA
        self._saw_batch = False
        self.outcome = ""  # how the last run ended, in words (the window's status bar shows it)
        # Reports a failed save; tests replace it to read the message without a dialog.
        self.show_error = lambda title, text: QMessageBox.warning(self, title, text)

        self.title = QLabel(NO_RUN_TEXT)
        self.title.setWordWrap(True)
        self.title.setObjectName("pageTitle")
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary = QLabel("")
        self.summary.setObjectName("summaryLabel")

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress_label = QLabel("")
        self.progress_label.setMinimumWidth(280)

        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopButton")
        self.pause_button.clicked.connect(session.pause)
        self.resume_button.clicked.connect(self._resume)
        self.stop_button.clicked.connect(session.stop)

        self.save_plots_button = QPushButton("Save plots…")
        self.save_csv_button = QPushButton("Save metrics CSV…")
        self.export_button = QPushButton("Export model…")
        self.save_plots_button.clicked.connect(self._ask_save_plots)
        self.save_csv_button.clicked.connect(self._ask_save_csv)
        self.export_button.clicked.connect(self._request_export)

        self.summary.setWordWrap(True)
        self.curves = RunCurves()
        self.layers = LayerActivityTable()
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setFont(QFont("monospace", 9))
        self.log_view.setPlaceholderText("Messages from the run appear here.")

        controls = QHBoxLayout()
        controls.addWidget(self.progress, 1)
        controls.addWidget(self.progress_label)
        for button in (self.pause_button, self.resume_button, self.stop_button):
            controls.addWidget(button)

        files = QHBoxLayout()
        files.addWidget(self.summary, 1)
        files.addWidget(self.curves.smoothing_control())
        for button in (self.save_plots_button, self.save_csv_button, self.export_button):
            files.addWidget(button)

        plots = QWidget()
        plots_layout = QHBoxLayout(plots)
        plots_layout.setContentsMargins(0, 0, 0, 0)
        for widget in self.curves.widgets():
            plots_layout.addWidget(widget)

        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(_titled("Log", self.log_view))
        bottom.addWidget(_titled("ADTN layers", self.layers))
        bottom.setSizes([600, 400])

        body = QSplitter(Qt.Orientation.Vertical)
        body.addWidget(plots)
        body.addWidget(bottom)
        body.setStretchFactor(0, 3)
        body.setStretchFactor(1, 2)

        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addLayout(controls)
        layout.addLayout(files)
        layout.addWidget(body, 1)

        # Batches arrive in slices ten times a second; the batch-loss curve redraws at most
        # five times a second, the epoch curves once an epoch.
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setInterval(200)
        self._redraw_timer.timeout.connect(self._redraw_batches)
        self._epoch_steps: list = []
        self._epoch_timer = QTimer(self)
        self._epoch_timer.setInterval(EPOCH_REDRAW_SPACING_MS)
        self._epoch_timer.timeout.connect(self._next_epoch_step)

        session.state_changed.connect(self._on_state)
        session.run_started.connect(self._on_run_started)
        session.download_progress.connect(self._on_data_progress)
        session.batch_progress.connect(self._on_batch)
        session.epoch_ended.connect(self._on_epoch)
        session.checkpoint_saved.connect(self._on_checkpoint)
        session.log.connect(self.append_log)
        session.run_ended.connect(self._on_run_ended)
        session.ended.connect(self._on_session_ended)
        self._on_state(session.state)

    # -- session signals --------------------------------------------------------------

    @Slot(str)
    def _on_state(self, state: str) -> None:
        active = state in ("running", "paused", "stopping")
        self.pause_button.setEnabled(state == "running")
        self.resume_button.setEnabled(state == "paused" or (not active and self.can_resume()))
        self.resume_button.setToolTip(
            "Continue the paused run"
            if active
            else "Continue this run from its last checkpoint"
            if self.can_resume()
            else ""
        )
        self.stop_button.setEnabled(state in ("running", "paused"))
        has_run = self.session.run_dir is not None
        self.save_plots_button.setEnabled(has_run)
        self.save_csv_button.setEnabled(has_run)
        self.export_button.setEnabled(has_run and not active and self.has_checkpoint())
        self.export_button.setToolTip(
            ""
            if self.export_button.isEnabled() or active
            else "This run saved no checkpoint, so there is nothing to export."
        )
        if state == "paused":
            # The ETA would freeze while nothing trains: say so instead.
            self.progress_label.setText(
                f"{self._progress_text} · paused" if self._progress_text else "paused"
            )
        if active:
            self._redraw_timer.start()
            if state == "running" and self.progress.maximum() == 1 and self.progress.value() == 0:
                self.progress.setRange(0, 0)  # busy until the first batch says how many
            self.progress.setFormat(
                {"running": "%p %", "paused": "paused · %p %", "stopping": "stopping…"}[state]
            )

    def can_resume(self) -> bool:
        """Whether the run that ended can continue from its last checkpoint."""
        summary = self._run_summary
        return (
            self.session.run_dir is not None
            and not self.session.is_active()
            and summary.get("status") in (RunStatus.STOPPED, RunStatus.FAILED)
            and 0 < int(summary.get("epochs_completed", 0)) < int(summary.get("epochs", 0))
            and self.has_checkpoint(("last",))
        )

    def has_checkpoint(self, kinds: tuple[str, ...] = CHECKPOINT_KINDS) -> bool:
        run_dir = self.session.run_dir
        return run_dir is not None and any(
            RunPaths(Path(run_dir)).checkpoint(kind).is_file() for kind in kinds
        )

    @Slot()
    def _resume(self) -> None:
        if self.session.state == "paused":
            self.session.resume()
        elif self.can_resume():
            self.resume_requested.emit(str(self.session.run_dir))

    def show_latest_run(self, run: RunRecord | None) -> None:
        """After a restart, no run of this session: point at the newest run folder (an engine
        RunRecord) and show its curves, instead of a bare "No run yet"."""
        if self.session.run_dir is not None or run is None:
            return
        from ui.runs.runs_view import read_history

        date = run.started_at.replace("T", " ")[:16]
        self.title.setText(
            f"No run in this session yet. The latest run is <b>{run.name}</b> "
            f"({run.model} on {run.dataset}, {date}, {run.status}); its curves "
            "are below. Resume or export it from the <b>Runs</b> page, or start "
            "a new one from <b>New compression</b>."
        )
        self.curves.clear()
        self._epoch_steps.clear()
        history = read_history(run.path)
        self.curves.show(history)
        # the engine's rule on the run's metrics.csv, as during a run (– before the first
        # epoch of the compressed model, where the summary still says 0)
        best = format_percent(history.best_test_acc())
        self.summary.setText(f"Best test accuracy {best}.  Folder: {run.path}")

    def begin(self, title: str) -> None:
        """Reset for a new run (called by the window just before the session starts)."""
        self.title.setText(title)
        self.summary.setText("")
        self.outcome = ""
        self._run_summary = {}
        self._progress_text = ""
        self._saw_batch = False
        self._epoch_steps.clear()  # nothing of the run before is drawn later
        self.curves.clear()
        self.layers.set_layers([])
        self.log_view.clear()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText("starting…")
        self._total_epochs = self.session.config.total_epochs if self.session.config else 0
        self._started_at = time.monotonic()

    @Slot(object)
    def _on_data_progress(self, event: DownloadProgress) -> None:
        """A data set arriving (bytes) or an image folder being decoded (images)."""
        done, total = event.done_bytes, event.total_bytes
        loading = getattr(event, "what", "download") == "load"
        if total:
            self.progress.setRange(0, max(total, 1))
            self.progress.setValue(min(done, total))
        if loading:
            text = f"loading images: {done:,} of {total:,}"
        else:
            text = f"downloading {event.dataset}: {done / 1e6:.1f}" + (
                f" of {total / 1e6:.1f} MB" if total else " MB"
            )
        self.progress_label.setText(text)

    @Slot(object)
    def _on_run_started(self, event: RunStarted) -> None:
        self._total_epochs = event.epochs
        self.layers.set_layers(event.compression.get("layers", []))
        params, dense = event.params_total, event.dense_params_total
        config = event.config or {}
        pretraining = config.get("init") == "pretrained" and event.start_epoch <= int(
            config.get("pretrain_epochs", 0)
        )
        self.curves.plan(dense if pretraining else params, dense, event.epochs)
        resumed = f", resuming at epoch {event.start_epoch}" if event.start_epoch > 1 else ""
        self.append_log(
            "info",
            f"Run started on {event.device}{resumed}: {event.train_examples:,} training and "
            f"{event.test_examples:,} test examples; {format_count(params)} parameters "
            f"instead of {format_count(dense)} ({format_ratio(dense / max(params, 1))} smaller).",
        )
        for note in getattr(event, "notes", ()):  # adapted layers, weights, skipped images
            self.append_log("info", note)
        if getattr(event, "dense_test_acc", None) is not None:
            self.append_log(
                "info",
                "Before compression, the dense model with its pretrained "
                f"weights: {format_percent(event.dense_test_acc)} test accuracy.",
            )

    @Slot(object)
    def _on_batch(self, event: BatchEnded) -> None:
        epochs = max(self._total_epochs, event.epoch)
        total = max(epochs * event.batches, 1)
        done = (event.epoch - 1) * event.batches + event.batch
        if self.progress.maximum() != total:
            self.progress.setRange(0, total)
        self.progress.setValue(min(done, total))
        phase = " (dense pre-training)" if event.phase == PHASE_PRETRAIN else ""
        self._saw_batch = True
        self._progress_text = (
            f"epoch {event.epoch}/{epochs}{phase} · batch {event.batch}/{event.batches}"
            f" · loss {event.loss:.4f} · acc {format_percent(event.acc)}"
        )
        if self.session.state == "paused":
            self.progress_label.setText(f"{self._progress_text} · paused")
        else:
            self.progress_label.setText(
                f"{self._progress_text} · ETA {format_duration(event.eta_seconds)}"
            )
        if event.grad_norms:
            self.layers.set_grad_norms(event.grad_norms)
        self._batches_dirty = True

    @Slot(object)
    def _on_epoch(self, event: EpochEnded) -> None:
        history = self.session.history
        self.curves.show_batches(history)
        # One plot per turn of the event loop, a frame apart: the window stays responsive
        # while an epoch's curves repaint. The timer is the view's child, so nothing is
        # drawn after the view is gone; a newer epoch replaces steps not yet drawn.
        self._epoch_steps = list(self.curves.epoch_steps(history))
        self._epoch_timer.start()
        self._batches_dirty = False
        self.append_log(
            "info",
            f"Epoch {event.epoch}: train loss {event.train_loss:.4f}, acc "
            f"{format_percent(event.train_acc)}; test loss {event.test_loss:.4f}, acc "
            f"{format_percent(event.test_acc)} ({event.seconds:.1f} s)",
        )

    @Slot(object)
    def _on_checkpoint(self, event: CheckpointSaved) -> None:
        self.append_log("info", f"Saved the {event.kind} checkpoint (epoch {event.epoch}).")

    @Slot(object)
    def _on_run_ended(self, event: RunEnded) -> None:
        self._run_summary = dict(event.summary or {})

    @Slot(str)
    def _on_session_ended(self, status: str) -> None:
        self._redraw_timer.stop()
        self._epoch_steps.clear()  # drawn whole below
        self.curves.show(self.session.history)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        if status == RunStatus.FINISHED:
            self.progress.setValue(self.progress.maximum())
        self.progress.setFormat(f"{status} · %p %")
        if not self._saw_batch:  # "starting…" must not outlive a run that never started
            self.progress_label.setText(f"{status} before the first batch")
        elif status != RunStatus.FINISHED:
            self.progress_label.setText(f"{self._progress_text} · {status}")
        else:
            self.progress_label.setText(self._progress_text)
        self._run_summary.setdefault("status", status)
        best = self.session.history.best_test_acc()
        chance = self._chance_level()
        self.outcome = f"Run {status}."
        if status == RunStatus.FINISHED and chance and not best > 1.5 * chance:
            self.outcome = (
                f"Run finished, but the test accuracy stayed at chance level "
                f"({format_percent(best)}; guessing gives {format_percent(chance)})"
                ": the network learned nothing. Try a lower learning rate, a "
                "larger depth or more epochs."
            )
            self.append_log("warning", self.outcome)
        before = self._run_summary.get("dense_test_acc")
        before_text = (
            f" (dense with pretrained weights, before compression: {format_percent(before)})"
            if before is not None
            else ""
        )
        self.summary.setText(
            f"{self.outcome} Best test accuracy {format_percent(best)}"
            f"{before_text}.  Folder: {self.session.run_dir}"
        )
        self._on_state(self.session.state)
        self.outcome_shown.emit(self.outcome)

    def _chance_level(self) -> float:
        """1 / number of classes of the run's data set (asked of the engine), or 0."""
        config = self.session.config
        if config is None:
            return 0.0
        try:
            from engine.data import dataset_info

            return 1.0 / dataset_info(config.dataset).num_classes
        except Exception:  # an unknown data set: no judgement rather than a wrong one
            return 0.0

    @Slot(str, str)
    def append_log(self, level: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        colour = LOG_COLOURS.get(level, LOG_COLOURS["info"])
        html_text = text.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")
        self.log_view.appendHtml(f'<span style="color:{colour}">{stamp}  {html_text}</span>')
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)

    @Slot()
    def _next_epoch_step(self) -> None:
        if self._epoch_steps:
            self._epoch_steps.pop(0)()
        if not self._epoch_steps:
            self._epoch_timer.stop()

    @Slot()
    def _redraw_batches(self) -> None:
        if self._batches_dirty:
            self._batches_dirty = False
            self.curves.show_batches(self.session.history)

    # -- saving -----------------------------------------------------------------------

    def save_plots(self, folder: str | Path, fmt: str = "png") -> list[Path]:
        """Write every plot into ``folder``; raises OSError when a file cannot be written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            save_plot(plot, folder / f"{name}.{fmt}") for name, plot in self.curves.plots().items()
        ]

    def save_metrics_csv(self, path: str | Path) -> Path:
        self.session.history.to_csv(path)
        return Path(path)

    def save_plots_into(self, folder: str | Path) -> bool:
        """Save PNG and SVG of every plot; log and show what really happened."""
        try:
            saved = self.save_plots(folder, "png") + self.save_plots(folder, "svg")
        except OSError as exc:
            self._save_failed("Save plots", f"The plots were not saved in {folder}: {_reason(exc)}")
            return False
        self.append_log("info", f"Saved {len(saved)} plot files (PNG and SVG) in {folder}")
        return True

    def save_csv_to(self, path: str | Path) -> bool:
        try:
            self.save_metrics_csv(path)
        except OSError as exc:
            self._save_failed(
                "Save metrics", f"The metrics were not saved to {path}: {_reason(exc)}"
            )
            return False
        self.append_log("info", f"Saved metrics to {path}")
        return True

    def _save_failed(self, title: str, text: str) -> None:
        self.append_log("error", text)
        self.show_error(title, text)

    def _ask_save_plots(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Save plots into folder", last_folder("plots", self.session.run_dir or "")
        )
        if not folder:
            return
        if self.save_plots_into(folder):
            remember_folder("plots", folder)

    def _ask_save_csv(self) -> None:
        start = Path(last_folder("plots", self.session.run_dir or "")) / METRICS_FILE
        path, _ = QFileDialog.getSaveFileName(self, "Save metrics", str(start), "CSV files (*.csv)")
        if path and self.save_csv_to(path):
            remember_folder("plots", Path(path).parent)

    def _request_export(self) -> None:
        if self.session.run_dir is not None:
            self.export_requested.emit(str(self.session.run_dir))


NO_RUN_TEXT = "No run yet. Start one from <b>New compression</b>."


def _reason(exc: OSError) -> str:
    """An OSError in words, without its errno number (the message names the place)."""
    return (exc.strerror or str(exc)).lower() if exc.strerror else str(exc)


def _titled(title: str, widget: QWidget) -> QWidget:
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 4, 0, 0)
    label = QLabel(title)
    label.setObjectName("sectionTitle")
    layout.addWidget(label)
    layout.addWidget(widget)
    return box
