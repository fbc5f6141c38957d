"""One training run in a background thread, as a model the views subscribe to.

The engine's trainer runs in a worker object on a QThread. Its callback only appends the
engine's events (frozen dataclasses of plain values) to a queue; a timer in the UI thread
drains the queue ten times a second and re-emits the events as Qt signals. However fast the
trainer produces batches, the window redraws at most that often and never floods its event
loop.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from ui.messages import describe_exception, describe_failure
from ui.metric_history import MetricHistory
from ui.workers import start_in_thread

DRAIN_INTERVAL_MS = 100


class _QueueingCallback:
    """A trainer callback (the engine's TrainerCallback hooks) that queues every event."""

    def __init__(self, queue: collections.deque) -> None:
        self._queue = queue  # deque.append is atomic, so no lock is needed

    def on_run_start(self, event: Any) -> None:
        self._queue.append(event)

    def on_batch_end(self, event: Any) -> None:
        self._queue.append(event)

    def on_epoch_end(self, event: Any) -> None:
        self._queue.append(event)

    def on_checkpoint(self, event: Any) -> None:
        self._queue.append(event)

    def on_run_end(self, event: Any) -> None:
        self._queue.append(event)

    def on_download(self, event: Any) -> None:
        self._queue.append(event)

    def on_error(self, event: Any) -> None:
        self._queue.append(event)


class _TrainingWorker(QObject):
    """Calls ``engine.trainer.train`` in its thread; exceptions become a signal."""

    crashed = Signal(object)
    finished = Signal()

    def __init__(self, config: Any, run_dir: Path, control: Any, resume: bool,
                 queue: collections.deque) -> None:
        super().__init__()
        self._config = config
        self._run_dir = run_dir
        self._control = control
        self._resume = resume
        self._queue = queue

    @Slot()
    def run(self) -> None:
        try:
            from engine.trainer import train  # torch loads here, off the UI thread

            train(self._config, self._run_dir, callbacks=[_QueueingCallback(self._queue)],
                  control=self._control, resume=self._resume)
        except Exception as exc:  # the trainer reports most failures as RunFailed first
            self.crashed.emit(exc)
        finally:
            self.finished.emit()


class TrainingSession(QObject):
    """Start, pause, resume and stop one run; emit what the engine reports."""

    state_changed = Signal(str)  # "idle", "running", "paused", "stopping", "finished"
    run_started = Signal(object)  # RunStarted
    batch_progress = Signal(object)  # the latest BatchEnded of a drained slice
    epoch_ended = Signal(object)  # EpochEnded, after it is added to ``history``
    checkpoint_saved = Signal(object)  # CheckpointSaved
    run_ended = Signal(object)  # RunEnded
    run_failed = Signal(str)  # the failure in plain words
    log = Signal(str, str)  # level ("info", "warning", "error"), text
    download_progress = Signal(object)  # DownloadProgress of a missing data set
    finished = Signal(str)  # the final status: "finished", "stopped" or "failed"

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.history = MetricHistory()
        self.run_dir: Path | None = None
        self.config: Any = None
        self.state = "idle"
        self._queue: collections.deque = collections.deque()
        self._control: Any = None
        self._worker: _TrainingWorker | None = None
        self._thread: QThread | None = None
        self._final_status = "stopped"
        self._drain_timer = QTimer(self)
        self._drain_timer.setInterval(DRAIN_INTERVAL_MS)
        self._drain_timer.timeout.connect(self._drain)

    # -- commands ---------------------------------------------------------------------

    def is_active(self) -> bool:
        return self._thread is not None

    def start(self, config: Any, run_dir: str | Path, resume: bool = False) -> None:
        """Train ``config`` into ``run_dir`` (continuing its last checkpoint if ``resume``)."""
        if self.is_active():
            raise RuntimeError("a run is already in progress")
        from engine.trainer import RunControl

        self.history = MetricHistory()
        self.run_dir = Path(run_dir)
        self.config = config
        self._queue.clear()
        self._final_status = "stopped"
        self._control = RunControl()
        self._worker = _TrainingWorker(config, self.run_dir, self._control, resume, self._queue)
        self._worker.crashed.connect(self._on_crashed)
        self._worker.finished.connect(self._on_worker_finished)
        self._set_state("running")
        verb = "Resuming" if resume else "Starting"
        self.log.emit("info", f"{verb} run in {self.run_dir}")
        self._thread = start_in_thread(self._worker, self._worker.run, self._worker.finished)
        self._drain_timer.start()

    def pause(self) -> None:
        if self._control is not None and self.state == "running":
            self._control.pause()
            self._set_state("paused")
            self.log.emit("info", "Paused after the current batch.")

    def resume(self) -> None:
        if self._control is not None and self.state == "paused":
            self._control.resume()
            self._set_state("running")
            self.log.emit("info", "Resumed.")

    def stop(self) -> None:
        """Ask the trainer to stop after the current batch; it keeps its last checkpoint."""
        if self._control is None or self.state not in ("running", "paused"):
            return
        self._control.request_stop()
        self._control.resume()  # a paused trainer must wake up to notice the request
        self._set_state("stopping")
        self.log.emit("info", "Stopping after the current batch…")

    def stop_and_wait(self, timeout_ms: int = 60_000) -> bool:
        """Stop and block until the worker thread has ended (used when the window closes)."""
        self.stop()
        thread = self._thread
        if thread is None:
            return True
        done = thread.wait(timeout_ms)
        if done:
            self._on_worker_finished()
        return done

    # -- from the worker --------------------------------------------------------------

    @Slot(object)
    def _on_crashed(self, exc: Exception) -> None:
        self._final_status = "failed"
        text = describe_exception(exc)
        self.log.emit("error", text)
        self.run_failed.emit(text)

    @Slot()
    def _on_worker_finished(self) -> None:
        if self._thread is None:
            return  # already handled (stop_and_wait and the queued signal both land here)
        self._thread.wait()
        self._thread = None
        self._worker = None
        self._drain_timer.stop()
        self._drain()
        self._control = None
        self._set_state("finished")
        self.finished.emit(self._final_status)

    # -- draining events --------------------------------------------------------------

    @Slot()
    def _drain(self) -> None:
        latest_batch = None
        while self._queue:
            event = self._queue.popleft()
            name = type(event).__name__
            if name == "BatchEnded":
                self.history.add_batch(event.epoch, event.batch, event.batches, event.loss)
                latest_batch = event
            elif name == "EpochEnded":
                self.history.add_epoch(_fields(event))
                self.epoch_ended.emit(event)
            elif name == "RunStarted":
                self.run_started.emit(event)
            elif name == "DownloadProgress":
                self.download_progress.emit(event)
            elif name == "CheckpointSaved":
                self.checkpoint_saved.emit(event)
            elif name == "RunEnded":
                self._final_status = str(event.status)
                self.log.emit("info", f"Run {self._final_status}.")
                self.run_ended.emit(event)
            elif name == "RunFailed":
                self._final_status = "failed"
                text = describe_failure(event.kind, event.message)
                self.log.emit("error", text)
                self.run_failed.emit(text)
        if latest_batch is not None:
            self.batch_progress.emit(latest_batch)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)


def _fields(event: Any) -> dict[str, Any]:
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
