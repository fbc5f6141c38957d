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


def run_app(verbose: bool = False) -> int:
    """Show the main window and run until it closes; then end the process with the exit code
    (see ``shut_down``). Logging goes to the application's log file (and, ``verbose``, to
    the console at DEBUG)."""
    from engine.logging_setup import configure_logging

    configure_logging(verbose=verbose)
    app = create_application()
    window = show_main_window()
    code = app.exec()
    shut_down(app, window)
    _leave(code)
    return code  # not reached


def shut_down(app: QApplication, window) -> None:
    """Tear everything down in order, once the event loop has ended: the run (its child
    process or worker thread; closing the window has already stopped it), the window's
    background tasks, then the window and every Qt object it owns, with the deletions
    they post delivered while the application still exists."""
    from PySide6.QtCore import QEvent

    if window.session.is_active():
        window.session.stop_and_wait()
    window.wizard.wait_for_tasks()
    window.deleteLater()
    app.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    app.processEvents()
    from ui.settings import app_settings

    app_settings().sync()


def _leave(code: int) -> None:
    """End the process without the interpreter's final garbage collection: PySide6 6.12 can
    abort there ("Fatal Python error: none_dealloc") while it destroys Python wrappers of Qt
    objects in no particular order. Everything that matters was closed in order before."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
