"""Threading in one place: every blocking engine call runs in a worker object on a QThread.

The worker-object pattern: a QObject moved to a QThread does the work; it talks to the
window only through queued signals, and no widget is ever touched from the worker thread.
Callers get a ``BackgroundTask`` that lives in the UI thread and relays the worker's signals,
so their slots always run in the UI thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from engine.errors import EngineError

log = logging.getLogger(__name__)

# A task receives ``report(fraction, text)``; fraction is in [0, 1], or negative when unknown.
ProgressReport = Callable[[float, str], None]
TaskFunction = Callable[[ProgressReport], Any]


class _TaskWorker(QObject):
    """Runs one function in its thread and emits what happened."""

    progressed = Signal(float, str)
    succeeded = Signal(object)
    failed = Signal(object)  # the exception
    ended = Signal()  # after ``succeeded`` or ``failed``, whichever came

    def __init__(self, function: TaskFunction) -> None:
        super().__init__()
        self._function = function

    @Slot()
    def run(self) -> None:
        try:
            result = self._function(self.progressed.emit)
        except Exception as exc:  # every failure reaches the user as a message
            if isinstance(exc, EngineError):  # the user's to fix; the message says it all
                log.info("background task %s: %s", _name_of(self._function), exc)
            else:  # a bug: its traceback goes to the log file
                log.exception("background task %s failed", _name_of(self._function))
            self.failed.emit(exc)
        else:
            self.succeeded.emit(result)
        finally:
            self.ended.emit()


def _name_of(function: Callable) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__


def start_in_thread(worker: QObject, run_slot: Callable[[], None], ended: Signal) -> QThread:
    """Move ``worker`` to a new thread, call ``run_slot`` there, and stop when ``ended``
    (the worker's signal that its work is over, however it went).

    ``ended`` quits the thread with a direct connection, so a UI thread blocked in
    ``QThread.wait()`` (closing the window) does not wait for its own event loop.
    """
    thread = QThread()
    worker.moveToThread(thread)
    thread.started.connect(run_slot)
    ended.connect(thread.quit, Qt.ConnectionType.DirectConnection)
    thread.start()
    return thread


class BackgroundTask(QObject):
    """A function run off the UI thread; its signals arrive in the UI thread.

    ``succeeded(result)`` or ``failed(exception)`` comes once, then ``ended()``, so a
    caller puts its clean-up (re-enabling buttons, dropping the task) in one ``ended`` slot.
    """

    progressed = Signal(float, str)
    succeeded = Signal(object)
    failed = Signal(object)
    ended = Signal()

    def __init__(self, function: TaskFunction, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker = _TaskWorker(function)
        self._worker.progressed.connect(self.progressed)
        self._worker.succeeded.connect(self.succeeded)
        self._worker.failed.connect(self.failed)
        self._worker.ended.connect(self._on_worker_ended)
        self._thread: QThread | None = None

    def start(self) -> BackgroundTask:
        self._thread = start_in_thread(self._worker, self._worker.run, self._worker.ended)
        return self

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.isRunning()

    def wait(self, timeout_ms: int = 30_000) -> bool:
        return self._thread is None or self._thread.wait(timeout_ms)

    @Slot()
    def _on_worker_ended(self) -> None:
        if self._thread is not None:
            self._thread.wait()
        self.ended.emit()
