"""The training loop: one function, ``train``, shared by the window and the command line.

It runs in the calling thread (the GUI calls it from a worker thread), reports through
``TrainerCallback`` hooks, obeys a ``RunControl`` between batches, writes the run folder and
checkpoints after every epoch, and turns every failure into a ``RunFailed`` event with a
message in plain words. Each epoch reseeds the global RNG and the data order from
(seed, epoch), so a run resumed from its last checkpoint ends exactly where an uninterrupted
run would (on the CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.choices import PHASE_PRETRAIN, PHASE_TRAIN, FailureKind, RunStatus
from engine.compression import compress, encoded_layers
from engine.config import RunConfig
from engine.data import BatchIterator, epoch_seed, load_data
from engine.distill import distillation_loss, load_teacher
from engine.distributed import (
    DistributedContext,
    DistributedEnv,
    ShardedBatches,
    SynchronizedControl,
    detect_environment,
)
from engine.distributed import describe as describe_parallel
from engine.errors import (
    ConfigError,
    DeviceError,
    DistributedSetupError,
    EngineError,
    NonFiniteLoss,
)
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
from engine.logging_setup import app_log_file, run_log
from engine.metrics import improves_best
from engine.model_sources import record_model_source
from engine.runs import (
    RunLock,
    RunPaths,
    build_config_model_noted,
    check_resumable,
    read_summary,
    write_metrics,
    write_summary,
)

__all__ = [
    "DeviceError",
    "NonFiniteLoss",
    "RunControl",
    "RunSummary",
    "TrainerCallback",
    "list_devices",
    "resolve_device",
    "train",
]

log = logging.getLogger(__name__)

GRAD_NORM_EVERY = 20  # batches between per-ADTN-layer gradient norm reports
SEED_STREAM_DROPOUT, SEED_STREAM_FIT = 3, 4


@dataclass
class RunSummary:
    """How a run ended; also the contents of ``summary.json``."""

    status: str  # "running", "finished", "stopped" or "failed"
    run_dir: str
    name: str
    model: str
    dataset: str
    device: str = ""
    epochs: int = 0
    epochs_completed: int = 0
    test_acc: float = 0.0
    best_test_acc: float = 0.0
    best_epoch: int = 0
    params_total: int = 0
    dense_params_total: int = 0
    compression_ratio: float = 1.0  # dense_params_total / params_total
    compression: dict[str, Any] = field(default_factory=dict)  # per-layer report
    seconds_total: float = 0.0  # training time over all sessions of the run
    seconds_per_epoch: float = 0.0
    started_at: str = ""
    finished_at: str = ""
    error_kind: str = ""  # a FailureKind value
    error_message: str = ""
    # Who runs it: a "running" run whose process is gone was killed (see engine.runs).
    host: str = ""
    pid: int = 0
    # runs with pretrained weights: the dense model's test accuracy before compression
    dense_test_acc: float | None = None
    notes: list[str] = field(default_factory=list)  # adapted layers, loaded weights, data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda:all":  # data-parallel: each process takes its GPU (see _rank_device)
        name = "cuda"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was asked for, but CUDA is not available on "
                "this machine; use device 'auto' or 'cpu'"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} was asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            "device 'mps' was asked for, but Apple MPS is not available on this "
            "machine; use device 'auto' or 'cpu'"
        )
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def list_devices() -> list[tuple[str, str]]:
    """Every device a run can use, as (configuration value, description), "auto" first."""
    devices = [("auto", f"auto ({describe_device(resolve_device('auto'))})")]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index in range(gpus):
        devices.append((f"cuda:{index}", describe_device(torch.device(f"cuda:{index}"))))
    if gpus > 1:
        devices.append(("cuda:all", f"all {gpus} GPUs (data-parallel)"))
    if torch.backends.mps.is_available():
        devices.append(("mps", "Apple GPU (mps)"))
    devices.append(("cpu", "CPU"))
    return devices


def train(
    config: RunConfig,
    run_dir: str | Path,
    callbacks: Iterable[Any] = (),
    control: RunControl | None = None,
    resume: bool = False,
) -> RunSummary:
    """Train ``config`` into the run folder ``run_dir`` and return how it ended.

    With ``resume`` the run continues after the epoch of ``checkpoints/last`` (from the start
    when there is none). Failures are not raised: they are reported to ``on_error`` and
    ``on_run_end`` and returned as a summary with status "failed".
    """
    # under torchrun or srun every process calls train(); rank 0 alone reports and writes
    env = detect_environment()
    if env is not None and env.rank != 0:
        callbacks = ()
    run = _Run(config, Path(run_dir), EventDispatcher(callbacks), control or RunControl(), env)
    return run.execute(resume)


class _Run:
    """The state of one training session of a run folder."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        events: EventDispatcher,
        control: RunControl,
        env: DistributedEnv | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.is_main = env is None or env.rank == 0  # the one process that writes the folder
        self.dist: DistributedContext | None = None
        self.paths = RunPaths(run_dir)
        self.events = events
        self.control: RunControl | SynchronizedControl = control
        self.summary = RunSummary(
            RunStatus.RUNNING,
            str(run_dir),
            config.run_name,
            config.model,
            config.dataset,
            epochs=config.total_epochs,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self.history: list[dict[str, Any]] = []
        self.last_saved_epoch = 0
        self.owns_folder = False  # set once the folder is known to be this run's to write
        # the run folder's log.txt, open while this run trains (rank 0 only; it starts once
        # the folder is known to be this run's, see _prepare_folder)
        self.log_scope = contextlib.ExitStack()

    # -- outer shell: failures become events --------------------------------------------

    def execute(self, resume: bool) -> RunSummary:
        with self.log_scope:
            try:
                self.config.validate()
                self._join_job()  # before the folder: a rank that fails there ends the others fast
                # One process per run folder: a second resume (or a train into the same folder)
                # is refused before it writes anything; a killed run's lock is taken over.
                with RunLock(self.paths.root) if self.is_main else contextlib.nullcontext():
                    self._prepare_folder(resume)
                    status = self._train(resume)
                    if self.dist is not None:
                        # Every rank leaves the job together: rank 0 hosts the job's store, and
                        # a rank still talking to it when it exits was seen to abort at exit.
                        self.dist.barrier()
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none is lost
                kind, message = self._classify(exc)
                if kind is FailureKind.ERROR:  # a bug: its traceback goes to the log files
                    log.error("training failed: %s", message, exc_info=exc)
                else:  # the user's to fix: the message says it all
                    log.info("training failed (%s): %s", kind.value, message)
                return self._finish(RunStatus.FAILED, RunFailed(kind, message))
            finally:
                if self.dist is not None:
                    self.dist.close()
            log.info("run %s", status)
            return self._finish(status)

    def _classify(self, exc: Exception) -> tuple[FailureKind, str]:
        """The kind of a failure, by the exception's type, and its message in plain words."""
        kept = (
            f" The last good checkpoint (epoch {self.last_saved_epoch}) is kept in "
            f"{self.paths.checkpoints}."
            if self.last_saved_epoch
            else ""
        )
        if isinstance(exc, NonFiniteLoss):
            return exc.kind, (
                f"{exc} Training diverged; lower the learning rate "
                f"(lr = {self.config.lr:g}) and start again.{kept}"
            )
        if isinstance(exc, EngineError):
            text = str(exc)
            return exc.kind, text if text.endswith((".", "!", "?")) else f"{text}."
        if isinstance(exc, torch.OutOfMemoryError):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            smaller = max(1, self.config.batch_size // 2)
            return FailureKind.OUT_OF_MEMORY, (
                f"The device ran out of memory with batch size {self.config.batch_size}. Use "
                f"a smaller batch size (e.g. {smaller}) or compress more layers.{kept}"
            )
        if self.dist is not None and _is_collective_failure(exc):
            return FailureKind.DISTRIBUTED, (
                f"Another process of the data-parallel job failed or was killed "
                f"(rank {self.dist.rank} saw: {exc}).{kept}"
            )
        where = self.paths.log if self.owns_folder else app_log_file()
        details = f" The details are in {where}." if where is not None else ""
        return FailureKind.ERROR, (f"Unexpected error: {type(exc).__name__}: {exc}.{kept}{details}")

    def _finish(self, status: str, failure: RunFailed | None = None) -> RunSummary:
        self.summary.status = status
        self.summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        if failure is not None:
            self.summary.error_kind = failure.kind.value
            self.summary.error_message = failure.message
            self.events.emit(failure)
        if self.owns_folder:
            write_summary(self.paths.summary, self.summary.to_dict())
        self.events.emit(RunEnded(status, self.summary.to_dict()))
        return self.summary

    # -- set-up ---------------------------------------------------------------------------

    def _prepare_folder(self, resume: bool) -> None:
        last = self.paths.checkpoint("last")
        if last.exists() and not resume:
            raise ConfigError(
                f"the run folder {self.paths.root} already holds a run; "
                "resume it or choose another folder"
            )
        if resume:
            check_resumable(self.paths.root)  # a lost last checkpoint never restarts silently
        if not self.is_main:
            return  # the other ranks of a data-parallel job only read the folder
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.owns_folder = True
        self.log_scope.enter_context(run_log(self.paths.log))
        log.info(
            "%s run %s in %s (pid %d)",
            "resuming" if resume else "starting",
            self.config.run_name,
            self.paths.root,
            os.getpid(),
        )
        previous = read_summary(self.paths.summary) if resume else None
        if previous and previous.get("started_at"):
            self.summary.started_at = previous["started_at"]  # keeps the run's place in lists
        if previous:
            self.summary.dense_test_acc = previous.get("dense_test_acc")
        self.config.replace(name=self.config.run_name).save(self.paths.config)
        write_summary(self.paths.summary, self.summary.to_dict())

    def _train(self, resume: bool) -> str:
        config = self.config
        device = self.dist.device if self.dist is not None else resolve_device(config.device)
        self.summary.device = describe_device(device)
        loaded = load_data(
            config, progress=self._download_progress, load_progress=self._load_progress
        )
        info, train_set, test_set = loaded.info, loaded.train, loaded.test
        notes = list(loaded.notes)
        train_batches: BatchIterator | ShardedBatches  # a rank's share when distributed
        test_batches: BatchIterator | ShardedBatches
        train_batches = BatchIterator(
            train_set,
            info,
            config.batch_size,
            device,
            shuffle=True,
            augment=config.augment and info.augmentable,
            seed=config.seed,
        )
        test_batches = BatchIterator(test_set, info, config.batch_size, device)
        if self.dist is not None:  # every rank walks the same global batches, takes its share
            train_batches = ShardedBatches(train_batches, self.dist.rank, self.dist.world_size)
            test_batches = ShardedBatches(
                test_batches, self.dist.rank, self.dist.world_size, drop_small=False
            )
            self.control = SynchronizedControl(self.control, self.dist)
            self.summary.device = (
                f"{self.summary.device} ×{self.dist.world_size} ({self.dist.backend})"
            )

        checkpoint = None
        if resume and self.paths.checkpoint("last").exists():
            checkpoint = load_checkpoint(self.paths.checkpoint("last"))
        compressed = checkpoint.state["compressed"] if checkpoint else config.init == "scratch"
        before = bool(config.weights) and checkpoint is None  # measure the dense model first
        model, report, model_notes = build_config_model_noted(
            config,
            compressed=compressed and not before,
            load_weights=checkpoint is None,
            info=info,
            progress=self._download_progress,
        )
        notes += model_notes
        if self.is_main:  # rank 0 alone writes the run folder
            notes += record_model_source(config, self.paths.root)
        if before:
            dense_steps = _Steps(config, device, 1, 1, self.dist)
            _, self.summary.dense_test_acc = dense_steps.evaluate(model.to(device), test_batches)
            notes.append(
                f"dense model with {config.weights}: test accuracy "
                f"{self.summary.dense_test_acc:.2%} before compression"
            )
            if compressed and config.layers:
                report = compress(model, config.layers)
        teacher = None
        if config.teacher:
            teacher, teacher_note = load_teacher(config, info, progress=self._download_progress)
            notes.append(teacher_note)
        for note in notes:
            log.info("%s", note)
        self.summary.notes = notes
        if not config.layers:
            log.info("dense baseline run: no layer is compressed (dense_baseline = true)")
        self.summary.compression = report.to_dict()
        self.summary.dense_params_total = report.model_params_before
        self.summary.params_total = report.model_params_after
        self.summary.compression_ratio = report.ratio
        start_epoch = 1
        if checkpoint:
            model.load_state_dict(checkpoint.model_state)
            self._restore_progress(checkpoint.state)
            start_epoch = checkpoint.state["epoch"] + 1
        model.to(device)
        if self.dist is not None:
            model = self.dist.prepare_model(model)
            log.info("%s", describe_parallel(self.dist, config.batch_size, config.lr))

        self.events.emit(
            RunStarted(
                run_dir=str(self.paths.root),
                device=self.summary.device,
                epochs=config.total_epochs,
                batches_per_epoch=len(train_batches),
                compression=report.to_dict(),
                params_total=report.model_params_after,
                dense_params_total=report.model_params_before,
                start_epoch=start_epoch,
                train_examples=train_batches.num_examples,
                test_examples=test_batches.num_examples,
                config=config.to_dict(),
                parallel=describe_parallel(self.dist, config.batch_size, config.lr),
                dense_test_acc=self.summary.dense_test_acc,
                notes=tuple(notes),
            )
        )

        steps = _Steps(config, device, len(train_batches), start_epoch, self.dist)
        steps.teacher = teacher.to(device) if teacher is not None else None
        optimizer = None
        for epoch in range(start_epoch, config.total_epochs + 1):
            phase = self._phase(epoch)
            if phase == PHASE_TRAIN and not compressed:
                model = self._compress_fitted(model, epoch)
                compressed, optimizer = True, None
            if optimizer is None:
                optimizer = _make_optimizer(model, config)
                if (
                    checkpoint
                    and checkpoint.state["phase"] == phase
                    and checkpoint.optimizer_state is not None
                ):  # the trainer saves one
                    _restore_optimizer(optimizer, checkpoint.optimizer_state)
                    if steps.scaler.is_enabled() and checkpoint.state.get("grad_scaler"):
                        steps.scaler.load_state_dict(checkpoint.state["grad_scaler"])
            lr = _set_learning_rate(optimizer, config, *self._phase_position(epoch))
            steps.warmup = warmup_span(config, *self._phase_position(epoch))
            rank = self.dist.rank if self.dist is not None else 0  # own dropout masks a rank
            torch.manual_seed(epoch_seed(config.seed, epoch, SEED_STREAM_DROPOUT) + rank)
            started = time.perf_counter()
            train_result = steps.run_epoch(
                model, optimizer, train_batches, epoch, phase, self.control, self.events
            )
            if train_result is None:
                return RunStatus.STOPPED
            test_loss, test_acc = steps.evaluate(model, test_batches)
            seconds = time.perf_counter() - started
            self._end_epoch(
                model,
                optimizer,
                steps,
                epoch,
                phase,
                compressed,
                lr,
                seconds,
                train_result,
                (test_loss, test_acc),
            )
            if self.control.stop_requested and epoch < config.total_epochs:
                return RunStatus.STOPPED
        return RunStatus.FINISHED

    def _join_job(self) -> None:
        """Under torchrun or srun: take this rank's device and join the process group."""
        if self.env is None:
            return
        device = _rank_device(resolve_device(self.config.device), self.env)
        self.dist = DistributedContext(self.env, device).start()
        log.info("rank %d of %d on %s", self.env.rank, self.env.world_size, device)

    def _download_progress(self, done: int, total: int) -> None:
        self.events.emit(DownloadProgress(self.config.dataset, done, total))

    def _load_progress(self, done: int, total: int) -> None:
        self.events.emit(DownloadProgress(self.config.dataset, done, total, what="load"))

    def _phase(self, epoch: int) -> str:
        pretraining = self.config.init == "pretrained" and epoch <= self.config.pretrain_epochs
        return PHASE_PRETRAIN if pretraining else PHASE_TRAIN

    def _phase_position(self, epoch: int) -> tuple[int, int]:
        """(0-based epoch within its phase, epochs in that phase)."""
        pretrain = self.config.pretrain_epochs if self.config.init == "pretrained" else 0
        if epoch <= pretrain:
            return epoch - 1, pretrain
        return epoch - pretrain - 1, self.config.epochs

    def _compress_fitted(self, model: nn.Module, epoch: int) -> nn.Module:
        """Replace the chosen layers of the pre-trained dense model by ADTNs fitted to them
        (on the model's device)."""
        torch.manual_seed(epoch_seed(self.config.seed, epoch, SEED_STREAM_FIT))
        report = compress(model, self.config.layers, fit=True, fit_steps=self.config.fit_steps)
        self.summary.compression = report.to_dict()
        return model

    def _restore_progress(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.last_saved_epoch = state["epoch"]
        self.summary.best_test_acc = state.get("best_test_acc", 0.0)
        self.summary.best_epoch = state.get("best_epoch", 0)
        self.summary.epochs_completed = state["epoch"]
        self.summary.seconds_total = sum(row["seconds"] for row in self.history)
        if self.history:
            self.summary.test_acc = self.history[-1]["test_acc"]
            self.summary.seconds_per_epoch = self.summary.seconds_total / len(self.history)

    # -- end of epoch: record, checkpoint, report ------------------------------------------

    def _end_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        steps: _Steps,
        epoch: int,
        phase: str,
        compressed: bool,
        lr: float,
        seconds: float,
        train_result: tuple[float, float],
        test_result: tuple[float, float],
    ) -> None:
        summary = self.summary
        params = sum(p.numel() for p in model.parameters())
        improved = improves_best(phase, test_result[1], summary.best_test_acc, summary.best_epoch)
        if improved:
            summary.best_test_acc, summary.best_epoch = test_result[1], epoch
        row = {
            "epoch": epoch,
            "phase": phase,
            "train_loss": train_result[0],
            "train_acc": train_result[1],
            "test_loss": test_result[0],
            "test_acc": test_result[1],
            "best_test_acc": summary.best_test_acc,
            "params_total": params,
            "dense_params_total": summary.dense_params_total,
            "seconds": seconds,
            "lr": lr,
        }
        self.history.append(row)
        summary.epochs_completed = epoch
        summary.test_acc = test_result[1]
        summary.seconds_total += seconds
        summary.seconds_per_epoch = summary.seconds_total / len(self.history)

        state = {
            "epoch": epoch,
            "phase": phase,
            "compressed": compressed,
            "best_test_acc": summary.best_test_acc,
            "best_epoch": summary.best_epoch,
            "history": self.history,
            "grad_scaler": steps.scaler.state_dict(),
            "config": self.config.to_dict(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        saved = ["last"] + (["best"] if improved else [])
        if self.is_main:
            for kind in saved:
                save_checkpoint(self.paths.checkpoint(kind), model, state, optimizer)
            write_metrics(self.paths.metrics, self.history)
            write_summary(self.paths.summary, summary.to_dict())
        self.last_saved_epoch = epoch

        self.events.emit(
            EpochEnded(
                epoch=epoch,
                train_loss=train_result[0],
                train_acc=train_result[1],
                test_loss=test_result[0],
                test_acc=test_result[1],
                best_test_acc=summary.best_test_acc,
                params_total=params,
                dense_params_total=summary.dense_params_total,
                seconds=seconds,
                lr=lr,
                phase=phase,
            )
        )
        for kind in saved:
            self.events.emit(CheckpointSaved(epoch, str(self.paths.checkpoint(kind)), kind))


class _Steps:
    """Optimiser steps and evaluation on one device, with mixed precision on CUDA."""

    def __init__(
        self,
        config: RunConfig,
        device: torch.device,
        batches_per_epoch: int,
        start_epoch: int,
        dist: DistributedContext | None = None,
    ) -> None:
        self.device = device
        self.dist = dist
        self._ddp: tuple[tuple[int, ...], nn.Module] | None = None
        use_amp = config.amp and device.type == "cuda"
        # bfloat16 has float32's range, so products of many ADTN gates cannot overflow it
        bf16 = use_amp and torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.use_amp = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not bf16)
        self.batches_per_epoch = batches_per_epoch
        self.batches_left = batches_per_epoch * (config.total_epochs - start_epoch + 1)
        self.session_start = time.perf_counter()
        self.session_batches = 0
        self.warmup: tuple[float, float] | None = None  # this epoch's warm-up (start, end)
        self.teacher: nn.Module | None = None  # knowledge distillation (engine.distill)
        self.distill_weight = config.distill_weight
        self.distill_temperature = config.distill_temperature

    def _autocast(self):
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _trainable(self, model: nn.Module) -> nn.Module:
        """``model`` itself, or in a data-parallel run its DDP wrapper (made again when its
        parameters change: dense pre-training ends by compressing the model in place)."""
        if self.dist is None:
            return model
        key = tuple(id(p) for p in model.parameters())
        if self._ddp is None or self._ddp[0] != key:
            self._ddp = (key, self.dist.wrap(model))
        return self._ddp[1]

    def run_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: BatchIterator | ShardedBatches,
        epoch: int,
        phase: str,
        control: RunControl | SynchronizedControl,
        events: EventDispatcher,
    ) -> tuple[float, float] | None:
        """Train one epoch; (mean loss, accuracy), or None when a stop was requested."""
        model.train()
        net = self._trainable(model)
        loss_sum, correct, seen = 0.0, 0, 0
        epoch_start = time.perf_counter()
        epoch_lrs = [group["lr"] for group in optimizer.param_groups]
        for batch, (images, labels) in enumerate(batches.epoch(epoch), start=1):
            if self.warmup is not None:
                fraction = warmup_fraction(self.warmup, batch, self.batches_per_epoch)
                for group, epoch_lr in zip(optimizer.param_groups, epoch_lrs):
                    group["lr"] = epoch_lr * fraction
            control.wait_while_paused()
            if control.stop_requested:
                return None
            with self._autocast():
                logits = net(images)
                if self.teacher is not None:
                    with torch.no_grad():
                        taught = self.teacher(images)
                    loss = distillation_loss(
                        logits.float(),
                        taught.float(),
                        labels,
                        self.distill_weight,
                        self.distill_temperature,
                    )
                else:
                    loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            # a rank's share weighted so that DDP's average is the global batch's gradient
            weight = getattr(batches, "loss_weight", 1.0)
            self.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
            grad_norms = None
            if batch == 1 or batch % GRAD_NORM_EVERY == 0:
                grad_norms = adtn_grad_norms(model, self.scaler)
            batch_correct = (logits.argmax(1) == labels).sum()
            stats = torch.stack([loss.detach().float(), batch_correct.float()])
            count = int(labels.shape[0])
            if self.dist is not None:  # the global batch's loss and hits, the same on all ranks
                share = stats.new_tensor([weight / self.dist.world_size, 1.0])
                stats = self.dist.sum_tensor(stats * share)
                assert isinstance(batches, ShardedBatches)  # as every distributed run's are
                count = batches.global_size
            loss_value, correct_value = stats.tolist()
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(
                    f"The loss became {loss_value} at epoch {epoch}, batch {batch}."
                )
            self.scaler.step(optimizer)
            self.scaler.update()

            loss_sum += loss_value * count
            correct += int(correct_value)
            seen += count
            self.session_batches += 1
            self.batches_left -= 1
            now = time.perf_counter()
            elapsed = now - self.session_start
            events.emit(
                BatchEnded(
                    epoch=epoch,
                    batch=batch,
                    batches=self.batches_per_epoch,
                    loss=loss_value,
                    acc=correct_value / count,
                    examples_per_second=seen / max(now - epoch_start, 1e-9),
                    elapsed=elapsed,
                    eta_seconds=elapsed / self.session_batches * self.batches_left,
                    phase=phase,
                    grad_norms=grad_norms,
                )
            )
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: BatchIterator | ShardedBatches
    ) -> tuple[float, float]:
        """(mean loss, accuracy) over ``batches``."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for images, labels in batches.epoch(0):
            if labels.numel() == 0:
                continue  # a rank with no share of a small last batch
            with self._autocast():
                logits = model(images).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(1) == labels).sum()
        count = batches.num_examples
        if self.dist is not None:  # each rank evaluated its share of the test set
            total_loss, total_correct = self.dist.sum([loss_sum.item(), float(correct.item())])
            return total_loss / count, total_correct / count
        return loss_sum.item() / count, correct.item() / count


def _is_collective_failure(exc: Exception) -> bool:
    """A collective that failed because a peer went away (gloo raises plain RuntimeErrors)."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        mark in text
        for mark in ("gloo", "Gloo", "NCCL", "Connection closed", "Broken pipe", "Connection reset")
    )


