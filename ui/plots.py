"""pyqtgraph plots of a run's curves, and saving them as PNG or SVG.

Shared by the training monitor (one live run) and the Runs page (past runs, overlays).
"""

from __future__ import annotations

import math
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from ui.metric_history import MetricHistory

pg.setConfigOptions(antialias=True, background="w", foreground="#333")

# Colour-blind friendly (Okabe-Ito); runs in an overlay cycle through them.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
TRAIN_COLOUR, TEST_COLOUR = PALETTE[0], PALETTE[1]


# Where a plot's legend sits, as pyqtgraph legend offsets (negative: from the right/bottom).
LEGEND_TOP_RIGHT, LEGEND_BOTTOM_RIGHT, LEGEND_MIDDLE_RIGHT = (-10, 10), (-10, -10), (-10, 60)


class CleanAxis(pg.AxisItem):
    """An axis whose labels never carry a unit-prefix factor ("x0.001") nor float noise
    ("91.1100000000002"): at most four decimals, trailing zeros dropped."""

    def __init__(self, orientation: str, **kwargs) -> None:
        super().__init__(orientation, **kwargs)
        self.enableAutoSIPrefix(False)

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph's name)
        if self.logMode:
            return super().tickStrings(values, scale, spacing)
        places = min(4, max(0, math.ceil(-math.log10(spacing * scale)))) if spacing > 0 else 0
        return [_clean_number(v * scale, places) for v in values]


def _clean_number(value: float, places: int) -> str:
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-4):
        return f"{value:.3g}"
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def new_plot(
    title: str,
    y_label: str,
    x_label: str = "epoch",
    log_y: bool = False,
    legend: tuple[int, int] | None = LEGEND_TOP_RIGHT,
) -> pg.PlotWidget:
    plot = pg.PlotWidget(axisItems={side: CleanAxis(side) for side in ("left", "bottom")})
    item = plot.getPlotItem()
    item.setTitle(title, size="10pt")
    item.setLabel("left", y_label)
    item.setLabel("bottom", x_label)
    item.showGrid(x=True, y=True, alpha=0.25)
    item.setLogMode(x=False, y=log_y)
    if legend is not None:
        item.addLegend(
            offset=legend,
            labelTextSize="8pt",
            brush=pg.mkBrush(255, 255, 255, 210),
            pen=pg.mkPen("#D0D5DB"),
        )
    item.setMenuEnabled(False)  # our own Save buttons replace pyqtgraph's context menu
    plot.setMinimumSize(260, 200)
    return plot


def reset_ranges(plot: pg.PlotWidget, y_range: tuple[float, float] = (0.0, 1.0)) -> None:
    """Forget zoom and ranges of an earlier run: neutral axes until the new run's data
    arrive, which the axes then follow (autorange keeps an old range while there is none)."""
    view = plot.getPlotItem().getViewBox()
    view.setRange(xRange=(0.0, 1.0), yRange=y_range, padding=0.02)
    view.enableAutoRange()


