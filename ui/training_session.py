"""One training run, as a model the views subscribe to.

By default the run trains in a child process — ``adtn-studio train``/``resume`` started with
``QProcess``, never by forking the window — which writes the engine's events to the run
folder's event log (JSON lines, rank 0 only) and obeys a control file there (run, pause,
stop). The window's interpreter then never shares its lock with the training loop's many
small operations, so the event loop stays responsive, and a data-parallel run (device
"cuda:all", started through torchrun by the child) is followed exactly like a one-process
run. The older mode, the trainer in a worker thread of this process, remains for tests and
for a build that cannot start a child (``mode="thread"`` or ``ADTN_TRAINING_MODE=thread``).

In both modes the events (frozen dataclasses of plain values) land in one queue that a timer
in the UI thread drains ten times a second, re-emitting them as Qt signals: however fast the
trainer produces batches, the window redraws at most that often. Both the queueing and the
draining are ``TrainerCallback``s, dispatched through the engine's one table of event types
(``engine.events.HOOKS``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QThread, QTimer, Signal, Slot

# torch-free: the configuration, the events and the stop/pause control are plain Python
from engine.choices import RunStatus
from engine.config import RunConfig
from engine.events import (
    BatchEnded,
    CheckpointSaved,
    DownloadProgress,
    EpochEnded,
    EventDispatcher,
    RunControl,
    RunEnded,
    RunFailed,
    RunStarted,
    TrainerCallback,
)
from engine.paths import RunPaths
from ui.messages import describe_exception, describe_failure
from ui.metric_history import MetricHistory
from ui.workers import start_in_thread

log = logging.getLogger(__name__)

DRAIN_INTERVAL_MS = 100
STOP_TIMEOUT_MS = 60_000  # a stopped child ends after its current batch; then it is killed
STDERR_LINES_KEPT = 40
MODES = ("process", "thread")
# The child trains at a lower CPU priority: where cores are busy, the window's short bursts
# of work (a repaint, a drained slice of events) then run before the next training step.
CHILD_NICENESS = 10


# Whatever the trainer reports, as queued here.
TrainerEvent = (
    RunStarted | BatchEnded | EpochEnded | CheckpointSaved | DownloadProgress | RunFailed | RunEnded
)
EventQueue = collections.deque[TrainerEvent]  # deque.append is atomic across threads


def default_mode() -> str:
    mode = os.environ.get("ADTN_TRAINING_MODE", "process")
    return mode if mode in MODES else "process"


class _QueueingCallback(TrainerCallback):
    """A trainer callback that queues every event (in the trainer's thread)."""

    def __init__(self, queue: EventQueue) -> None:
        self._queue = queue  # deque.append is atomic, so no lock is needed

    def _append(self, event: TrainerEvent) -> None:
        self._queue.append(event)

    on_run_start = on_batch_end = on_epoch_end = on_checkpoint = _append
    on_run_end = on_download = on_error = _append


class _DrainedEvents(TrainerCallback):
    """What the session does with each queued event, in the UI thread (see ``_drain``)."""

    def __init__(self, session: TrainingSession) -> None:
        self.session = session
        self.latest_batch: BatchEnded | None = None  # of the slice being drained
        self.heavy = False  # whether views already redraw much for this slice

    def on_batch_end(self, event: BatchEnded) -> None:
        self.session.history.add_batch(event.epoch, event.batch, event.batches, event.loss)
        self.latest_batch = event

    def on_epoch_end(self, event: EpochEnded) -> None:
        self.session.history.add_epoch(_fields(event))
        self.session.epoch_ended.emit(event)
        self.heavy = True

    def on_run_start(self, event: RunStarted) -> None:
        self.session.run_started.emit(event)
        self.heavy = True
        if event.parallel.startswith("data-parallel"):
            self.session.log.emit("info", event.parallel)

    def on_download(self, event: DownloadProgress) -> None:
        self.session.download_progress.emit(event)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self.session.checkpoint_saved.emit(event)

    def on_run_end(self, event: RunEnded) -> None:
        session = self.session
        session._run_ended_seen = True
        session._final_status = str(event.status)
        session.log.emit("info", f"Run {session._final_status}.")
        session.run_ended.emit(event)

    def on_error(self, event: RunFailed) -> None:
        session = self.session
        session._final_status = RunStatus.FAILED
        text = describe_failure(event.kind, event.message)
        session.log.emit("error", text)
        session.run_failed.emit(text)


class _TrainingWorker(QObject):
    """Calls ``engine.trainer.train`` in its thread; exceptions become a signal."""

    crashed = Signal(object)
    ended = Signal()  # after the trainer returned or raised

    def __init__(
        self, config: RunConfig, run_dir: Path, control: RunControl, resume: bool, queue: EventQueue
    ) -> None:
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

            train(
                self._config,
                self._run_dir,
                callbacks=[_QueueingCallback(self._queue)],
                control=self._control,
                resume=self._resume,
            )
        except Exception as exc:  # the trainer reports most failures as RunFailed first
            log.exception("the training thread failed")  # escaped the trainer: a bug
            self.crashed.emit(exc)
        finally:
            self.ended.emit()


def self_command() -> list[str]:
    """How to run this program's subcommands: the frozen executable itself, or this
    interpreter with ``-m adtn_studio``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "adtn_studio"]


def child_command(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    config_file: Path,
    event_log: Path,
    control_file: Path,
    processes: int = 0,
) -> list[str]:
    """The command line of the child that trains ``config`` into ``run_dir``; with
    ``processes`` it launches that many data-parallel workers (device "cuda:all" does so by
    itself, one per GPU)."""
    if resume:
        args = ["resume", str(run_dir), "--device", config.device]
    else:
        args = ["train", "--config", str(config_file), "--out", str(run_dir)]
    if processes:
        args += ["--nproc-per-node", str(processes)]
    return [
        *self_command(),
        *args,
        "--event-log",
        str(event_log),
        "--control-file",
        str(control_file),
        "--nice",
        str(CHILD_NICENESS),
    ]


class _ChildRun(QObject):
    """A training child process, the event log it writes and the control file it reads."""

    ended = Signal(int, str)  # exit code (-1: crashed or never started), last stderr line

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        resume: bool,
        queue: EventQueue,
        processes: int = 0,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        from engine.event_log import EventLogReader, write_control

        self._write_control = write_control
        self.queue = queue
        run_dir.mkdir(parents=True, exist_ok=True)
        self.control_file = RunPaths(run_dir).control
        event_log = RunPaths(run_dir).event_log
        # a resumed run appends to the log: follow only what this session adds
        self.reader = EventLogReader(event_log, EventLogReader.end_of(event_log))
        write_control(self.control_file, "run")
        handle, name = tempfile.mkstemp(prefix="adtn-window-", suffix=".toml")
        os.close(handle)
        self.config_file = Path(name)
        config.save(self.config_file)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._partial = b""
        self._ended = False
        self.exit_info: tuple[int, str] = (-1, "")

        program, *args = child_command(
            config, run_dir, resume, self.config_file, event_log, self.control_file, processes
        )
        self.process = QProcess(self)
        self.process.setProcessEnvironment(_child_environment())
        self.process.readyReadStandardError.connect(self._read_stderr)
        self.process.readyReadStandardOutput.connect(self._discard_stdout)
        self.process.finished.connect(self._on_process_finished)
        self.process.errorOccurred.connect(self._on_error)
        self.process.start(program, args)

    def command(self, command: str) -> None:
        """Send "run", "pause" or "stop" to every process of the run."""
        try:
            self._write_control(self.control_file, command)
        except OSError:
            pass  # the folder vanished: the child's own end will be reported

    def collect(self) -> None:
        self.queue.extend(self.reader.read())

    def wait(self, timeout_ms: int) -> bool:
        """Stop the child and wait for it; kill it when it does not end in time."""
        if self.process.state() == QProcess.ProcessState.NotRunning:
            return True
        self.command("stop")
        if self.process.waitForFinished(timeout_ms):
            return True
        self.process.terminate()
        if not self.process.waitForFinished(5_000):
            self.process.kill()
            self.process.waitForFinished(5_000)
        return False

    @Slot()
    def _read_stderr(self) -> None:
        data = self._partial + bytes(self.process.readAllStandardError().data())
        *lines, self._partial = data.replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self.stderr_tail.append(text)

    @Slot()
    def _discard_stdout(self) -> None:
        self.process.readAllStandardOutput()  # the summary; the events already hold it

    @Slot(int, QProcess.ExitStatus)
    def _on_process_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read_stderr()
        if self._partial.strip():
            self.stderr_tail.append(self._partial.decode("utf-8", "replace").strip())
            self._partial = b""
        crashed = status == QProcess.ExitStatus.CrashExit
        self._end(-1 if crashed else code)

    @Slot(QProcess.ProcessError)
    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.stderr_tail.append(
                f"could not start the training process ({self.process.errorString()})"
            )
            self._end(-1)

    def _end(self, code: int) -> None:
        if self._ended:
            return
        self._ended = True
        self.collect()
        self.config_file.unlink(missing_ok=True)
        self.exit_info = (code, self.stderr_tail[-1] if self.stderr_tail else "")
        self.ended.emit(*self.exit_info)

    @property
    def has_ended(self) -> bool:
        return self._ended


def _child_environment() -> QProcessEnvironment:
    env = QProcessEnvironment.systemEnvironment()
    if not getattr(sys, "frozen", False):  # the child must import this very source tree
        root = str(Path(__file__).resolve().parents[1])
        path = env.value("PYTHONPATH", "")
        env.insert("PYTHONPATH", root + (os.pathsep + path if path else ""))
    env.insert("TQDM_DISABLE", "1")  # progress bars are for terminals; the events carry it
    env.insert("PYTHONUNBUFFERED", "1")
    return env


class TrainingSession(QObject):
    """Start, pause, resume and stop one run; emit what the engine reports."""

    state_changed = Signal(str)  # "idle", "running", "paused", "stopping", "ended"
    run_started = Signal(object)  # RunStarted
    batch_progress = Signal(object)  # the latest BatchEnded of a drained slice
    epoch_ended = Signal(object)  # EpochEnded, after it is added to ``history``
    checkpoint_saved = Signal(object)  # CheckpointSaved
    run_ended = Signal(object)  # RunEnded, the engine's own report (absent if the run died)
    run_failed = Signal(str)  # the failure in plain words
    log = Signal(str, str)  # level ("info", "warning", "error"), text
    download_progress = Signal(object)  # DownloadProgress of a missing data set
    # The session is over, however the run went: the final status, "finished", "stopped" or
    # "failed". It always comes last, after run_ended or run_failed.
    ended = Signal(str)

    def __init__(self, parent: QObject | None = None, mode: str | None = None) -> None:
        super().__init__(parent)
        self.mode = mode or default_mode()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        self.history = MetricHistory()
        self.run_dir: Path | None = None
        self.config: RunConfig | None = None
        self.state = "idle"
        self._queue: EventQueue = collections.deque()
        self._control: RunControl | None = None
        self._worker: _TrainingWorker | None = None
        self._thread: QThread | None = None
        self._child: _ChildRun | None = None
        self._final_status = RunStatus.STOPPED
        self._run_ended_seen = False
        self._pending_batch: BatchEnded | None = None
        self._drained = _DrainedEvents(self)
        self._dispatch = EventDispatcher([self._drained])
        self._drain_timer = QTimer(self)
        self._drain_timer.setInterval(DRAIN_INTERVAL_MS)
        self._drain_timer.timeout.connect(self._drain)

    # -- commands ---------------------------------------------------------------------

    def is_active(self) -> bool:
        return self._thread is not None or self._child is not None

    @property
    def child_pid(self) -> int | None:
        """The training child's process id (for a data-parallel run, the launcher of its
        workers); None while no child runs (no run, or the thread mode)."""
        return self._child.process.processId() if self._child is not None else None

    def receive(self, event: TrainerEvent) -> None:
        """Queue one engine event, as the trainer's callback and the child's event log do;
        it is emitted in the UI thread by the next drain. Thread safe (one atomic append)."""
        self._queue.append(event)

    def deliver_events(self) -> None:
        """Emit what the engine has reported so far now, not at the drain timer's next tick."""
        self._drain()

    def start(
        self, config: RunConfig, run_dir: str | Path, resume: bool = False, processes: int = 0
    ) -> None:
        """Train ``config`` into ``run_dir`` (continuing its last checkpoint if ``resume``);
        ``processes`` > 1 trains data-parallel in that many processes (child mode only)."""
        if processes > 1 and self.mode != "process":
            raise ValueError("a data-parallel run needs the child-process mode")
        if self.is_active():
            raise RuntimeError("a run is already in progress")
        self.history = MetricHistory()
        self.run_dir = Path(run_dir)
        self.config = config
        self._queue.clear()
        self._final_status = RunStatus.STOPPED
        self._run_ended_seen = False
        verb = "Resuming" if resume else "Starting"
        if self.mode == "process":
            self._child = _ChildRun(config, self.run_dir, resume, self._queue, processes, self)
            self._child.ended.connect(self._on_child_ended)
            self._set_state("running")
            self.log.emit("info", f"{verb} run in {self.run_dir}")
            if self._child.has_ended:  # it could not even start: say so once we return
                QTimer.singleShot(
                    0,
                    lambda: (
                        self._on_child_ended(*self._child.exit_info)
                        if self._child is not None
                        else None
                    ),
                )
        else:
            self._control = RunControl()
            self._worker = _TrainingWorker(config, self.run_dir, self._control, resume, self._queue)
            self._worker.crashed.connect(self._on_crashed)
            self._worker.ended.connect(self._on_worker_ended)
            self._set_state("running")
            self.log.emit("info", f"{verb} run in {self.run_dir}")
            self._thread = start_in_thread(self._worker, self._worker.run, self._worker.ended)
        self._drain_timer.start()

    def _send(self, command: str) -> bool:
        if self._child is not None:
            self._child.command(command)
            return True
        if self._control is None:
            return False
        if command == "pause":
            self._control.pause()
        elif command == "run":
            self._control.resume()
        else:
            self._control.request_stop()
            self._control.resume()  # a paused trainer must wake up to notice the request
        return True

    def pause(self) -> None:
        if self.state == "running" and self._send("pause"):
            self._set_state("paused")
            self.log.emit("info", "Paused after the current batch.")

    def resume(self) -> None:
        if self.state == "paused" and self._send("run"):
            self._set_state("running")
            self.log.emit("info", "Resumed.")

    def stop(self) -> None:
        """Ask the trainer to stop after the current batch; it keeps its last checkpoint."""
        if self.state not in ("running", "paused") or not self._send("stop"):
            return
        self._set_state("stopping")
        self.log.emit("info", "Stopping after the current batch…")

    def stop_and_wait(self, timeout_ms: int = STOP_TIMEOUT_MS) -> bool:
        """Stop and block until the run has ended (used when the window closes): the child
        process has exited, or the worker thread has finished, and every object of the run
        is released here, in order, before the window goes."""
        self.stop()
        if self._child is not None:
            child = self._child
            done = child.wait(timeout_ms)
            child._end(child.process.exitCode())  # no-op when QProcess.finished came
            return done
        thread = self._thread
        if thread is None:
            return True
        done = thread.wait(timeout_ms)
        if done:
            self._on_worker_ended()
        return done

    # -- the end of a run ---------------------------------------------------------------

    @Slot(object)
    def _on_crashed(self, exc: Exception) -> None:
        self._final_status = RunStatus.FAILED
        text = describe_exception(exc)
        self.log.emit("error", text)
        self.run_failed.emit(text)

    @Slot()
    def _on_worker_ended(self) -> None:
        if self._thread is None:
            return  # already handled (stop_and_wait and the queued signal both land here)
        thread, worker = self._thread, self._worker
        thread.wait()
        self._thread = None
        self._worker = None
        # nothing of the ended worker may call back into the session from here on
        worker.crashed.disconnect(self._on_crashed)
        worker.ended.disconnect(self._on_worker_ended)
        self._end_run()

    @Slot(int, str)
    def _on_child_ended(self, code: int, last_line: str) -> None:
        child = self._child
        if child is None:
            return
        self._child = None
        child.ended.disconnect(self._on_child_ended)
        self._drain()
        if not self._run_ended_seen:  # the child ended without saying how: it died
            self._final_status = RunStatus.FAILED
            if last_line.startswith("could not start"):
                text = f"Training did not begin: {last_line}."
            else:
                how = "was killed or crashed" if code < 0 else f"ended with exit code {code}"
                text = f"The training process {how}."
                if last_line:
                    text += f" Its last message: {last_line.removeprefix('adtn-studio ')}"
                text += " The run folder keeps its last finished epoch; resume it from Runs."
            self.log.emit("error", text)
            self.run_failed.emit(text)
        elif code != 0 and "worker rank" in last_line:  # the launcher names the rank that died
            self.log.emit("error", last_line.removeprefix("adtn-studio "))
        child.deleteLater()
        self._end_run()

    def _end_run(self) -> None:
        self._drain_timer.stop()
        self._drain()
        self._emit_pending_batch()  # the last progress comes before "ended"
        self._control = None
        self._set_state("ended")
        self.ended.emit(self._final_status)

    # -- draining events --------------------------------------------------------------

    @Slot()
    def _drain(self) -> None:
        if self._child is not None:
            self._child.collect()
        drained = self._drained
        drained.latest_batch, drained.heavy = None, False
        while self._queue:
            self._dispatch.emit(self._queue.popleft())
        if drained.latest_batch is None:
            return
        self._pending_batch = drained.latest_batch
        if drained.heavy:
            # after an epoch's redraw, the batch curve's redraw waits for the next turn of
            # the event loop: two shorter blocks instead of one long one
            QTimer.singleShot(0, self._emit_pending_batch)
        else:
            self._emit_pending_batch()

    @Slot()
    def _emit_pending_batch(self) -> None:
        event, self._pending_batch = self._pending_batch, None
        if event is not None:
            self.batch_progress.emit(event)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)


def _fields(event: EpochEnded) -> dict[str, object]:
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
