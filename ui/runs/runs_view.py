"""The Runs page: the runs folder as a table, a run's curves, overlays and a scatter.

Listing runs goes through the engine (``engine.runs.list_runs``) in a background task, since
the engine imports PyTorch; curves come from each run's ``metrics.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pyqtgraph as pg
from PySide6.QtCore import QFileSystemWatcher, QSortFilterProxyModel, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine.config import RunConfig  # torch-free
from engine.paths import RunPaths
from ui.runs.run_table_model import RunTableModel, resumable
from ui.messages import describe_exception
from ui.metric_history import MetricHistory
from ui.plots import (
    LEGEND_BOTTOM_RIGHT,
    PALETTE,
    RunCurves,
    decade_ticks,
    finite_points,
    new_plot,
)
from ui.workers import BackgroundTask

if TYPE_CHECKING:  # engine.runs loads PyTorch; it is imported in the listing task
    from engine.runs import RunRecord


WATCH_DELAY_MS = 300  # a new run folder is listed this long after it appears
POLL_INTERVAL_MS = 5000


def _list_runs(_report):
    from engine.runs import list_runs

    return list_runs()


def read_history(run_dir: str | Path) -> MetricHistory:
    path = RunPaths(Path(run_dir)).metrics
    return MetricHistory.from_csv(path) if path.is_file() else MetricHistory()


class RunsView(QWidget):
    """The Runs page: every run folder under the runs root, its curves and comparisons."""

    resume_requested = Signal(str)  # run folder
    rerun_requested = Signal(object)  # the run's RunConfig, for the wizard
    export_requested = Signal(str)  # run folder
    refreshed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._task: BackgroundTask | None = None
        self._refresh_again = False
        self.model = RunTableModel(self)
        proxy = QSortFilterProxyModel(self)
        proxy.setSourceModel(self.model)
        proxy.setSortRole(Qt.ItemDataRole.DisplayRole)
        self.proxy = proxy

        self.table = QTableView()
        self.table.setModel(proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.doubleClicked.connect(lambda _index: self.tabs.setCurrentIndex(0))

        self.folder_label = QLabel("")
        self.folder_label.setObjectName("hintLabel")
        self.refresh_button = QPushButton("Refresh")
        self.resume_button = QPushButton("Resume")
        self.rerun_button = QPushButton("Open in wizard")
        self.export_button = QPushButton("Export…")
        self.refresh_button.clicked.connect(self.refresh)
        self.resume_button.clicked.connect(self._resume_selected)
        self.rerun_button.clicked.connect(self._rerun_selected)
        self.export_button.clicked.connect(self._export_selected)

        self.curves = RunCurves()
        curves_page = QWidget()
        curves_layout = QHBoxLayout(curves_page)
        for widget in self.curves.widgets():
            curves_layout.addWidget(widget)

        self.overlay_acc = new_plot("Test accuracy of the selected runs", "accuracy (%)",
                                    legend=LEGEND_BOTTOM_RIGHT)
        self.overlay_loss = new_plot("Test loss of the selected runs", "cross-entropy")
        compare_page = QWidget()
        compare_layout = QHBoxLayout(compare_page)
        compare_layout.addWidget(self.overlay_acc)
        compare_layout.addWidget(self.overlay_loss)

        # x is log10(parameters) on a linear axis, labelled in powers of ten, so the scatter
        # and its run-name labels share one coordinate system.
        self.scatter_plot = new_plot("Parameters against best test accuracy, all runs",
                                     "best test accuracy (%)", x_label="parameters (log scale)",
                                     legend=LEGEND_BOTTOM_RIGHT)
        self._fronts: list = []  # one Pareto-front line per encoding
        self._scatter_labels: list[pg.TextItem] = []
        self._scatter = pg.ScatterPlotItem(size=10, pen=pg.mkPen("#333", width=0.8),
                                           brush=pg.mkBrush(PALETTE[0]), hoverable=True,
                                           tip=self._scatter_tip)
        self.scatter_plot.getPlotItem().addItem(self._scatter)

        self.tabs = QTabWidget()
        self.tabs.addTab(curves_page, "Curves")
        self.tabs.addTab(compare_page, "Compare selected")
        self.tabs.addTab(self.scatter_plot, "Parameters vs accuracy")

        buttons = QHBoxLayout()
        buttons.addWidget(self.folder_label, 1)
        for button in (self.refresh_button, self.resume_button, self.rerun_button,
                       self.export_button):
            buttons.addWidget(button)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)

        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(splitter, 1)

        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self._on_selection()

        # New runs appear by themselves: a watcher on the runs folder sees a run folder
        # created, and a slow timer catches what it cannot see (a run's status changing
        # inside its folder, a runs folder created later). Both only while the page shows.
        self._watcher = QFileSystemWatcher(self)
        self._watcher.directoryChanged.connect(lambda _path: self._soon.start())
        self._soon = QTimer(self)
        self._soon.setSingleShot(True)
        self._soon.setInterval(WATCH_DELAY_MS)
        self._soon.timeout.connect(self.refresh)
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_INTERVAL_MS)
        self._poll.timeout.connect(self.refresh)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self._watch_runs_root()
        self._poll.start()
        self.refresh()

    def hideEvent(self, event) -> None:  # noqa: N802
        super().hideEvent(event)
        self._poll.stop()

    def _watch_runs_root(self) -> None:
        from engine.paths import default_runs_root

        root = str(default_runs_root())
        if root not in self._watcher.directories() and Path(root).is_dir():
            if self._watcher.directories():
                self._watcher.removePaths(self._watcher.directories())
            self._watcher.addPath(root)

    # -- listing ------------------------------------------------------------------------

    @Slot()
    def refresh(self) -> None:
        if self._task is not None:
            self._refresh_again = True  # a run finished while listing: list once more
            return
        self._task = BackgroundTask(_list_runs, self)
        self._task.succeeded.connect(self._on_listed)
        self._task.failed.connect(self._on_list_failed)
        self._task.ended.connect(self._on_listing_ended)
        self._task.start()

    @Slot(object)
    def _on_listed(self, records: list) -> None:
        if records == self.model.rows and self.folder_label.text():
            return  # nothing changed: keep the selection, scroll position and plots as they are
        selected = {run.path for run in self.selected_runs()}
        self.model.set_rows(records)
        from engine.paths import default_runs_root

        count = f"{len(records)} run" + ("" if len(records) == 1 else "s")
        self.folder_label.setText(f"{count} in {default_runs_root()}")
        self._watch_runs_root()
        selection = self.table.selectionModel()
        for row, run in enumerate(records):
            if run.path in selected:
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                selection.select(index, selection.SelectionFlag.Select
                                 | selection.SelectionFlag.Rows)
        if records and not selection.hasSelection():
            self.table.selectRow(0)  # the newest run, so its curves show at once
        self._update_scatter()
        self._on_selection()

    @Slot(object)
    def _on_list_failed(self, exc: Exception) -> None:
        self.folder_label.setText(f"Could not list runs: {describe_exception(exc)}")

    @Slot()
    def _on_listing_ended(self) -> None:
        self._task = None
        if self._refresh_again:
            self._refresh_again = False
            self.refresh()
        else:
            self.refreshed.emit()

    # -- selection ----------------------------------------------------------------------

    def selected_runs(self) -> list[RunRecord]:
        rows = sorted({self.proxy.mapToSource(index).row()
                       for index in self.table.selectionModel().selectedRows()})
        return [self.model.rows[row] for row in rows]

    def select_run(self, path: str, extend: bool = False) -> None:
        selection = self.table.selectionModel()
        for row, run in enumerate(self.model.rows):
            if run.path == str(path):
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                flags = selection.SelectionFlag.Select | selection.SelectionFlag.Rows
                if not extend:
                    flags |= selection.SelectionFlag.Clear
                selection.select(index, flags)
                return
        raise KeyError(path)

    @Slot()
    def _on_selection(self) -> None:
        runs = self.selected_runs()
        current = runs[0] if runs else None
        self.resume_button.setEnabled(len(runs) == 1 and resumable(current))
        self.rerun_button.setEnabled(len(runs) == 1)
        self.export_button.setEnabled(len(runs) == 1 and current.epochs_completed > 0)
        self.curves.show(read_history(current.path) if current else MetricHistory())
        self._update_overlay(runs)
        if len(runs) > 1 and self.tabs.currentIndex() == 0:
            self.tabs.setCurrentIndex(1)

    def _update_overlay(self, runs: list) -> None:
        for plot in (self.overlay_acc, self.overlay_loss):
            item = plot.getPlotItem()
            item.clear()
            item.legend.clear()
        for number, run in enumerate(runs):
            history = read_history(run.path)
            colour = PALETTE[number % len(PALETTE)]
            pen = pg.mkPen(colour, width=2)
            label = f"{run.name} ({run.started_at[5:16].replace('T', ' ')})"
            epochs = history.column("epoch")
            acc = [100 * a for a in history.column("test_acc")]
            self.overlay_acc.getPlotItem().plot(*finite_points(epochs, acc), pen=pen,
                                                symbol="o", symbolSize=5, symbolBrush=colour,
                                                name=label)
            self.overlay_loss.getPlotItem().plot(
                *finite_points(epochs, history.column("test_loss")), pen=pen, symbol="o",
                symbolSize=5, symbolBrush=colour, name=label)

    def overlay_curve_count(self) -> int:
        return len(self.overlay_acc.getPlotItem().listDataItems())

    def _update_scatter(self) -> None:
        from engine.compare_report import pareto_front  # torch-free

        runs = [run for run in self.model.rows if run.params_total and run.epochs_completed]
        points = [dict(pos=(math.log10(run.params_total), 100 * run.best_test_acc), data=run,
                       brush=pg.mkBrush(self.encoding_colour(run.encoding)))
                  for run in runs]
        self._scatter.setData(points)
        item = self.scatter_plot.getPlotItem()
        # Per encoding, the runs no other run of that encoding beats with fewer parameters.
        for line in self._fronts:
            item.removeItem(line)
        self._fronts = []
        if item.legend is not None:
            item.legend.clear()
        for encoding in sorted({run.encoding for run in runs}):
            front = pareto_front([p["pos"] for p in points if p["data"].encoding == encoding])
            colour = self.encoding_colour(encoding)
            line = item.plot(*zip(*front), pen=pg.mkPen(colour, width=1.5), name=encoding)
            self._fronts.append(line)
        for label in self._scatter_labels:
            item.removeItem(label)
        self._scatter_labels = []
        placed: list[tuple[float, float, tuple[int, int]]] = []
        for point in sorted(points, key=lambda p: p["pos"]):
            x, y = point["pos"]
            anchor = _free_anchor(x, y, placed)
            placed.append((x, y, anchor))
            label = pg.TextItem(point["data"].name, color="#333", anchor=anchor)
            label.setPos(x, y)
            item.addItem(label)
            self._scatter_labels.append(label)
        if points:
            xs = [point["pos"][0] for point in points]
            item.getAxis("bottom").setTicks(decade_ticks(min(xs) - 0.2, max(xs) + 0.5))
            item.setXRange(min(xs) - 0.2, max(xs) + 0.5)

    def scatter_point_count(self) -> int:
        return len(self._scatter.data)

    def scatter_colours(self) -> dict[str, str]:
        """Each run drawn in the scatter (by name) and its point's colour ("#rrggbb")."""
        return {point.data().name: point.brush().color().name()
                for point in self._scatter.points()}

    @staticmethod
    def encoding_colour(encoding: str) -> str:
        """One colour per encoding, the same in every view and in compare.png."""
        from engine.compare_report import ENCODING_COLOURS

        return ENCODING_COLOURS.get(encoding, "#888888")

    def pareto_front_count(self) -> int:
        return len(self._fronts)

    @staticmethod
    def _scatter_tip(x: float, y: float, data: RunRecord) -> str:
        return (f"{data.name} ({data.model} on {data.dataset}, {data.encoding})\n"
                f"{data.params_total:,} parameters, best test accuracy "
                f"{data.best_test_acc:.2%}")

    # -- actions ------------------------------------------------------------------------

    def _single(self) -> RunRecord | None:
        runs = self.selected_runs()
        return runs[0] if len(runs) == 1 else None

    def _resume_selected(self) -> None:
        run = self._single()
        if run is not None:
            self.resume_requested.emit(run.path)

    def _rerun_selected(self) -> None:
        run = self._single()
        if run is None:
            return
        try:
            config = RunConfig.load(RunPaths(Path(run.path)).config)
        except Exception as exc:
            QMessageBox.warning(self, "Open in wizard", describe_exception(exc))
            return
        self.rerun_requested.emit(config)

    def _export_selected(self) -> None:
        run = self._single()
        if run is not None:
            self.export_requested.emit(run.path)


# Labels go above-right of their point, else below-right, else above-left: the first side
# where no label already placed near the point (in decades of parameters and % accuracy) sits.
LABEL_SIDES = ((0, 1), (0, 0), (1, 1), (1, 0))


def _free_anchor(x: float, y: float, placed: list[tuple[float, float, tuple[int, int]]]):
    for anchor in LABEL_SIDES:
        if not any(side == anchor and abs(x - px) < 0.6 and abs(y - py) < 4.0
                   for px, py, side in placed):
            return anchor
    return LABEL_SIDES[0]
