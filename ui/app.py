"""Start the application: QApplication, style, icon, the main window, the event loop."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication

from ui.resources import icon, style_sheet
from ui.settings import APPLICATION, ORGANIZATION


def create_application(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv if argv is None else argv)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName(APPLICATION)
    app.setWindowIcon(icon("adtn-studio"))
    app.setStyle("Fusion")  # the same look on every platform, which the style sheet refines
    app.setStyleSheet(style_sheet())
    return app


def show_main_window():
    """Create and show the main window; the engine (PyTorch) then loads in the background."""
    from ui.main_window import MainWindow

    window = MainWindow()
    window.show()
    window.load_engine()
    return window


def run_app() -> int:
    """Show the main window and run until it closes; returns the exit code."""
    app = create_application()
    window = show_main_window()  # noqa: F841 (kept alive for the event loop)
    return app.exec()
