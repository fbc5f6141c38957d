"""The compression wizard: four pages with Back/Next that fill one RunConfig, then Start.

The wizard holds the configuration being edited; each page loads from it and applies its
widgets to it. Slow engine work (building the network to list its layers, downloading data)
runs in background tasks.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.choices import ABSURD_LEARNING_RATES, OPTIMIZER_TITLES
from engine.config import RunConfig
from ui.engine_catalog import EngineCatalog
from ui.messages import describe_exception
from ui.settings import last_folder, remember_folder
from ui.wizard import engine_calls
from ui.wizard.layer_plan_model import LayerPlanModel
from ui.wizard.layers_page import LayersPage
from ui.wizard.review_page import ReviewPage
from ui.wizard.source_page import SourcePage
from ui.wizard.training_page import TrainingPage
from ui.workers import BackgroundTask

SOURCE, LAYERS, TRAINING, REVIEW = range(4)
DEFAULT_PRESET = "lenet5-mnist"

# The keys of the run configuration the wizard's pages offer: the review shows these. Others
# show only when the configuration (a loaded file, a past run) sets them to something other
# than their default, so the review neither lists settings nobody can change here nor hides
# one that changes the run. The step schedule's keys belong to that schedule.
OFFERED_KEYS = (
    "name",
    "model",
    "dataset",
    "data_root",
    "layers",
    "init",
    "pretrain_epochs",
    "fit_steps",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "adtn_lr",
    "momentum",
    "schedule",
    "weight_decay",
    "seed",
    "device",
    "amp",
    "augment",
    "limit_train",
    "limit_test",
    "teacher",
)
STEP_SCHEDULE_KEYS = ("lr_milestones", "lr_gamma")
# a preset's blurb; Start never downloads; how the file is read, not what the run does
NEVER_REVIEWED = ("description", "download", "config_version")

# Learning rates from which training with each optimiser practically always diverges.
ABSURD_RATES = ABSURD_LEARNING_RATES


def rate_warning(config: RunConfig) -> str:
    """Why the configuration's learning rates look absurd for its optimiser ("" if not)."""
    limit = ABSURD_RATES.get(config.optimizer)
    if limit is None:
        return ""
    for label, rate in (("learning rate", config.lr), ("ADTN learning rate", config.adtn_lr)):
        if rate >= limit:
            return (
                f"The {label} is {rate:g}. With {OPTIMIZER_TITLES[config.optimizer]}, rates "
                f"of {limit:g} or more make the loss explode or leave the accuracy at chance "
                f"level (usual rates: 1e-4 to 1e-2). Start anyway?"
            )
    return ""


def reviewed_settings(values: dict, defaults: dict) -> dict:
    """The configuration's values for the review page: what the wizard offers, and whatever
    else differs from its default (``defaults``: a default RunConfig's values)."""
    offered = set(OFFERED_KEYS)
    if values.get("schedule") == "step":
        offered.update(STEP_SCHEDULE_KEYS)
    return {
        key: value
        for key, value in values.items()
        if key not in NEVER_REVIEWED and (key in offered or value != defaults.get(key, value))
    }


class StepLabel(QLabel):
    """A step of the wizard's header; clicking it opens that page."""

    clicked = Signal()

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt's name)
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(
            event.position().toPoint()
        ):
            self.clicked.emit()
        super().mouseReleaseEvent(event)


