"""Real short runs through the window: monitor, stop/pause/resume, export, the Runs page, close."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Qt

from ui.main_window import MONITOR_PAGE, RUNS_PAGE

RUN_TIMEOUT_MS = 120_000


def tiny_config(epochs: int = 2, name: str = "tiny", **changes):
    """FC-2 on the generated set with its small output layer encoded: seconds on a CPU."""
    from engine.config import LayerSpec, RunConfig

    return RunConfig(
        name=name,
        model="fc2",
        dataset="synthetic",
        layers=[LayerSpec("fc2")],
        epochs=epochs,
        batch_size=64,
        limit_train=256,
        limit_test=128,
        device="cpu",
        schedule="none",
        **changes,
    )


def run_to_end(qtbot, window, config, **kwargs) -> str:
    with qtbot.waitSignal(window.session.ended, timeout=RUN_TIMEOUT_MS) as blocker:
        window.start_run(config, **kwargs)
    return blocker.args[0]


def test_run_started_from_the_wizard_fills_the_monitor(qtbot, window, tmp_path):
    wizard = window.wizard
    source = wizard.source_page
    source.preset_combo.setCurrentIndex(source.preset_combo.findData("fc2-mnist"))
    source.preset_combo.activated.emit(source.preset_combo.currentIndex())
    source.dataset_combo.setCurrentIndex(source.dataset_combo.findData("synthetic"))
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: wizard.layer_model.layer_names() == ["fc1", "fc2"], timeout=30_000)
    wizard.layer_model.set_encoded("fc1", False)
    wizard.layer_model.set_encoded("fc2", True)
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    training = wizard.training_page
    training.epochs.setValue(2)
    training.batch_size.setValue(64)
    training.limit_train.setValue(256)
    training.limit_test.setValue(128)
    training.device.setCurrentIndex(training.device.findData("cpu"))
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)

    with qtbot.waitSignal(window.session.ended, timeout=RUN_TIMEOUT_MS) as ended:
        qtbot.mouseClick(wizard.start_button, Qt.MouseButton.LeftButton)
        assert window.pages.currentIndex() == MONITOR_PAGE
        assert window.monitor.stop_button.isEnabled()
    assert ended.args == ["finished"]

    monitor = window.monitor
    counts = monitor.curves.point_counts()
    assert counts["train_loss"] == counts["test_acc"] == 2
    assert counts["params"] == 3  # the count at the start, then one point an epoch
    assert counts["batch_loss"] == 2 * 4  # 256 examples in batches of 64, two epochs
    assert monitor.progress.value() == monitor.progress.maximum()
    assert monitor.layers.rowCount() == 1 and monitor.layers.item(0, 0).text() == "fc2"
    log = monitor.log_view.toPlainText()
    assert "Run started on cpu" in log and "Epoch 2:" in log and "Run finished." in log
    assert "Best test accuracy" in monitor.summary.text()
    assert not monitor.stop_button.isEnabled() and monitor.export_button.isEnabled()

    saved = monitor.save_plots(tmp_path, "png") + monitor.save_plots(tmp_path, "svg")
    assert len(saved) == 6 and all(path.stat().st_size > 1000 for path in saved)
    assert saved[0].read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in saved[3].read_text()[:500]
    csv_text = monitor.save_metrics_csv(tmp_path / "metrics.csv").read_text()
    lines = csv_text.splitlines()
    assert lines[0].startswith("epoch,phase,train_loss") and len(lines) == 3

    summary = json.loads((window.session.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2


# Runs long enough (in epochs of 4 batches) that a stop or pause sent from the window cannot
# arrive after the last batch, however fast the machine.
LONG_EPOCHS = 30


def test_stop_then_resume_from_the_runs_page(qtbot, window):
    session = window.session
    with qtbot.waitSignal(session.epoch_ended, timeout=RUN_TIMEOUT_MS):
        window.start_run(tiny_config(epochs=LONG_EPOCHS, name="stop-me"))
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as stopped:
        qtbot.keyClick(window, Qt.Key.Key_Period, Qt.KeyboardModifier.ControlModifier)
        assert session.state == "stopping"
    assert stopped.args == ["stopped"]
    run_dir = session.run_dir
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()

    window.show_page(RUNS_PAGE)
    runs = window.runs_view
    qtbot.waitUntil(lambda: runs.model.rowCount() == 1, timeout=30_000)
    runs.select_run(str(run_dir))
    assert runs.resume_button.isEnabled()
    assert runs.model.rows[0].status == "stopped"

    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as resumed:
        qtbot.mouseClick(runs.resume_button, Qt.MouseButton.LeftButton)
    assert resumed.args == ["finished"]
    assert session.run_dir == run_dir
    assert "resuming at epoch" in window.monitor.log_view.toPlainText()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == LONG_EPOCHS


def test_pause_holds_the_trainer_until_resumed(qtbot, window, wait_until_still):
    session = window.session
    with qtbot.waitSignal(session.batch_progress, timeout=RUN_TIMEOUT_MS):
        window.start_run(tiny_config(epochs=LONG_EPOCHS, name="pause-me"))
    qtbot.keyClick(window, Qt.Key.Key_P, Qt.KeyboardModifier.ControlModifier)
    assert session.state == "paused" and window.monitor.resume_button.isEnabled()
    # the batch in flight when pausing may still arrive; then none comes
    batches = wait_until_still(lambda: len(session.history.batch_x))
    # What is under test is that nothing arrives while paused, which only time can show.
    qtbot.wait(1500)
    session.deliver_events()
    assert len(session.history.batch_x) == batches
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as ended:
        qtbot.mouseClick(window.monitor.resume_button, Qt.MouseButton.LeftButton)
    assert ended.args == ["finished"] and len(session.history.batch_x) == 4 * LONG_EPOCHS


def test_export_dialog_shows_the_verification(qtbot, window, tmp_path):
    assert run_to_end(qtbot, window, tiny_config(epochs=1, name="export-me")) == "finished"
    dialog = window.open_export_dialog(str(window.session.run_dir))
    qtbot.addWidget(dialog)
    dialog.out_edit.setText(str(tmp_path / "out"))
    with qtbot.waitSignal(dialog.exported, timeout=RUN_TIMEOUT_MS) as exported:
        qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    report = exported.args[0]
    assert report.passed
    assert {f.format for f in report.files} == {"adtn", "dense", "onnx"}
    assert all(Path(f.path).is_file() for f in report.files)
    assert dialog.files_table.rowCount() == 3
    assert "Largest difference" in dialog.summary.text()
    assert "smaller" in dialog.summary.text() and "latency" in dialog.summary.text()
    qtbot.waitUntil(lambda: dialog.close_button.isEnabled(), timeout=10_000)


def test_runs_page_compares_runs(qtbot, window):
    for name in ("first", "second"):
        assert run_to_end(qtbot, window, tiny_config(epochs=1, name=name)) == "finished"
    window.show_page(RUNS_PAGE)
    runs = window.runs_view
    qtbot.waitUntil(lambda: runs.model.rowCount() == 2, timeout=30_000)
    assert {run.name for run in runs.model.rows} == {"first", "second"}
    assert runs.scatter_point_count() == 2
    runs.select_run(runs.model.rows[0].path)
    assert runs.curves.point_counts()["test_acc"] == 1
    runs.select_run(runs.model.rows[1].path, extend=True)
    assert runs.overlay_curve_count() == 2 and runs.tabs.currentIndex() == 1
    assert not runs.resume_button.isEnabled()  # finished runs and a multiple selection

    runs.select_run(runs.model.rows[0].path)
    with qtbot.waitSignal(runs.rerun_requested) as rerun:
        qtbot.mouseClick(runs.rerun_button, Qt.MouseButton.LeftButton)
    assert window.pages.currentIndex() == 0
    assert window.wizard.training_page.limit_train.value() == 256
    assert rerun.args[0].name == runs.model.rows[0].name


def test_closing_during_a_run_asks_then_stops_cleanly(qtbot, window, monkeypatch):
    session = window.session
    with qtbot.waitSignal(session.batch_progress, timeout=RUN_TIMEOUT_MS):
        window.start_run(tiny_config(epochs=50, name="close-me"))
    questions = []
    monkeypatch.setattr(
        window, "confirm_stop_on_close", lambda: questions.append(1) or len(questions) > 1
    )
    assert not window.close()  # first answer: no, keep training
    assert session.is_active() and window.isVisible()
    assert window.close()  # second answer: yes
    assert not session.is_active() and len(questions) == 2
    summary = json.loads((session.run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped"


def test_trainer_failures_reach_the_log_in_plain_words(qtbot, window):
    from engine.events import RunEnded, RunFailed

    session = window.session
    failures = []
    session.run_failed.connect(failures.append)
    session.receive(RunFailed("nan_loss", "the loss is nan at epoch 3, batch 7"))
    session.receive(RunEnded("failed", {}))
    session.deliver_events()
    log = window.monitor.log_view.toPlainText()
    assert "lower learning rate" in log and "epoch 3, batch 7" in log
    assert failures and "NaN" in failures[0]
    assert window.failure_box.isVisible() and "NaN" in window.failure_box.text()
    window.failure_box.close()


def test_an_engine_bug_reads_as_an_unexpected_error_not_a_user_mistake(
    qtbot, monkeypatch, tmp_path
):
    import engine.trainer
    from ui.training_session import TrainingSession

    def broken(*args, **kwargs):
        raise ValueError("an index went astray")

    monkeypatch.setattr(engine.trainer, "adtn_grad_norms", broken)  # the thread mode's trainer
    session = TrainingSession(mode="thread")
    failures, logged = [], []
    session.run_failed.connect(failures.append)
    session.log.connect(lambda level, text: logged.append((level, text)))
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as finished:
        session.start(tiny_config(epochs=1), tmp_path / "run")
    assert finished.args == ["failed"]
    assert len(failures) == 1 and failures[0].startswith("Unexpected error: ValueError")
    assert "configuration is not valid" not in failures[0]
    assert str(tmp_path / "run" / "log.txt") in failures[0]
    assert ("error", failures[0]) in logged
