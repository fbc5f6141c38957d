"""What the trainer reports, and the interface to receive it.

Events are frozen dataclasses of plain Python values (no tensors), so a GUI can queue them
across threads. ``HOOKS`` is the one table from event class to the ``TrainerCallback`` hook
that receives it: the dispatcher, the window's drain and the child-process event log all go
through it, so an event without a hook, or a hook that is misspelt, fails at once instead of
never firing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from engine.choices import FailureKind


@dataclass(frozen=True)
class RunStarted:
    run_dir: str
    device: str  # e.g. "cuda:0 (NVIDIA H100)" or "cpu"
    epochs: int  # total epochs of the run, dense pre-training included
    batches_per_epoch: int
    compression: dict[str, Any]  # CompressionReport.to_dict() of the planned compression
    params_total: int  # parameters of the compressed model that is the run's result
    dense_params_total: int  # parameters of the same model without compression
    start_epoch: int  # 1 for a new run; the first epoch still to train for a resumed one
    train_examples: int
    test_examples: int
    config: dict[str, Any] = field(default_factory=dict)
    # how the run is spread: processes, backend, global batch size and learning rate
    parallel: str = ""
    # test accuracy of the model with its pretrained weights, before compression (runs
    # with weights only; None otherwise)
    dense_test_acc: float | None = None
    notes: tuple[str, ...] = ()  # what was adapted, loaded or skipped, for the log


@dataclass(frozen=True)
class BatchEnded:
    epoch: int  # counted from 1, pre-training epochs included
    batch: int  # counted from 1 within the epoch
    batches: int
    loss: float
    acc: float  # of this batch, a fraction in [0, 1]
    examples_per_second: float
    elapsed: float  # seconds since this session of the run started
    eta_seconds: float  # estimated seconds until the run ends
    phase: str  # "pretrain" (dense) or "train"
    grad_norms: dict[str, float] | None = None  # per ADTN layer, every few batches


@dataclass(frozen=True)
class EpochEnded:
    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    best_test_acc: float  # best test accuracy of the compressed model so far (0 before)
    params_total: int  # parameters of the model as trained in this epoch
    dense_params_total: int
    seconds: float
    lr: float
    phase: str


@dataclass(frozen=True)
class CheckpointSaved:
    epoch: int
    path: str  # the .safetensors file
    kind: str  # "last" or "best"


@dataclass(frozen=True)
class DownloadProgress:
    dataset: str
    done_bytes: int
    total_bytes: int  # 0 when the server does not say
    # "download" (bytes arriving) or "load" (images decoded: done/total count images)
    what: str = "download"


@dataclass(frozen=True)
class RunFailed:
    kind: FailureKind  # why; FailureKind.ERROR is an unexpected error (a bug)
    message: str  # in plain words, with what to do

    def __post_init__(self) -> None:
        # a kind read back from an event log is a plain string; one this version does not
        # know (a newer writer) still reads as a failure
        try:
            kind = FailureKind(self.kind)
        except ValueError:
            kind = FailureKind.ERROR
        object.__setattr__(self, "kind", kind)


@dataclass(frozen=True)
class RunEnded:
    status: str  # "finished", "stopped" or "failed"
    summary: dict[str, Any]  # the contents of summary.json


class TrainerCallback:
    """Receives the trainer's events; override the hooks you need (the others do nothing).

    A subclass that defines an ``on_…`` method which is no hook (a misspelt one) is refused
    when the class is made.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hooks = set(HOOKS.values())
        unknown = [name for name in vars(cls) if name.startswith("on_") and name not in hooks]
        if unknown:
            raise TypeError(
                f"{cls.__name__}.{unknown[0]} is not a trainer hook "
                f"(hooks: {', '.join(sorted(hooks))})"
            )

    def on_run_start(self, event: RunStarted) -> None:
        """Data is loaded and the model built; training is about to begin."""

    def on_batch_end(self, event: BatchEnded) -> None:
        """An optimiser step finished."""

    def on_epoch_end(self, event: EpochEnded) -> None:
        """An epoch finished and was evaluated on the test set."""

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        """A checkpoint file was written."""

    def on_download(self, event: DownloadProgress) -> None:
        """Bytes of a missing data set arrived."""

    def on_run_end(self, event: RunEnded) -> None:
        """The run ended (finished, stopped or failed); always the last event."""

    def on_error(self, event: RunFailed) -> None:
        """The run failed; ``on_run_end`` follows."""


class RunControl:
    """Stop and pause requests from another thread (a window, a signal handler).

    The trainer checks between batches. Pausing blocks the trainer on an event, without
    polling; a stop request also wakes a paused trainer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # so a pause cannot undo a concurrent stop's wake-up
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def request_stop(self) -> None:
        with self._lock:
            self._stop.set()
            self._running.set()

    def pause(self) -> None:
        with self._lock:
            if not self._stop.is_set():
                self._running.clear()

    def resume(self) -> None:
        with self._lock:
            self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_while_paused(self) -> None:
        """Block while paused; return at once when running or when a stop was requested."""
        self._running.wait()


# The one table from event class to the hook that receives it.
HOOKS: dict[type, str] = {
    RunStarted: "on_run_start",
    BatchEnded: "on_batch_end",
    EpochEnded: "on_epoch_end",
    CheckpointSaved: "on_checkpoint",
    DownloadProgress: "on_download",
    RunFailed: "on_error",
    RunEnded: "on_run_end",
}
# Event classes by name, for the event log's records.
EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in HOOKS}


def hook_of(event: Any) -> str:
    """The name of the ``TrainerCallback`` hook that receives ``event``; ``TypeError`` for an
    object that is not a trainer event."""
    try:
        return HOOKS[type(event)]
    except KeyError:
        raise TypeError(f"not a trainer event: {type(event).__name__}") from None


class EventDispatcher:
    """Sends each event to the matching hook of every callback."""

    def __init__(self, callbacks: Any) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, TrainerCallback):
                raise TypeError(
                    f"a trainer callback must be a TrainerCallback, not {type(callback).__name__}"
                )

    def emit(self, event: Any) -> None:
        hook = hook_of(event)
        for callback in self.callbacks:
            getattr(callback, hook)(event)