def finite_points(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Drop NaN points (a column a run did not record) so the curve stays drawable."""
    pairs = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def decade_ticks(low: float, high: float) -> list[list[tuple[float, str]]]:
    """Axis ticks for values plotted as log10(x): labelled powers of ten, unlabelled 2..9.

    When fewer than two powers of ten fall inside [low, high], 2, 3 and 5·10ⁿ are labelled
    too, so a short axis never carries a single lonely label."""
    first, last = math.floor(low), math.ceil(high)
    major = [(float(k), "10" + str(k).translate(SUPERSCRIPTS)) for k in range(first, last + 1)]
    inside = sum(1 for k in range(first, last + 1) if low <= k <= high)
    labelled = (2, 3, 5) if inside < 2 else ()
    minor = [
        (k + math.log10(m), f"{m}·10" + str(k).translate(SUPERSCRIPTS) if m in labelled else "")
        for k in range(first, last)
        for m in range(2, 10)
    ]
    return [major, minor]


def smoothed(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with the start-up bias removed (as TensorBoard smooths):
    ``weight`` 0 leaves the curve as it is, 0.99 smooths it heavily. NaNs are skipped."""
    if weight <= 0:
        return list(values)
    result, average, count = [], 0.0, 0
    for value in values:
        if math.isnan(value):
            result.append(math.nan)
            continue
        count += 1
        average = weight * average + (1 - weight) * value
        result.append(average / (1 - weight**count))
    return result


def save_plot(plot: pg.PlotWidget, path: str | Path) -> Path:
    """Save a plot as SVG when the suffix says so, otherwise as a PNG image."""
    path = Path(path)
    # Qt's image and SVG writers report a failure only as a warning on stderr: open the file
    # first, so an unwritable place raises OSError with the reason, and check what was written.
    with open(path, "wb"):
        pass
    if path.suffix.lower() == ".svg":
        _save_svg(plot, path)
    else:
        from pyqtgraph import exporters

        item = plot.getPlotItem()
        exporter = exporters.ImageExporter(item)
        exporter.parameters()["width"] = max(int(item.sceneBoundingRect().width()) * 2, 800)
        exporter.export(str(path))
    if not path.is_file() or path.stat().st_size == 0:
        raise OSError(f"could not write {path}")
    return path


def _save_svg(plot: pg.PlotWidget, path: Path) -> None:
    # pyqtgraph 0.14's SVGExporter cannot parse the closed paths ("... Z") that Qt 6.12
    # writes, so the view is painted straight into Qt's SVG generator instead.
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    generator = QSvgGenerator()
    generator.setFileName(str(path))
    generator.setSize(plot.size())
    generator.setViewBox(QRect(0, 0, plot.width(), plot.height()))
    generator.setTitle(plot.getPlotItem().titleLabel.text)
    painter = QPainter(generator)
    try:
        plot.render(painter)
    finally:
        painter.end()


class HoverReadout:
    """A vertical line under the mouse and the values of every curve at that x, in one label
    at the top left of the plot (what TensorBoard users look for when they hover)."""

    def __init__(
        self, plot: pg.PlotWidget, x_label: str = "epoch", y_format=lambda value: f"{value:.4g}"
    ) -> None:
        self.plot = plot
        self.x_label = x_label
        self.y_format = y_format
        self.line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#888", width=1))
        self.label = pg.TextItem(
            "", color="#222", anchor=(0, 0), fill=pg.mkBrush(255, 255, 255, 220)
        )
        self.line.setZValue(20)
        self.label.setZValue(21)
        item = plot.getPlotItem()
        item.addItem(self.line, ignoreBounds=True)
        item.addItem(self.label, ignoreBounds=True)
        self.hide()
        plot.scene().sigMouseMoved.connect(self._on_mouse_moved)

    def hide(self) -> None:
        self.line.hide()
        self.label.hide()

    def _on_mouse_moved(self, scene_pos) -> None:
        view = self.plot.getPlotItem().getViewBox()
        if not view.sceneBoundingRect().contains(scene_pos):
            self.hide()
            return
        self.show_at(view.mapSceneToView(scene_pos).x())

    def show_at(self, x: float) -> str:
        """Show the values nearest to ``x`` of every named curve; returns the label's text."""
        rows = []
        for curve in self.plot.getPlotItem().listDataItems():
            name = curve.name()
            xs, ys = curve.getData()
            if not name or xs is None or len(xs) == 0 or not curve.isVisible():
                continue
            nearest = min(range(len(xs)), key=lambda i: abs(xs[i] - x))
            rows.append((name, float(xs[nearest]), float(ys[nearest])))
        if not rows:
            self.hide()
            return ""
        at = min(rows, key=lambda row: abs(row[1] - x))[1]
        text = (
            f"{self.x_label} {at:.2f}".rstrip("0").rstrip(".")
            + "\n"
            + "\n".join(f"{name}: {self.y_format(y)}" for name, _, y in rows)
        )
        self.label.setText(text)
        view = self.plot.getPlotItem().getViewBox()
        (x_low, _x_high), (_y_low, y_high) = view.viewRange()
        self.label.setPos(x_low, y_high)
        self.line.setPos(at)
        self.line.show()
        self.label.show()
        return text


class RunCurves:
    """Loss, accuracy and parameter-count plots of one run, redrawn from a MetricHistory."""

    def __init__(self) -> None:
        self.loss_plot = new_plot("Loss", "cross-entropy")
        self.acc_plot = new_plot("Accuracy", "accuracy (%)", legend=LEGEND_BOTTOM_RIGHT)
        # Counts are drawn as log10(count) on a linear axis labelled in powers of ten: the
        # labels stay few and apart, whatever the range.
        self.params_plot = new_plot("Parameters", "count (log scale)", legend=LEGEND_MIDDLE_RIGHT)
        self.smoothing = 0.6  # the batch curve's EMA weight (0: raw)
        self._history = MetricHistory()
        self._planned: tuple[int, int, int] | None = None  # (compressed, dense, epochs)
        # The labelled ticks of the parameter plot's count axis, as ``decade_ticks`` gives
        # them (major, minor); None while no count is drawn (pyqtgraph's own ticks).
        self.count_axis_ticks: list[list[tuple[float, str]]] | None = None
        pen = lambda colour, **kw: pg.mkPen(colour, width=2, **kw)  # noqa: E731
        symbol = dict(symbol="o", symbolSize=6)
        loss = self.loss_plot.getPlotItem()
        # Redrawn several times a second while training: no antialiasing keeps that cheap.
        self._batch_loss_raw = loss.plot(pen=pg.mkPen("#C9D8E6", width=1), antialias=False)
        self._batch_loss = loss.plot(
            pen=pg.mkPen("#6F9CC4", width=1.5), name="train (batches)", antialias=False
        )
        # Thousands of batch points: draw at most about one per pixel (peaks kept), so a
        # repaint while training stays short.
        for curve in (self._batch_loss_raw, self._batch_loss):
            curve.setDownsampling(auto=True, method="peak")
            curve.setClipToView(True)
        self._train_loss = loss.plot(
            pen=pen(TRAIN_COLOUR), symbolBrush=TRAIN_COLOUR, name="train", **symbol
        )
        self._test_loss = loss.plot(
            pen=pen(TEST_COLOUR), symbolBrush=TEST_COLOUR, name="test", **symbol
        )
        acc = self.acc_plot.getPlotItem()
        self._train_acc = acc.plot(
            pen=pen(TRAIN_COLOUR), symbolBrush=TRAIN_COLOUR, name="train", **symbol
        )
        self._test_acc = acc.plot(
            pen=pen(TEST_COLOUR), symbolBrush=TEST_COLOUR, name="test", **symbol
        )
        params = self.params_plot.getPlotItem()
        self._dense_params = params.plot(
            pen=pen("#777777", style=pg.QtCore.Qt.PenStyle.DashLine), name="dense"
        )
        self._adtn_params = params.plot(
            pen=pen(PALETTE[2]), symbolBrush=PALETTE[2], name="compressed", **symbol
        )
        self.readouts = {
            "loss": HoverReadout(self.loss_plot),
            "accuracy": HoverReadout(self.acc_plot, y_format=lambda v: f"{v:.2f} %"),
            "parameters": HoverReadout(self.params_plot, y_format=lambda v: f"{round(10**v):,}"),
        }

    def plots(self) -> dict[str, pg.PlotWidget]:
        return {"loss": self.loss_plot, "accuracy": self.acc_plot, "parameters": self.params_plot}

    def widgets(self) -> list[QWidget]:
        return list(self.plots().values())

    def smoothing_control(self) -> QWidget:
        """A "Smoothing" slider (0 to 0.99) for the batch-loss curve."""
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider

        box = QWidget()
        layout = QHBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(0, 99)
        slider.setValue(round(100 * self.smoothing))
        slider.setFixedWidth(120)
        slider.setToolTip("Exponential moving average of the batch loss, as in TensorBoard")
        value = QLabel(f"{self.smoothing:.2f}")
        value.setMinimumWidth(30)

        def changed(position: int) -> None:
            value.setText(f"{position / 100:.2f}")
            self.set_smoothing(position / 100)

        slider.valueChanged.connect(changed)
        layout.addWidget(QLabel("Smoothing"))
        layout.addWidget(slider)
        layout.addWidget(value)
        self.smoothing_slider = slider
        return box

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = min(max(weight, 0.0), 0.99)
        self.show_batches(self._history)

    def clear(self) -> None:
        self._planned = None
        for readout in self.readouts.values():
            readout.hide()
        reset_ranges(self.loss_plot)
        reset_ranges(self.acc_plot, (0.0, 100.0))
        reset_ranges(self.params_plot)
        self.show(MetricHistory())

    def plan(self, compressed: int, dense: int, epochs: int) -> None:
        """A run starts: draw its dense and compressed counts at once, over all its epochs."""
        self._planned = (compressed, dense, epochs)
        for plot in (self.loss_plot, self.acc_plot, self.params_plot):
            plot.getPlotItem().setXRange(0, max(epochs, 1), padding=0.02)
        self.show_epochs(self._history)

    def show(self, history: MetricHistory) -> None:
        self.show_batches(history)
        self.show_epochs(history)

    def show_batches(self, history: MetricHistory) -> None:
        """Only the running batch loss: what changes between two epochs."""
        self._history = history
        xs, raw = finite_points(history.batch_x, history.batch_loss)
        self._batch_loss_raw.setData(xs, raw)
        self._batch_loss_raw.setVisible(self.smoothing > 0)
        self._batch_loss.setData(xs, smoothed(raw, self.smoothing))

    def show_epochs(self, history: MetricHistory) -> None:
        for step in self.epoch_steps(history):
            step()

    def epoch_steps(self, history: MetricHistory) -> list:
        """``show_epochs`` as one step per plot: the monitor runs them in separate turns of
        the event loop, so each repaint blocks the window for one plot's time, not three."""
        self._history = history
        epochs = history.column("epoch")
        percent = lambda ys: [100.0 * y for y in ys]  # noqa: E731

        def loss() -> None:
            self._train_loss.setData(*finite_points(epochs, history.column("train_loss")))
            self._test_loss.setData(*finite_points(epochs, history.column("test_loss")))

        def accuracy() -> None:
            self._train_acc.setData(*finite_points(epochs, percent(history.column("train_acc"))))
            self._test_acc.setData(*finite_points(epochs, percent(history.column("test_acc"))))

        return [loss, accuracy, lambda: self._show_counts(history)]

    def _show_counts(self, history: MetricHistory) -> None:
        epochs = history.column("epoch")
        xs, compressed = finite_points(epochs, history.column("params_total"))
        dense_xs, dense = finite_points(epochs, history.column("dense_params_total"))
        if self._planned is not None:
            # From epoch 0 (the start) to the last epoch: the counts are known before any
            # epoch ends, so the plot is never empty.
            planned, planned_dense, total = self._planned
            xs, compressed = [0.0, *xs], [float(planned), *compressed]
            dense_xs, dense = [0.0, float(max(total, 1))], [float(planned_dense)] * 2
        log = lambda values: [math.log10(v) if v > 0 else math.nan for v in values]  # noqa
        self._adtn_params.setData(*finite_points(xs, log(compressed)))
        self._dense_params.setData(*finite_points(dense_xs, log(dense)))
        values = [v for v in (*log(compressed), *log(dense)) if not math.isnan(v)]
        item = self.params_plot.getPlotItem()
        if values:
            low, high = min(values) - 0.3, max(values) + 0.3
            self.count_axis_ticks = decade_ticks(low, high)
            item.setYRange(low, high, padding=0)
        else:
            self.count_axis_ticks = None
        item.getAxis("left").setTicks(self.count_axis_ticks)

    def _curves(self) -> dict[str, pg.PlotDataItem]:
        return {
            "batch_loss": self._batch_loss,
            "train_loss": self._train_loss,
            "test_loss": self._test_loss,
            "train_acc": self._train_acc,
            "test_acc": self._test_acc,
            "params": self._adtn_params,
            "dense_params": self._dense_params,
        }

    def curve_data(self, name: str) -> tuple[list[float], list[float]]:
        """The x and y values a curve draws now (names as in ``point_counts``; the batch
        loss after smoothing, accuracies in percent, counts as log10)."""
        xs, ys = self._curves()[name].getData()
        return (
            [] if xs is None else [float(x) for x in xs],
            [] if ys is None else [float(y) for y in ys],
        )

    def point_counts(self) -> dict[str, int]:
        """How many points each curve holds (what tests and the status bar look at)."""
        return {name: len(self.curve_data(name)[0]) for name in self._curves()}
