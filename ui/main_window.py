"""The main window: sidebar pages (wizard, monitor, runs), menus, toolbar and status bar.

It wires models to views and owns the application's lifetime rules: the window paints
first, then the plot pages (pyqtgraph) are built and the engine (PyTorch) loads in the
background; closing during a run asks, stops the trainer cleanly (it keeps its last
checkpoint) and waits for the worker thread.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QEvent, QSize, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QWidget,
)

from engine.choices import MODEL_TITLES  # torch-free, like the two below
from engine.config import RunConfig
from engine.paths import RunPaths
from ui.about import HELP_DOCUMENTS, open_document, show_about
from ui.engine_catalog import EngineCatalog, load_catalog
from ui.messages import describe_exception
from ui.resources import icon
from ui.settings import app_settings, last_folder, remember_folder
from ui.training_session import TrainingSession
from ui.wizard.wizard import CompressionWizard
from ui.workers import BackgroundTask

WIZARD_PAGE, MONITOR_PAGE, RUNS_PAGE = range(3)
PAGE_TITLES = ("New compression", "Training monitor", "Runs")
PAGE_ICONS = ("page-wizard", "page-monitor", "page-runs")


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("ADTN Studio")
        self.setWindowIcon(icon("adtn-studio"))
        self.catalog: EngineCatalog | None = None
        self.device_text = "detecting…"
        self._engine_task: BackgroundTask | None = None
        self.failure_box: QMessageBox | None = None  # the last "training stopped" notice

        self.session = TrainingSession(self)
        self.wizard = CompressionWizard()
        self.monitor = None  # MonitorView and RunsView, built after the first paint
        self.runs_view = None
        self._start_up_pending = False

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setIconSize(QSize(22, 22))
        self.sidebar.setFixedWidth(215)
        self.sidebar.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.sidebar.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        for title, icon_name in zip(PAGE_TITLES, PAGE_ICONS):
            QListWidgetItem(icon(icon_name), title, self.sidebar)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.wizard)
        for _ in PAGE_TITLES[1:]:
            self.pages.addWidget(QLabel("Loading…", alignment=Qt.AlignmentFlag.AlignCenter))
        self.sidebar.currentRowChanged.connect(self._show_page)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self._create_actions()
        self._create_menus_and_toolbar()
        self.device_label = QLabel()
        self.statusBar().addPermanentWidget(self.device_label)
        self._show_device()

        self.wizard.start_requested.connect(self.start_run)
        self.session.state_changed.connect(self._on_session_state)
        self.session.ended.connect(self._on_session_ended)
        self.session.run_failed.connect(self._on_run_failed)

        self.sidebar.setCurrentRow(WIZARD_PAGE)
        self._restore_geometry()
        self._on_session_state(self.session.state)

    # -- actions, menus, toolbar --------------------------------------------------------

    def _action(self, text: str, slot, shortcuts=(), icon_name: str = "", tip: str = "") -> QAction:
        action = QAction(text, self)
        if icon_name:
            action.setIcon(icon(icon_name))
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
        action.setStatusTip(tip or text.replace("&", ""))  # "&" only marks the access key
        action.triggered.connect(slot)
        return action

    def _create_actions(self) -> None:
        self.new_action = self._action(
            "&New compression",
            self.new_compression,
            ["Ctrl+N"],
            "page-wizard",
            "Start a new compression from the default preset",
        )
        self.open_config_action = self._action(
            "&Open config…",
            self._ask_open_config,
            ["Ctrl+O"],
            "",
            "Load a run configuration (TOML)",
        )
        self.save_config_action = self._action(
            "&Save config…", self.wizard.ask_save_config, ["Ctrl+S"]
        )
        self.export_action = self._action(
            "&Export model…",
            self._export_current,
            ["Ctrl+E"],
            "export",
            "Export the model of the current run",
        )
        self.quit_action = self._action("&Quit", self.close, [QKeySequence.StandardKey.Quit])
        self.start_action = self._action(
            "&Start training",
            self.wizard.request_start,
            ["Ctrl+R"],
            "start",
            "Start training (Ctrl+R)",
        )
        self.pause_action = self._action(
            "&Pause",
            self.session.pause,
            ["Ctrl+P"],
            "pause",
            "Pause after the current batch (Ctrl+P)",
        )
        self.resume_action = self._action(
            "&Resume",
            self._resume,
            ["Ctrl+Shift+P"],
            "resume",
            "Resume a paused run, or continue a "
            "stopped one from its last checkpoint "
            "(Ctrl+Shift+P)",
        )
        self.stop_action = self._action(
            "S&top",
            self.session.stop,
            ["Ctrl+.", "Esc"],
            "stop",
            "Stop after the current batch, keeping the last checkpoint (Ctrl+. or Esc)",
        )
        self.page_actions = [
            self._action(title, lambda _=False, i=i: self.show_page(i), [f"Ctrl+{i + 1}"])
            for i, title in enumerate(PAGE_TITLES)
        ]
        self.about_action = self._action("&About ADTN Studio", self.show_about)
        self.help_actions = [
            self._action(
                text, lambda _=False, name=name: open_document(self, name), tip=f"Open docs/{name}"
            )
            for text, name in HELP_DOCUMENTS
        ]

    def _create_menus_and_toolbar(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for action in (self.new_action, self.open_config_action, self.save_config_action):
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        run_menu = menu.addMenu("&Run")
        for action in (self.start_action, self.pause_action, self.resume_action, self.stop_action):
            run_menu.addAction(action)
        view_menu = menu.addMenu("&View")
        for action in self.page_actions:
            view_menu.addAction(action)
        help_menu = menu.addMenu("&Help")
        for action in self.help_actions:
            help_menu.addAction(action)
        help_menu.addSeparator()
        help_menu.addAction(self.about_action)

        toolbar = self.addToolBar("Run")
        toolbar.setObjectName("runToolbar")
        toolbar.setMovable(False)
        toolbar.setIconSize(QSize(20, 20))
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (
            self.new_action,
            self.start_action,
            self.pause_action,
            self.resume_action,
            self.stop_action,
            self.export_action,
        ):
            toolbar.addAction(action)

    # -- pages --------------------------------------------------------------------------

    def show_page(self, index: int) -> None:
        self.sidebar.setCurrentRow(index)

    def new_compression(self) -> None:
        """File ▸ New compression: the wizard starts over from the default preset."""
        self.wizard.reset()
        self.show_page(WIZARD_PAGE)

    @Slot(int)
    def _show_page(self, index: int) -> None:
        self.pages.setCurrentIndex(index)
        if index == RUNS_PAGE and self.runs_view is not None:
            self.runs_view.refresh()

    # -- the engine, loaded after the window shows -----------------------------------------

    def load_engine(self) -> None:
        """Finish start-up once the window has painted: plot pages, then the engine."""
        self._start_up_pending = True
        self.update()  # make sure a paint follows, even if the window has painted already

    def event(self, event: QEvent) -> bool:
        handled = super().event(event)
        if event.type() == QEvent.Type.Paint and self._start_up_pending:
            self._start_up_pending = False
            QTimer.singleShot(0, self._finish_start_up)  # after this frame reaches the screen
        return handled

    def _finish_start_up(self) -> None:
        # The engine loads in its thread while this one builds the plot pages: the status
        # bar names each loading step from the start, and the two overlap.
        self._start_engine_task()
        self._build_plot_pages()

    def _build_plot_pages(self) -> None:
        # pyqtgraph takes a good part of a second to import: it loads after the first paint.
        from ui.monitor.monitor_view import MonitorView
        from ui.runs.runs_view import RunsView

        self.monitor = MonitorView(self.session)
        self.runs_view = RunsView()
        for index, page in ((MONITOR_PAGE, self.monitor), (RUNS_PAGE, self.runs_view)):
            placeholder = self.pages.widget(index)
            self.pages.insertWidget(index, page)
            self.pages.removeWidget(placeholder)
            placeholder.deleteLater()
        self.pages.setCurrentIndex(self.sidebar.currentRow())
        self.monitor.export_requested.connect(self.open_export_dialog)
        self.monitor.resume_requested.connect(self.resume_run)
        self.runs_view.resume_requested.connect(self.resume_run)
        self.runs_view.refreshed.connect(self._offer_latest_run)
        self.monitor.outcome_shown.connect(lambda text: self.statusBar().showMessage(text, 10_000))
        self.runs_view.rerun_requested.connect(self.rerun_config)
        self.runs_view.export_requested.connect(self.open_export_dialog)

    def _start_engine_task(self) -> None:
        self.show_loading(-1.0, "Loading the engine…")
        self._engine_task = BackgroundTask(load_catalog, self)
        self._engine_task.progressed.connect(self.show_loading)
        self._engine_task.succeeded.connect(self._on_engine_loaded)
        self._engine_task.failed.connect(self._on_engine_failed)
        self._engine_task.start()

    @Slot(float, str)
    def show_loading(self, _fraction: float, text: str) -> None:
        """What the engine is loading now, in the status bar and on the wizard's page."""
        self.statusBar().showMessage(text)
        self.wizard.show_loading(text)

    @Slot()
    def _offer_latest_run(self) -> None:
        """After a restart the monitor points at the newest run instead of "No run yet"."""
        if self.monitor is not None and self.session.run_dir is None and self.runs_view.model.rows:
            self.monitor.show_latest_run(self.runs_view.model.rows[0])

    @Slot(object)
    def _on_engine_loaded(self, catalog: EngineCatalog) -> None:
        self.catalog = catalog
        self.device_text = catalog.default_device
        self._show_device()
        self.wizard.set_catalog(catalog, MODEL_TITLES)
        self.statusBar().showMessage("Ready.", 5000)
        if self.runs_view is not None:
            self.runs_view.refresh()  # lists past runs, so the monitor can point at the latest

    @Slot(object)
    def _on_engine_failed(self, exc: Exception) -> None:
        self.statusBar().showMessage("The engine failed to load.")
        QMessageBox.critical(self, "Engine", describe_exception(exc))

    def _show_device(self) -> None:
        self.device_label.setText(f"Device: {self.device_text}")

    # -- runs ---------------------------------------------------------------------------

    @Slot(object)
    def start_run(
        self, config: RunConfig, run_dir: str | Path | None = None, resume: bool = False
    ) -> None:
        if self.session.is_active():
            QMessageBox.information(
                self,
                "Training",
                "A run is already in progress. Stop it first, or wait for it to finish.",
            )
            return
        # The window downloads only when asked (the Download button): a run started or resumed
        # here never fetches a data set by itself, whatever its configuration says.
        config = config.replace(download=False)
        try:
            config.validate()  # before a run folder is made: a refused run leaves none
        except Exception as exc:
            QMessageBox.warning(self, "Training", describe_exception(exc))
            return
        if run_dir is None:
            from engine.runs import new_run_dir

            run_dir = new_run_dir(config)
        self.monitor.begin(f"<b>{config.run_name}</b> · {config.model} on {config.dataset}")
        try:
            self.session.start(config, run_dir, resume=resume)
        except Exception as exc:
            QMessageBox.critical(self, "Training", describe_exception(exc))
            return
        self.show_page(MONITOR_PAGE)

    def _resume(self) -> None:
        if self.session.state == "paused":
            self.session.resume()
        elif self.monitor is not None and self.monitor.can_resume():
            self.resume_run(str(self.session.run_dir))

    @Slot(str)
    def resume_run(self, run_dir: str) -> None:
        try:
            config = RunConfig.load(RunPaths(Path(run_dir)).config)
        except Exception as exc:
            QMessageBox.warning(self, "Resume", describe_exception(exc))
            return
        self.start_run(config, run_dir, resume=True)

    @Slot(object)
    def rerun_config(self, config: RunConfig) -> None:
        self.wizard.load_config(config)
        self.wizard.show_page(0)
        self.show_page(WIZARD_PAGE)

    @Slot(str)
    def _on_session_state(self, state: str) -> None:
        active = state in ("running", "paused", "stopping")
        self.start_action.setEnabled(not active)
        self.pause_action.setEnabled(state == "running")
        self.resume_action.setEnabled(
            state == "paused"
            or (not active and self.monitor is not None and self.monitor.can_resume())
        )
        self.stop_action.setEnabled(state in ("running", "paused"))
        self.export_action.setEnabled(
            self.session.run_dir is not None
            and not active
            and self.monitor is not None
            and self.monitor.has_checkpoint()
        )
        self.statusBar().showMessage(
            {"running": "Training…", "paused": "Paused.", "stopping": "Stopping…"}.get(state, "")
        )

    @Slot(str)
    def _on_session_ended(self, status: str) -> None:
        self.statusBar().showMessage(f"Run {status}.", 10_000)  # the monitor may say more
        self._on_session_state(self.session.state)  # Export follows the checkpoint just written
        self.runs_view.refresh()

    @Slot(str)
    def _on_run_failed(self, text: str) -> None:
        # Window-modal and opened without blocking: the log keeps the text, the run is over.
        box = QMessageBox(
            QMessageBox.Icon.Warning, "Training stopped", text, QMessageBox.StandardButton.Ok, self
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self.failure_box = box

    # -- export and configs -------------------------------------------------------------

    def _export_current(self) -> None:
        if self.session.run_dir is not None:
            self.open_export_dialog(str(self.session.run_dir))

    @Slot(str)
    def open_export_dialog(self, run_dir: str):
        from ui.export_dialog import ExportDialog

        dialog = ExportDialog(Path(run_dir), self)
        dialog.open()
        return dialog

    def _ask_open_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open run configuration",
            last_folder("configs", Path.home()),
            "TOML files (*.toml)",
        )
        if not path:
            return
        remember_folder("configs", Path(path).parent)

        try:
            self.rerun_config(RunConfig.load(path))
        except Exception as exc:
            QMessageBox.warning(self, "Open config", describe_exception(exc))

    def show_about(self) -> None:
        show_about(self, self.catalog, self.device_text)

    # -- window lifetime ----------------------------------------------------------------

    def _restore_geometry(self) -> None:
        geometry = app_settings().value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 880)

    def confirm_stop_on_close(self) -> bool:
        """Ask whether to stop the running training (tests replace this)."""
        answer = QMessageBox.question(
            self,
            "Training in progress",
            "A run is still training. Stop it and quit? The last checkpoint is kept, and "
            "the run can be resumed later from the Runs page.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.session.is_active():
            if not self.confirm_stop_on_close():
                event.ignore()
                return
            self.statusBar().showMessage("Stopping the run…")
            self.session.stop_and_wait()
        self.wizard.wait_for_tasks()
        if self._engine_task is not None:
            self._engine_task.wait()
        app_settings().setValue("window/geometry", self.saveGeometry())
        event.accept()
