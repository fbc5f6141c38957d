"""The trainer: learning, events, stop/pause from another thread, exact resume, failures."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest
import torch

import engine.trainer as trainer_module
from engine.checkpoint import read_checkpoint_state
from engine.config import LayerSpec, RunConfig
from engine.events import (
    BatchEnded,
    EpochEnded,
    RunControl,
    RunEnded,
    RunFailed,
    RunStarted,
    TrainerCallback,
)
from engine.runs import RunPaths
from engine.trainer import train


def quick_config(**changes) -> RunConfig:
    """FC-2 on 256 generated examples: a few batches per epoch, well under a second."""
    base = RunConfig(
        model="fc2",
        dataset="synthetic",
        epochs=2,
        batch_size=32,
        lr=1e-3,
        limit_train=256,
        limit_test=64,
        device="cpu",
        seed=5,
    )
    config = dataclasses.replace(base, **changes)
    # No layers to encode: say that a dense model is meant (the engine refuses it otherwise).
    return dataclasses.replace(config, dense_baseline=not config.layers)


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.events: list = []

    def on_run_start(self, event):
        self.events.append(event)  # noqa: E704

    def on_batch_end(self, event):
        self.events.append(event)  # noqa: E704

    def on_epoch_end(self, event):
        self.events.append(event)  # noqa: E704

    def on_checkpoint(self, event):
        self.events.append(event)  # noqa: E704

    def on_run_end(self, event):
        self.events.append(event)  # noqa: E704

    def on_error(self, event):
        self.events.append(event)  # noqa: E704

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def test_two_epochs_lower_the_loss_and_report_plain_events(tmp_path):
    recorder = Recorder()
    summary = train(quick_config(), tmp_path / "run", callbacks=[recorder])
    assert summary.status == "finished"
    epochs = recorder.of(EpochEnded)
    assert [e.epoch for e in epochs] == [1, 2]
    assert epochs[1].train_loss < epochs[0].train_loss
    batches = recorder.of(BatchEnded)
    assert batches[-1].loss < batches[0].loss
    assert all(0.0 <= e.test_acc <= 1.0 and 0.0 <= e.train_acc <= 1.0 for e in epochs)
    assert isinstance(recorder.events[0], RunStarted) and isinstance(recorder.events[-1], RunEnded)
    started = recorder.events[0]
    assert (started.epochs, started.batches_per_epoch, started.start_epoch) == (2, 8, 1)
    assert batches[0].batch == 1 and batches[-1].eta_seconds == 0.0
    for event in recorder.events:  # plain values only: safe to hand to another thread
        assert not any(torch.is_tensor(v) for v in dataclasses.asdict(event).values())


def test_adtn_layer_trains_and_reports_gradient_norms(tmp_path):
    recorder = Recorder()
    config = quick_config(layers=[LayerSpec("fc2", depth=1)], adtn_lr=1e-2)
    summary = train(config, tmp_path / "run", callbacks=[recorder])
    assert summary.status == "finished"
    started = recorder.of(RunStarted)[0]
    assert started.params_total < started.dense_params_total
    assert started.compression["layers"][0]["name"] == "fc2"
    norms = recorder.of(BatchEnded)[0].grad_norms
    assert set(norms) == {"fc2"} and norms["fc2"] > 0
    assert recorder.of(EpochEnded)[0].params_total == started.params_total
    assert summary.compression_ratio == pytest.approx(
        started.dense_params_total / started.params_total
    )


def test_pretrained_init_trains_dense_then_fits_then_fine_tunes(tmp_path):
    recorder = Recorder()
    config = quick_config(
        layers=[LayerSpec("fc2")], init="pretrained", pretrain_epochs=1, epochs=1, fit_steps=20
    )
    summary = train(config, tmp_path / "run", callbacks=[recorder])
    assert summary.status == "finished"
    epochs = recorder.of(EpochEnded)
    assert [(e.epoch, e.phase) for e in epochs] == [(1, "pretrain"), (2, "train")]
    assert epochs[0].params_total == epochs[0].dense_params_total > epochs[1].params_total
    assert summary.best_epoch == 2  # the best checkpoint is of the compressed model
    assert "fc2" in summary.compression["fit_errors"]


def _history(run_dir):
    return read_checkpoint_state(RunPaths(run_dir).checkpoint("last"))["history"]


def _metrics(history):
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    return [{k: row[k] for k in keys} for row in history]


@pytest.mark.parametrize("layers", [[], [LayerSpec("fc2")]], ids=["dense", "adtn"])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, layers):
    config = quick_config(epochs=3, layers=layers)
    train(config, tmp_path / "straight")

    class StopInEpoch2(TrainerCallback):
        def __init__(self, control):
            self.control = control

        def on_batch_end(self, event):
            if event.epoch == 2 and event.batch == 3:
                self.control.request_stop()

    control = RunControl()
    stopped = train(config, tmp_path / "split", callbacks=[StopInEpoch2(control)], control=control)
    assert stopped.status == "stopped" and stopped.epochs_completed == 1
    resumed_events = Recorder()
    resumed = train(config, tmp_path / "split", callbacks=[resumed_events], resume=True)
    assert resumed.status == "finished"
    assert resumed_events.of(RunStarted)[0].start_epoch == 2
    expected = _metrics(_history(tmp_path / "straight"))
    for got, want in zip(_metrics(_history(tmp_path / "split")), expected, strict=True):
        assert got == pytest.approx(want, rel=1e-6)


def test_stop_from_another_thread_ends_between_batches(tmp_path):
    control = RunControl()
    first_batch, stop_sent = threading.Event(), threading.Event()

    class Signal(TrainerCallback):
        def on_batch_end(self, event):
            first_batch.set()
            stop_sent.wait(10)  # the other thread acts while this epoch is under way

    def stopper() -> None:
        first_batch.wait(10)
        control.request_stop()
        stop_sent.set()

    thread = threading.Thread(target=stopper)
    thread.start()
    recorder = Recorder()
    summary = train(
        quick_config(epochs=50), tmp_path / "run", callbacks=[Signal(), recorder], control=control
    )
    thread.join()
    assert summary.status == "stopped"
    assert len(recorder.of(BatchEnded)) == 1  # the stop is obeyed before the next batch
    assert recorder.of(RunEnded)[0].status == "stopped"
    assert json.loads(RunPaths(tmp_path / "run").summary.read_text())["status"] == "stopped"


def test_pause_blocks_between_batches_until_resumed(tmp_path):
    control = RunControl()
    batches_seen = []
    paused_at = threading.Event()

    class PauseOnce(TrainerCallback):
        def on_batch_end(self, event):
            batches_seen.append(event.batch)
            if len(batches_seen) == 2:
                control.pause()
                paused_at.set()

    def watch_then_resume():
        paused_at.wait(10)
        # nothing may run while paused: an absence, which only a span of time can show
        time.sleep(0.3)
        counts.append(len(batches_seen))
        control.resume()

    counts: list[int] = []
    watcher = threading.Thread(target=watch_then_resume)
    watcher.start()
    summary = train(
        quick_config(epochs=1), tmp_path / "run", callbacks=[PauseOnce()], control=control
    )
    watcher.join()
    assert counts == [2]
    assert summary.status == "finished" and len(batches_seen) == 8


def test_stop_wakes_a_paused_trainer(tmp_path):
    control = RunControl()

    class PauseThenStopElsewhere(TrainerCallback):
        def on_batch_end(self, event):
            if event.batch == 1:
                control.pause()
                threading.Timer(0.1, control.request_stop).start()

    summary = train(
        quick_config(), tmp_path / "run", callbacks=[PauseThenStopElsewhere()], control=control
    )
    assert summary.status == "stopped" and not control.paused


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    poisoned = threading.Event()
    real_loss = trainer_module.F.cross_entropy

    def loss_that_turns_nan(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if poisoned.is_set() else loss

    monkeypatch.setattr(trainer_module.F, "cross_entropy", loss_that_turns_nan)

    class PoisonAfterEpoch1(TrainerCallback):
        def on_epoch_end(self, event):
            poisoned.set()

    recorder = Recorder()
    summary = train(
        quick_config(epochs=3), tmp_path / "run", callbacks=[PoisonAfterEpoch1(), recorder]
    )
    assert summary.status == "failed" and summary.error_kind == "nan_loss"
    failure = recorder.of(RunFailed)[0]
    assert "epoch 2, batch 1" in failure.message and "lower the learning rate" in failure.message
    assert "epoch 1" in failure.message
    last = read_checkpoint_state(RunPaths(tmp_path / "run").checkpoint("last"))
    assert last["epoch"] == 1 and all(r["train_loss"] == r["train_loss"] for r in last["history"])
    assert recorder.events[-1].status == "failed"


def test_out_of_memory_advises_a_smaller_batch(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(trainer_module.F, "cross_entropy", out_of_memory)
    summary = train(quick_config(batch_size=64), tmp_path / "run")
    assert summary.error_kind == "out_of_memory"
    assert "smaller batch size (e.g. 32)" in summary.error_message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_reported(tmp_path):
    recorder = Recorder()
    summary = train(quick_config(device="cuda"), tmp_path / "run", callbacks=[recorder])
    assert summary.error_kind == "device" and "CUDA is not available" in summary.error_message
    assert recorder.of(RunFailed)[0].kind == "device"


def test_missing_data_is_reported_not_raised(tmp_path):
    config = quick_config(dataset="mnist", data_root=str(tmp_path / "none"), download=False)
    summary = train(config, tmp_path / "run")
    assert summary.error_kind == "data_unavailable" and "--data-root" in summary.error_message


def test_bad_config_and_unknown_layer_are_config_failures(tmp_path):
    assert train(quick_config(epochs=0), tmp_path / "a").error_kind == "config"
    summary = train(quick_config(layers=[LayerSpec("fc9")]), tmp_path / "b")
    assert summary.error_kind == "config" and "fc9" in summary.error_message


def test_a_finished_run_folder_is_not_overwritten(tmp_path):
    train(quick_config(epochs=1), tmp_path / "run")
    before = RunPaths(tmp_path / "run").checkpoint("last").read_bytes()
    summary = train(quick_config(epochs=1), tmp_path / "run")
    assert summary.error_kind == "config" and "already holds a run" in summary.error_message
    assert RunPaths(tmp_path / "run").checkpoint("last").read_bytes() == before
    assert json.loads(RunPaths(tmp_path / "run").summary.read_text())["status"] == "finished"


def test_device_auto_falls_back_to_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert trainer_module.resolve_device("auto") == torch.device("cpu")


def test_list_devices_offers_auto_first_and_the_cpu():
    from engine.trainer import list_devices

    values = [value for value, _ in list_devices()]
    assert values[0] == "auto" and values[-1] == "cpu"
    assert all(value in ("auto", "cpu", "mps") or value.startswith("cuda:") for value in values)


def test_warmup_rises_linearly_by_batch_over_the_first_epochs():
    config = quick_config(warmup_epochs=2, epochs=4)
    assert trainer_module.warmup_span(config, 0, 4) == (0.0, 0.5)
    assert trainer_module.warmup_span(config, 1, 4) == (0.5, 1.0)
    assert trainer_module.warmup_span(config, 2, 4) is None
    span = trainer_module.warmup_span(config, 0, 4)
    fractions = [trainer_module.warmup_fraction(span, b, 10) for b in range(1, 11)]
    assert fractions[0] == pytest.approx(0.05) and fractions[-1] == pytest.approx(0.5)
    assert all(b > a for a, b in zip(fractions, fractions[1:]))
    # a phase shorter than the warm-up ends it with the phase
    assert trainer_module.warmup_span(config, 0, 1) == (0.0, 1.0)


def test_warmup_run_steps_with_the_ramped_learning_rate(tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    summary = train(
        quick_config(
            warmup_epochs=1,
            epochs=2,
            schedule="none",
            lr=1e-3,
            optimizer="adam",
            dense_baseline=True,
        ),
        tmp_path / "run",
    )
    assert summary.status == "finished", summary.error_message
    per_epoch = len(seen) // 2
    assert seen[0] == pytest.approx(1e-3 / per_epoch)
    assert seen[per_epoch - 1] == pytest.approx(1e-3)
    assert all(lr == pytest.approx(1e-3) for lr in seen[per_epoch:])
    assert all(b > a for a, b in zip(seen[: per_epoch - 1], seen[1:per_epoch]))


def test_an_optimiser_state_that_does_not_fit_is_dropped_with_a_warning(caplog):
    # (a checkpoint of a version that kept one parameter per ADTN gate)
    old = [torch.nn.Parameter(torch.randn(4, 4)) for _ in range(3)]
    saved = torch.optim.Adam(old, lr=1e-3)
    sum(p.sum() for p in old).backward()
    saved.step()
    now = [torch.nn.Parameter(torch.randn(48))]
    optimizer = torch.optim.Adam(now, lr=1e-3)
    with caplog.at_level("WARNING", logger="engine.trainer"):
        trainer_module._restore_optimizer(optimizer, saved.state_dict())
    assert "optimiser starts afresh" in caplog.text
    assert not optimizer.state  # nothing half-loaded
    fitting = torch.optim.Adam(old, lr=1e-3)
    trainer_module._restore_optimizer(fitting, saved.state_dict())
    assert len(fitting.state) == 3