def _rank_device(device: torch.device, env: DistributedEnv) -> torch.device:
    """One GPU per process on a node (``cuda:LOCAL_RANK``); on the CPU every rank uses it."""
    if device.type != "cuda":
        return device
    if env.local_rank >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"rank {env.rank} needs GPU cuda:{env.local_rank}, but this machine has "
            f"{torch.cuda.device_count()}; start at most that many processes per machine"
        )
    return torch.device(f"cuda:{env.local_rank}")


def adtn_grad_norms(model: nn.Module, scaler: torch.amp.GradScaler) -> dict[str, float]:
    """The gradient norm of each encoded layer's generator parameters (unscaled)."""
    layers = encoded_layers(model)
    if not layers:
        return {}
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    norms = {}
    for name, layer in layers.items():
        grads = [p.grad for p in layer.generator.parameters() if p.grad is not None]
        norms[name] = (
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
            if grads
            else None
        )
    return {
        name: (float(norm) / scale if norm is not None else 0.0) for name, norm in norms.items()
    }


def _restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The checkpoint's optimiser state; one saved by a version that stored an ADTN's gates
    as one parameter each does not fit, and the optimiser starts afresh (the
    model's weights are restored all the same)."""
    try:
        optimizer.load_state_dict(state)
    except ValueError as error:
        log.warning(
            "the checkpoint's optimiser state does not fit this model's parameters (%s); "
            "the optimiser starts afresh",
            error,
        )


def _make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the encoded layers' generators (``adtn_lr``, no weight decay —
    the ADTN's weight is renormalised, so decaying its gates would only fight that, and a
    product of factors is not a weight to shrink) and the rest."""
    adtn_ids = {
        id(p) for layer in encoded_layers(model).values() for p in layer.generator.parameters()
    }
    adtn_params = [p for p in model.parameters() if id(p) in adtn_ids]
    other_params = [p for p in model.parameters() if id(p) not in adtn_ids]
    groups: list[dict[str, Any]]
    groups = [{"params": other_params, "base_lr": config.lr, "weight_decay": config.weight_decay}]
    if adtn_params:
        adtn_lr = config.adtn_lr or config.lr
        groups.append({"params": adtn_params, "base_lr": adtn_lr, "weight_decay": 0.0})
    groups = [group for group in groups if group["params"]]
    for group in groups:
        group["lr"] = group["base_lr"]
    # Fused kernels update every parameter in one pass; an ADTN model holds a hundred or more
    # small local tensors, and the default per-tensor loop cost more than the layers' maths.
    fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            fused=fused or None,
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)
    return torch.optim.Adam(groups, lr=config.lr, fused=fused or None)


def _set_learning_rate(
    optimizer: torch.optim.Optimizer, config: RunConfig, phase_epoch: int, phase_epochs: int
) -> float:
    """Set every group's learning rate for this epoch of the schedule; return the first's."""
    if config.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * phase_epoch / phase_epochs))
    elif config.schedule == "step":
        factor = config.lr_gamma ** sum(1 for m in config.lr_milestones if phase_epoch >= m)
    else:
        factor = 1.0
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def warmup_span(
    config: RunConfig, phase_epoch: int, phase_epochs: int
) -> tuple[float, float] | None:
    """The warm-up factor at the start and end of this epoch of its phase (rising linearly
    from 0 to 1 over ``warmup_epochs``, never longer than the phase), or None after it."""
    warm = min(int(getattr(config, "warmup_epochs", 0)), phase_epochs)
    if phase_epoch >= warm:
        return None
    return phase_epoch / warm, (phase_epoch + 1) / warm


def warmup_fraction(span: tuple[float, float], batch: int, batches: int) -> float:
    """The factor at ``batch`` (1-based) of an epoch of ``batches``: never 0, so the first
    step already moves."""
    start, end = span
    return start + (end - start) * min(batch, batches) / max(batches, 1)
