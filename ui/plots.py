"""pyqtgraph plots of a run's curves, and saving them as PNG or SVG.

Shared by the training monitor (one live run) and the history view (past runs, overlays).
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


def new_plot(title: str, y_label: str, x_label: str = "epoch", log_y: bool = False,
             legend: tuple[int, int] | None = LEGEND_TOP_RIGHT) -> pg.PlotWidget:
    plot = pg.PlotWidget()
    item = plot.getPlotItem()
    item.setTitle(title, size="10pt")
    item.setLabel("left", y_label)
    item.setLabel("bottom", x_label)
    item.showGrid(x=True, y=True, alpha=0.25)
    item.setLogMode(x=False, y=log_y)
    if legend is not None:
        item.addLegend(offset=legend, labelTextSize="8pt",
                       brush=pg.mkBrush(255, 255, 255, 210), pen=pg.mkPen("#D0D5DB"))
    item.setMenuEnabled(False)  # our own Save buttons replace pyqtgraph's context menu
    plot.setMinimumSize(260, 200)
    return plot


def finite_points(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Drop NaN points (a column a run did not record) so the curve stays drawable."""
    pairs = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def decade_ticks(low: float, high: float) -> list[list[tuple[float, str]]]:
    """Axis ticks for values plotted as log10(x): labelled powers of ten, unlabelled 2..9."""
    superscripts = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    first, last = math.floor(low), math.ceil(high)
    major = [(float(k), "10" + str(k).translate(superscripts)) for k in range(first, last + 1)]
    minor = [(k + math.log10(m), "") for k in range(first, last) for m in range(2, 10)]
    return [major, minor]


def save_plot(plot: pg.PlotWidget, path: str | Path) -> Path:
    """Save a plot as SVG when the suffix says so, otherwise as a PNG image."""
    path = Path(path)
    if path.suffix.lower() == ".svg":
        _save_svg(plot, path)
    else:
        from pyqtgraph import exporters

        item = plot.getPlotItem()
        exporter = exporters.ImageExporter(item)
        exporter.parameters()["width"] = max(int(item.sceneBoundingRect().width()) * 2, 800)
        exporter.export(str(path))
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


class RunCurves:
    """Loss, accuracy and parameter-count plots of one run, redrawn from a MetricHistory."""

    def __init__(self) -> None:
        self.loss_plot = new_plot("Loss", "cross-entropy")
        self.acc_plot = new_plot("Accuracy", "accuracy (%)", legend=LEGEND_BOTTOM_RIGHT)
        self.params_plot = new_plot("Parameters", "count", log_y=True,
                                    legend=LEGEND_MIDDLE_RIGHT)
        pen = lambda colour, **kw: pg.mkPen(colour, width=2, **kw)  # noqa: E731
        symbol = dict(symbol="o", symbolSize=6)
        loss = self.loss_plot.getPlotItem()
        # Redrawn several times a second while training: no antialiasing keeps that cheap.
        self._batch_loss = loss.plot(pen=pg.mkPen("#9DB9D3", width=1), name="train (batches)",
                                     antialias=False)
        self._train_loss = loss.plot(pen=pen(TRAIN_COLOUR), symbolBrush=TRAIN_COLOUR,
                                     name="train", **symbol)
        self._test_loss = loss.plot(pen=pen(TEST_COLOUR), symbolBrush=TEST_COLOUR,
                                    name="test", **symbol)
        acc = self.acc_plot.getPlotItem()
        self._train_acc = acc.plot(pen=pen(TRAIN_COLOUR), symbolBrush=TRAIN_COLOUR,
                                   name="train", **symbol)
        self._test_acc = acc.plot(pen=pen(TEST_COLOUR), symbolBrush=TEST_COLOUR,
                                  name="test", **symbol)
        params = self.params_plot.getPlotItem()
        self._dense_params = params.plot(pen=pen("#777777", style=pg.QtCore.Qt.PenStyle.DashLine),
                                         name="dense")
        self._adtn_params = params.plot(pen=pen(PALETTE[2]), symbolBrush=PALETTE[2],
                                        name="compressed", **symbol)

    def plots(self) -> dict[str, pg.PlotWidget]:
        return {"loss": self.loss_plot, "accuracy": self.acc_plot, "parameters": self.params_plot}

    def widgets(self) -> list[QWidget]:
        return list(self.plots().values())

    def clear(self) -> None:
        self.show(MetricHistory())

    def show(self, history: MetricHistory) -> None:
        self.show_batches(history)
        self.show_epochs(history)

    def show_batches(self, history: MetricHistory) -> None:
        """Only the running batch loss: what changes between two epochs."""
        self._batch_loss.setData(*finite_points(history.batch_x, history.batch_loss))

    def show_epochs(self, history: MetricHistory) -> None:
        epochs = history.column("epoch")
        percent = lambda ys: [100.0 * y for y in ys]  # noqa: E731
        self._train_loss.setData(*finite_points(epochs, history.column("train_loss")))
        self._test_loss.setData(*finite_points(epochs, history.column("test_loss")))
        self._train_acc.setData(*finite_points(epochs, percent(history.column("train_acc"))))
        self._test_acc.setData(*finite_points(epochs, percent(history.column("test_acc"))))
        self._dense_params.setData(*finite_points(epochs, history.column("dense_params_total")))
        self._adtn_params.setData(*finite_points(epochs, history.column("params_total")))

    def point_counts(self) -> dict[str, int]:
        """How many points each curve holds (what tests and the status bar look at)."""
        curves = {"batch_loss": self._batch_loss, "train_loss": self._train_loss,
                  "test_loss": self._test_loss, "train_acc": self._train_acc,
                  "test_acc": self._test_acc, "params": self._adtn_params}
        return {name: len(curve.getData()[0] if curve.getData()[0] is not None else [])
                for name, curve in curves.items()}