class CompressionWizard(QWidget):
    start_requested = Signal(object)  # the validated RunConfig
    page_changed = Signal(int)
    network_ready = Signal()  # the layer table holds the current network's layers

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.config = None  # the RunConfig being edited; set once the engine has loaded
        self._plan: engine_calls.NetworkPlan | None = None
        self._inspection: BackgroundTask | None = None
        self._download: BackgroundTask | None = None
        self._data_available = False
        self._problem = ""  # why the reviewed configuration cannot start ("" when it can)
        # Dialogs that tests replace: a notice, and a yes/no question before Start.
        self.show_message = self._open_notice
        self.compare_dialog = None  # the "Compare encodings" window, once opened
        self.notice: QMessageBox | None = None
        self.confirm_start = lambda title, text: (
            QMessageBox.question(
                self,
                title,
                text,
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            == QMessageBox.StandardButton.Yes
        )

        self.layer_model = LayerPlanModel(self)
        self.source_page = SourcePage()
        self.layers_page = LayersPage(self.layer_model)
        self.training_page = TrainingPage()
        self.review_page = ReviewPage()
        self.pages = (self.source_page, self.layers_page, self.training_page, self.review_page)

        self.step_labels = []
        steps = QHBoxLayout()
        for number, page in enumerate(self.pages, start=1):
            label = StepLabel(f"{number}  {page.title}")
            label.setObjectName("wizardStep")
            label.setToolTip(f"Go to {page.title}")
            label.clicked.connect(lambda index=number - 1: self.go_to(index))
            self.step_labels.append(label)
            steps.addWidget(label)
        steps.addStretch(1)
        self.subtitle = QLabel()
        self.subtitle.setObjectName("hintLabel")
        self.subtitle.setWordWrap(True)

        self.stack = QStackedWidget()
        for page in self.pages:
            self.stack.addWidget(page)
        self.loading = QLabel("Loading the engine (PyTorch)…")
        self.loading.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.stack.addWidget(self.loading)
        self.stack.setCurrentWidget(self.loading)

        self.back_button = QPushButton("< Back")
        self.next_button = QPushButton("Next >")
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("primaryButton")
        self.next_button.setDefault(True)
        nav = QHBoxLayout()
        nav.addStretch(1)
        nav.addWidget(self.back_button)
        nav.addWidget(self.next_button)
        nav.addWidget(self.start_button)

        layout = QVBoxLayout(self)
        layout.addLayout(steps)
        layout.addWidget(self.subtitle)
        layout.addWidget(self.stack, 1)
        layout.addLayout(nav)

        self.back_button.clicked.connect(self.go_back)
        self.next_button.clicked.connect(self.go_next)
        self.start_button.clicked.connect(self.request_start)
        self.source_page.preset_chosen.connect(self.load_preset)
        self.source_page.data_root_changed.connect(self._check_data)
        self.source_page.download_requested.connect(self.download_data)
        self.review_page.name_edited.connect(self._refresh_review)
        self.review_page.save_requested.connect(self.ask_save_config)
        self.review_page.compare_requested.connect(self.open_compare)
        self.layer_model.totals_changed.connect(self._layers_edited)
        self._update_nav()

    def show_loading(self, text: str) -> None:
        """What the engine is loading now (shown until the first page appears)."""
        self.loading.setText(text)

    def _open_notice(self, title: str, text: str) -> None:
        """A window-modal notice that does not block (the event loop keeps running)."""
        box = QMessageBox(
            QMessageBox.Icon.Information, title, text, QMessageBox.StandardButton.Ok, self
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self.notice = box

    # -- set-up -------------------------------------------------------------------------

    def set_catalog(self, catalog: EngineCatalog, model_titles: dict[str, str]) -> None:
        """The engine has loaded: fill the combos and show the first page with a preset."""
        self.catalog = catalog
        self.source_page.set_catalog(catalog, model_titles)
        self.training_page.set_catalog(catalog)
        self.reset()

    def reset(self) -> None:
        """Start over: the default preset on every page, the first page shown."""
        if getattr(self, "catalog", None) is None:
            return  # the engine is still loading; the wizard is empty anyway
        names = [name for name, _ in self.catalog.presets]
        if names:
            self.load_preset(DEFAULT_PRESET if DEFAULT_PRESET in names else names[0])
        else:
            self.load_config(engine_calls.default_config())
        self.show_page(SOURCE)

    @Slot(str)
    def load_preset(self, name: str) -> None:
        try:
            config = engine_calls.load_preset(name)
        except Exception as exc:  # a broken preset file must not take the window down
            QMessageBox.warning(self, "Preset", describe_exception(exc))
            return
        self.load_config(config, preset=name)

    def load_config(self, config, preset: str = "") -> None:
        """Show ``config`` on every page (a preset, or a past run's config to rerun)."""
        self.config = config
        self.source_page.show_preset(preset)
        for page in self.pages:
            if page is not self.layers_page:
                page.load(config)
        if self._plan is not None and (self._plan.model, self._plan.dataset) == (
            config.model,
            config.dataset,
        ):
            self._show_plan()
        self._check_data()

    def current_config(self):
        """The configuration as the pages show it now."""
        config = self.config
        for page in (self.source_page, self.training_page, self.review_page):
            config = page.apply(config)
        if self._plan_matches(config):
            config = config.replace(layers=self.layer_model.specs())
        return config

    # -- navigation ---------------------------------------------------------------------

    def current_page(self) -> int:
        widget = self.stack.currentWidget()
        return self.pages.index(widget) if widget in self.pages else -1

    def show_page(self, index: int) -> None:
        if index == LAYERS:
            self._ensure_network()
        if index == REVIEW:
            self._refresh_review()
        self.stack.setCurrentWidget(self.pages[index])
        self.subtitle.setText(self.pages[index].subtitle)
        for number, label in enumerate(self.step_labels):
            label.setProperty("current", number == index)
            label.style().unpolish(label)
            label.style().polish(label)
        self._update_nav()
        self.page_changed.emit(index)

    @Slot()
    def go_next(self) -> None:
        page = self.current_page()
        if 0 <= page < REVIEW and self.next_button.isEnabled():
            self.config = self.current_config()
            self.show_page(page + 1)

    def go_to(self, index: int) -> None:
        """Jump to a page (a click on its step label), keeping what the pages show."""
        if self.config is None or index == self.current_page():
            return
        self.config = self.current_config()
        self.show_page(index)

    @Slot()
    def go_back(self) -> None:
        page = self.current_page()
        if page > 0:
            self.config = self.current_config()
            self.show_page(page - 1)

    @Slot()
    def request_start(self) -> None:
        if self.config is None:
            return
        config = self.current_config()
        _, problem = engine_calls.config_toml(config)
        if problem:
            self.show_page(REVIEW)
            return
        self.config = config
        try:
            available, text = engine_calls.dataset_status(config)
        except Exception as exc:
            available, text = False, describe_exception(exc)
        if not available:
            # Start never downloads: the Download button does, when the user asks.
            self.show_page(SOURCE)
            where = text.split(". ")[0].rstrip(".") + "."  # what is missing, not how to fix
            self.show_message(
                "Data set missing",
                f"{where}\n\nNothing was downloaded. Click "
                "Download on this page to fetch it, or Browse… to the folder "
                "that holds a copy; then start again.",
            )
            return
        warning = rate_warning(config)
        if warning and not self.confirm_start("Learning rate", warning):
            self.show_page(TRAINING)
            return
        self.start_requested.emit(config.replace(download=False))

    @Slot()
    def open_compare(self) -> None:
        """ "Compare encodings": the layers chosen here, every encoding, equal budgets."""
        if self.config is None:
            return
        config = self.current_config()
        _, problem = engine_calls.config_toml(config)
        if problem or not config.layers:
            self.show_message(
                "Compare encodings",
                problem
                or "Tick at least one layer to "
                "encode on the Layers page; the comparison encodes those layers.",
            )
            return
        from engine.paths import default_runs_root
        from ui.compare_dialog import CompareDialog

        self.compare_dialog = CompareDialog(
            config.replace(download=False), default_runs_root(), self
        )
        self.compare_dialog.show()

    def _update_nav(self) -> None:
        page = self.current_page()
        busy = self._inspection is not None
        self.back_button.setEnabled(page > 0)
        self.next_button.setVisible(page != REVIEW)
        self.next_button.setEnabled(0 <= page < REVIEW and not (page == LAYERS and busy))
        # Start works from any page (it validates first); on the review page a known problem
        # disables it, with the reason shown above.
        blocked = page == REVIEW and bool(self._problem)
        self.start_button.setEnabled(self.config is not None and not busy and not blocked)

    # -- the layer table ----------------------------------------------------------------

    def _plan_matches(self, config) -> bool:
        return self._plan is not None and (self._plan.model, self._plan.dataset) == (
            config.model,
            config.dataset,
        )

    def _ensure_network(self) -> None:
        """Build the chosen network in the background unless the table already shows it."""
        if self._plan_matches(self.config):
            return
        if self._inspection is not None:
            return  # when the inspection ends it checks again
        self.layer_model.clear()
        self.layers_page.set_status(f"Building {self.config.model} for {self.config.dataset}…")
        model, dataset = self.config.model, self.config.dataset
        self._inspection = BackgroundTask(
            lambda _report: engine_calls.inspect_network(model, dataset), self
        )
        self._inspection.succeeded.connect(self._on_network_inspected)
        self._inspection.failed.connect(self._on_inspection_failed)
        self._inspection.ended.connect(self._on_inspection_ended)
        self._inspection.start()
        self._update_nav()

    @Slot(object)
    def _on_network_inspected(self, plan: engine_calls.NetworkPlan) -> None:
        self._plan = plan

    @Slot(object)
    def _on_inspection_failed(self, exc: Exception) -> None:
        self.layers_page.set_status(f"Could not build the network: {describe_exception(exc)}")

    @Slot()
    def _on_inspection_ended(self) -> None:
        self._inspection = None
        if self._plan_matches(self.config):
            self._show_plan()
        elif self.current_page() == LAYERS:
            self._ensure_network()  # the user changed network while it was building
        self._update_nav()

    def _show_plan(self) -> None:
        self.layers_page.set_status("")
        self.layer_model.set_layers(
            list(self._plan.layers), self._plan.planner, engine_calls.layer_spec, self.config.layers
        )
        self.layers_page.set_recommendation(
            *engine_calls.measured_recommendations(self._plan.model, self._plan.dataset)
        )
        self.network_ready.emit()

    @Slot()
    def _layers_edited(self) -> None:
        if self.config is not None and self._plan_matches(self.config):
            self.config = self.config.replace(layers=self.layer_model.specs())

    # -- data ---------------------------------------------------------------------------

    @Slot()
    def _check_data(self) -> None:
        if self.config is None or self._download is not None:
            return
        config = self.source_page.apply(self.config)
        try:
            available, text = engine_calls.dataset_status(config)
        except Exception as exc:
            available, text = False, describe_exception(exc)
        self._data_available = available
        self.source_page.show_data_status(available, text)

    @Slot()
    def download_data(self) -> None:
        if self._download is not None or self.config is None:
            return
        config = self.source_page.apply(self.config)
        self.source_page.set_downloading(True)
        self.source_page.show_download_progress(-1.0, "connecting…")
        self._download = BackgroundTask(lambda report: engine_calls.download(config, report), self)
        self._download.progressed.connect(self.source_page.show_download_progress)
        self._download.failed.connect(self._on_download_failed)
        self._download.ended.connect(self._on_download_ended)
        self._download.start()

    @Slot(object)
    def _on_download_failed(self, exc: Exception) -> None:
        QMessageBox.warning(self, "Download failed", describe_exception(exc))

    @Slot()
    def _on_download_ended(self) -> None:
        self._download = None
        self.source_page.set_downloading(False)
        self._check_data()

    # -- review -------------------------------------------------------------------------

    @Slot()
    def _refresh_review(self) -> None:
        if self.config is None:
            return
        import tomli_w

        self.config = self.current_config()
        _, self._problem = engine_calls.config_toml(self.config)
        defaults = engine_calls.default_config().to_dict()
        text = tomli_w.dumps(reviewed_settings(self.config.to_dict(), defaults))
        self.review_page.show_config(text, self._problem)
        self._update_nav()

    def save_config(self, path: str | Path) -> Path:
        self.config = self.current_config()
        self.config.save(path)
        return Path(path)

    @Slot()
    def ask_save_config(self) -> None:
        if self.config is None:
            return  # the engine has not loaded yet: there is nothing to save
        config = self.current_config()
        start = Path(last_folder("configs", Path.home())) / f"{config.run_name}.toml"
        path, _ = QFileDialog.getSaveFileName(
            self, "Save run configuration", str(start), "TOML files (*.toml)"
        )
        if path:
            remember_folder("configs", Path(path).parent)
            self.save_config(path)

    def wait_for_tasks(self, timeout_ms: int = 30_000) -> None:
        """Let background tasks end (window closing)."""
        for task in (self._inspection, self._download):
            if task is not None:
                task.wait(timeout_ms)
