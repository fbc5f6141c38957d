"""What a walk through the window as a new user found (issue 14, "The window"), each fixed:
export folders and overwrites, saves that fail, learning rates, plots, data sets, the runs
table, numbers that agree with the engine, the review, and the smaller things."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from ui.main_window import MONITOR_PAGE, RUNS_PAGE, MainWindow
from ui.wizard.wizard import REVIEW, SOURCE, TRAINING

RUN_TIMEOUT_MS = 120_000


def tiny_config(epochs: int = 1, name: str = "audit", **changes):
    """FC-2 on the generated set with its small output layer encoded: seconds on a CPU."""
    from engine.config import LayerSpec, RunConfig

    values = dict(
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
    )
    values.update(changes)
    return RunConfig(**values)


def run_to_end(qtbot, window, config, **kwargs) -> str:
    with qtbot.waitSignal(window.session.ended, timeout=RUN_TIMEOUT_MS) as blocker:
        window.start_run(config, **kwargs)
    return blocker.args[0]


# -- 1, 2, 9, 12: export ---------------------------------------------------------------------


def test_export_goes_to_the_runs_own_folder_and_asks_before_replacing(qtbot, window, tmp_path):
    from ui.settings import remember_folder

    remember_folder("export", tmp_path / "another-runs-export")  # the last folder used
    assert run_to_end(qtbot, window, tiny_config(name="export-me")) == "finished"
    run_dir = window.session.run_dir
    dialog = window.open_export_dialog(str(run_dir))
    qtbot.addWidget(dialog)
    assert Path(dialog.out_edit.text()) == run_dir / "export"

    for box in ("dense", "onnx"):
        dialog.format_boxes[box].setChecked(False)
    with qtbot.waitSignal(dialog.exported, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.is_exporting(), timeout=10_000)
    bundle = run_dir / "export" / "export-me.adtn"
    assert bundle.is_file()
    # Every row of the result table shows in full (it showed one and a half).
    table = dialog.files_table
    rows = sum(table.rowHeight(row) for row in range(table.rowCount()))
    assert table.minimumHeight() >= table.horizontalHeader().height() + rows

    asked = []
    dialog.confirm_overwrite = lambda paths: asked.append(paths) or False
    before = bundle.stat().st_mtime_ns
    qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    assert asked == [[bundle]] and not dialog.is_exporting()
    assert "cancelled" in dialog.summary.text() and bundle.stat().st_mtime_ns == before

    dialog.confirm_overwrite = lambda paths: True
    with qtbot.waitSignal(dialog.exported, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.is_exporting(), timeout=10_000)


# -- 3: saves report what really happened ---------------------------------------------------


def test_saves_into_an_unwritable_place_say_so(qtbot, window, tmp_path, capfd):
    assert run_to_end(qtbot, window, tiny_config(name="save-me")) == "finished"
    monitor = window.monitor
    errors = []
    monitor.show_error = lambda title, text: errors.append(text)
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")

    assert not monitor.save_plots_into(not_a_folder)
    assert not monitor.save_csv_to(tmp_path / "missing" / "metrics.csv")
    assert len(errors) == 2 and "not saved" in errors[0] and "not saved" in errors[1]
    log = monitor.log_view.toPlainText()
    assert "plot files" not in log and "Saved metrics" not in log
    assert log.count("not saved") == 2
    assert not (tmp_path / "missing").exists()

    assert monitor.save_plots_into(tmp_path / "plots")
    assert monitor.save_csv_to(tmp_path / "metrics.csv")
    assert len(list((tmp_path / "plots").iterdir())) == 6
    assert "Saved 6 plot files" in monitor.log_view.toPlainText()
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,phase,train_loss")
    assert "Traceback" not in capfd.readouterr().err


def test_an_unwritable_folder_for_a_non_root_user(tmp_path):
    """Permissions stop everyone but root: the plot writer raises instead of claiming."""
    import os

    from ui.plots import RunCurves, save_plot

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(OSError):
        save_plot(RunCurves().loss_plot, folder / "loss.png")


# -- 4: learning rates ----------------------------------------------------------------------


def test_learning_rate_reads_scientific_notation(qtbot, window):
    field = window.wizard.training_page.lr
    field.lineEdit().selectAll()
    qtbot.keyClicks(field, "1e-3")
    qtbot.keyClick(field, Qt.Key.Key_Return)
    assert field.value() == pytest.approx(1e-3) and field.text() == "0.001"
    field.lineEdit().selectAll()
    qtbot.keyClicks(field, "2.5e-4")
    qtbot.keyClick(field, Qt.Key.Key_Return)
    assert field.value() == pytest.approx(2.5e-4)
    assert window.wizard.training_page.apply(window.wizard.config).lr == pytest.approx(2.5e-4)


def test_an_absurd_learning_rate_asks_before_start(qtbot, window):
    wizard = window.wizard
    source = wizard.source_page
    source.dataset_combo.setCurrentIndex(source.dataset_combo.findData("synthetic"))
    wizard.training_page.optimizer.setCurrentIndex(wizard.training_page.optimizer.findData("adam"))
    wizard.training_page.lr.setValue(5.0)
    started, asked = [], []
    wizard.start_requested.disconnect()
    wizard.start_requested.connect(started.append)
    wizard.confirm_start = lambda title, text: asked.append(text) or False
    wizard.request_start()
    assert not started and len(asked) == 1 and "5" in asked[0] and "Adam" in asked[0]
    assert wizard.current_page() == TRAINING
    wizard.confirm_start = lambda title, text: True
    wizard.request_start()
    assert len(started) == 1 and started[0].lr == 5.0
    wizard.training_page.lr.setValue(0.002)
    asked.clear()
    wizard.confirm_start = lambda title, text: asked.append(text) or False
    wizard.request_start()
    assert not asked and len(started) == 2


def test_a_run_at_chance_level_is_reported_as_such(window):
    from engine.events import EpochEnded

    session, monitor = window.session, window.monitor
    session.config = tiny_config()
    session.run_dir = Path("/nonexistent/run")
    outcomes = []
    monitor.outcome_shown.connect(outcomes.append)
    for epoch, acc in ((1, 0.098), (2, 0.101)):  # 10 classes: guessing gives 10 %
        session.history.add_epoch(
            vars(EpochEnded(epoch, 2.3, acc, 2.3, acc, acc, 100, 1000, 1.0, 1e-3, "train"))
        )
    session.ended.emit("finished")  # as the session does when its run is over
    assert "chance level" in monitor.outcome and "chance level" in monitor.summary.text()
    assert outcomes == [monitor.outcome]
    session.history.add_epoch(
        vars(EpochEnded(3, 0.3, 0.9, 0.3, 0.9, 0.9, 100, 1000, 1.0, 1e-3, "train"))
    )
    session.ended.emit("finished")  # as the session does when its run is over
    assert monitor.outcome == "Run finished."


# -- 6: plots ----------------------------------------------------------------------------


def test_plot_axes_show_plain_numbers(qapp):
    from ui.plots import RunCurves, decade_ticks

    curves = RunCurves()
    for plot in curves.plots().values():
        for side in ("left", "bottom"):
            axis = plot.getPlotItem().getAxis(side)
            assert not axis.autoSIPrefix
            # A tiny range (one point) gave "91.1100000000002"; small losses "(x0.001)".
            assert axis.tickStrings([91.11000000000021], 1.0, 1e-13) == ["91.11"]
            assert axis.tickStrings([0.0005, 0.0008], 1.0, 0.0001) == ["0.0005", "0.0008"]
    # Under one decade, 2·10ⁿ and 5·10ⁿ are labelled too: never a lone "10⁴".
    major, minor = decade_ticks(math.log10(12_000), math.log10(60_000))
    labelled = [label for _, label in major + minor if label]
    assert "2·10⁴" in labelled and "5·10⁴" in labelled
    major, minor = decade_ticks(2.0, 5.0)
    assert not any(label for _, label in minor)


def test_parameter_counts_show_from_the_start_and_ranges_reset(qapp):
    from ui.metric_history import MetricHistory
    from ui.plots import RunCurves

    curves = RunCurves()
    curves.plan(1_432, 203_530, epochs=5)
    counts = curves.point_counts()
    assert counts["params"] == 1 and counts["dense_params"] == 2  # before any epoch ends
    ticks = curves.count_axis_ticks
    assert [label for _, label in ticks[0]] == ["10²", "10³", "10⁴", "10⁵", "10⁶"]
    item = curves.loss_plot.getPlotItem()
    item.setXRange(100, 200, padding=0)
    item.setYRange(5, 6, padding=0)
    curves.clear()
    assert item.getViewBox().autoRangeEnabled() == [True, True]
    (x_low, x_high), (y_low, y_high) = item.getViewBox().viewRange()
    assert x_high < 2 and y_high < 2  # nothing of the earlier 100..200 × 5..6 is left
    history = MetricHistory()
    history.add_epoch({"epoch": 1, "params_total": 1432, "dense_params_total": 203530})
    curves.plan(1_432, 203_530, epochs=5)
    curves.show(history)
    assert curves.point_counts()["params"] == 2


def test_batch_loss_smoothing_and_hover_read_out(qapp):
    from ui.metric_history import MetricHistory
    from ui.plots import RunCurves, smoothed

    assert smoothed([1.0, 3.0], 0.0) == [1.0, 3.0]
    assert smoothed([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no start bias
    assert smoothed([0.0, 10.0], 0.5) == pytest.approx([0.0, 10.0 * 0.5 / 0.75])
    curves = RunCurves()
    control = curves.smoothing_control()  # noqa: F841 (the slider lives in this widget)
    history = MetricHistory()
    for batch, loss in enumerate((4.0, 1.0, 4.0, 1.0), start=1):
        history.add_batch(1, batch, 4, loss)
    history.add_epoch(
        {"epoch": 1, "train_loss": 2.5, "test_loss": 2.0, "train_acc": 0.5, "test_acc": 0.61}
    )
    curves.show(history)
    curves.smoothing_slider.setValue(0)
    assert curves.curve_data("batch_loss")[1] == [4.0, 1.0, 4.0, 1.0]
    curves.smoothing_slider.setValue(90)
    smooth = curves.curve_data("batch_loss")[1]
    assert max(smooth) - min(smooth) < 3.0 and curves.smoothing == pytest.approx(0.9)
    text = curves.readouts["accuracy"].show_at(1.02)
    assert "epoch 1" in text and "test: 61.00 %" in text and "train: 50.00 %" in text
    assert curves.readouts["accuracy"].label.isVisible()
    assert not curves.readouts["loss"].label.isVisible()


# -- 7: a missing data set ----------------------------------------------------------------


def test_start_never_downloads_and_says_what_to_click(qtbot, window, tmp_path):
    wizard = window.wizard
    source = wizard.source_page
    empty = tmp_path / "no-data"
    empty.mkdir()
    source.data_root_edit.setText(str(empty))
    source.dataset_combo.setCurrentIndex(source.dataset_combo.findData("mnist"))
    notices, started = [], []
    wizard.show_message = lambda title, text: notices.append(text)
    wizard.start_requested.disconnect()
    wizard.start_requested.connect(started.append)
    wizard.show_page(TRAINING)
    wizard.request_start()
    assert not started and wizard.current_page() == SOURCE
    assert len(notices) == 1 and "Download" in notices[0] and "Browse" in notices[0]
    assert "--data-root" not in notices[0] and "ADTN_DATA_DIR" not in notices[0]
    assert list(empty.iterdir()) == []


def test_a_run_without_its_data_fails_in_window_words(qtbot, window, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    # download = true, as a configuration written for the command line may say: the window
    # still never starts a download nobody asked for.
    config = tiny_config(name="no-data", dataset="mnist", data_root=str(empty), download=True)
    failures = []
    window.session.run_failed.connect(failures.append)
    assert run_to_end(qtbot, window, config) == "failed"
    text = failures[0]
    assert "Download" in text and "Browse" in text
    for command_line_word in ("--data-root", "ADTN_DATA_DIR", "download = true"):
        assert command_line_word not in text
    monitor = window.monitor
    assert "starting" not in monitor.progress_label.text()
    assert not monitor.export_button.isEnabled() and not window.export_action.isEnabled()
    assert list(empty.iterdir()) == []
    window.failure_box.close()


# -- 9, 12: runs table and monitor after a restart -------------------------------------------


def test_runs_appear_by_themselves_and_unfinished_runs_show_no_ratio(qtbot, window):
    from engine.runs import new_run_dir

    window.show_page(RUNS_PAGE)
    runs = window.runs_view
    qtbot.waitUntil(lambda: runs.folder_label.text() != "", timeout=30_000)
    assert runs.model.rowCount() == 0
    run_dir = new_run_dir(tiny_config(name="just-created"))
    tiny_config(name="just-created").save(run_dir / "config.toml")
    qtbot.waitUntil(lambda: runs.model.rowCount() == 1, timeout=15_000)  # no Refresh
    model = runs.model
    row = {
        model.headerData(c, Qt.Orientation.Horizontal): model.index(0, c).data()
        for c in range(model.columnCount())
    }
    assert row["run"] == "just-created" and row["date"]
    assert row["ratio"] == "–" and row["params"] == "–"


def test_after_a_restart_the_monitor_offers_the_latest_run(qtbot, window):
    assert run_to_end(qtbot, window, tiny_config(name="earlier-run")) == "finished"
    again = MainWindow()
    qtbot.addWidget(again)
    again.show()
    again.load_engine()
    qtbot.waitUntil(lambda: again.catalog is not None, timeout=60_000)
    qtbot.waitUntil(lambda: "earlier-run" in again.monitor.title.text(), timeout=30_000)
    assert "No run yet" not in again.monitor.title.text()
    assert again.monitor.curves.point_counts()["test_acc"] == 1


# -- 10: numbers agree with the engine ------------------------------------------------------


def test_best_accuracy_leaves_out_dense_pre_training(qapp):
    from ui.metric_history import MetricHistory

    history = MetricHistory()
    # The engine reports best_test_acc 0 during pre-training: the dense model's 98 % is not
    # the compressed model's.
    history.add_epoch({"epoch": 1, "phase": "pretrain", "test_acc": 0.98, "best_test_acc": 0})
    history.add_epoch({"epoch": 2, "phase": "train", "test_acc": 0.61, "best_test_acc": 0.61})
    history.add_epoch({"epoch": 3, "phase": "train", "test_acc": 0.55, "best_test_acc": 0.61})
    assert history.best_test_acc() == 0.61


def test_preset_descriptions_state_the_engines_numbers():
    from engine.compression import plan_compression
    from engine.data import dataset_info
    from engine.models import build_model
    from engine.presets import list_presets, load_preset

    for name in list_presets():
        config = load_preset(name)
        text = config.description
        if not re.search(r"\dx|parameters in the model", text):
            continue
        info = dataset_info(config.dataset)
        report = plan_compression(
            build_model(config.model, info.in_channels, info.image_size, info.num_classes),
            config.layers,
        )
        claims = 0
        for match in re.finditer(r"those layers (\d+)x smaller", text):
            assert int(match[1]) == round(report.layers_ratio), name
            claims += 1
        for match in re.finditer(r"the whole model (\d+)x", text):
            assert int(match[1]) == round(report.ratio), name
            claims += 1
        for match in re.finditer(r"([\d,]+) parameters in the model", text):
            assert int(match[1].replace(",", "")) == report.model_params_after, name
            claims += 1
        ratios = len(re.findall(r"\d+x", text.replace("4096x", "")))
        assert claims >= ratios, f"{name}: a ratio that is not checked: {text}"


def test_monitor_names_the_engines_dense_count(qapp):
    from ui.monitor.layer_activity import COLUMNS

    assert "dense weight" in COLUMNS  # what the engine's LayerReport counts and divides


# -- 11: the review shows what the wizard offers ----------------------------------------------


def test_review_shows_only_offered_settings_and_advanced_ones_are_offered(qtbot, window):
    import tomllib

    wizard = window.wizard
    page = wizard.training_page
    assert page.adtn_lr.isHidden()  # folded until asked for
    page.advanced_toggle.setChecked(True)
    assert not page.adtn_lr.isHidden() and not page.amp.isHidden()
    page.adtn_lr.setValue(0.01)
    page.augment.setChecked(False)
    page.amp.setChecked(False)
    page.weight_decay.setValue(1e-4)
    wizard.show_page(REVIEW)
    shown = tomllib.loads(wizard.review_page.toml_view.toPlainText())
    from ui.wizard.wizard import OFFERED_KEYS

    assert set(shown) == set(OFFERED_KEYS)  # nothing the wizard does not offer
    wizard.config = wizard.config.replace(workers=3)  # a loaded file may set one: it shows
    wizard.show_page(REVIEW)
    assert tomllib.loads(wizard.review_page.toml_view.toPlainText())["workers"] == 3
    assert shown["adtn_lr"] == 0.01 and shown["augment"] is False and shown["amp"] is False
    assert shown["weight_decay"] == pytest.approx(1e-4)
    page.load(wizard.config.replace(adtn_lr=0.0, amp=True))
    assert page.adtn_lr.text() == "same as the learning rate" and page.amp.isChecked()


# -- 12: the smaller things ---------------------------------------------------------------


def test_step_labels_open_their_page(qtbot, window):
    wizard = window.wizard
    qtbot.mouseClick(wizard.step_labels[TRAINING], Qt.MouseButton.LeftButton)
    assert wizard.current_page() == TRAINING
    qtbot.mouseClick(wizard.step_labels[REVIEW], Qt.MouseButton.LeftButton)
    assert wizard.current_page() == REVIEW
    qtbot.mouseClick(wizard.step_labels[SOURCE], Qt.MouseButton.LeftButton)
    assert wizard.current_page() == SOURCE


def test_new_compression_starts_the_wizard_over(qtbot, window):
    wizard = window.wizard
    preset_epochs = wizard.config.epochs
    wizard.training_page.epochs.setValue(preset_epochs + 7)
    wizard.show_page(REVIEW)
    wizard.review_page.name_edit.setText("changed")
    window.show_page(MONITOR_PAGE)
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.pages.currentIndex() == 0 and wizard.current_page() == SOURCE
    assert wizard.training_page.epochs.value() == preset_epochs
    assert wizard.review_page.name_edit.text() != "changed"


def test_paused_run_shows_paused_not_a_frozen_eta(qtbot, window):
    from engine.events import BatchEnded

    session, monitor = window.session, window.monitor
    with qtbot.waitSignal(session.batch_progress, timeout=RUN_TIMEOUT_MS):
        window.start_run(tiny_config(epochs=30, name="pause-eta"))
    assert "ETA" in monitor.progress_label.text()
    session.pause()
    assert "paused" in monitor.progress_label.text()
    assert "ETA" not in monitor.progress_label.text()
    # a batch that was in flight when pausing arrives after the pause
    session.receive(BatchEnded(1, 3, 4, 0.5, 0.8, 100.0, 1.0, 40.0, "train"))
    session.deliver_events()
    assert "ETA" not in monitor.progress_label.text()
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS):
        session.stop()


def test_resume_is_offered_after_stop(qtbot, window):
    session, monitor = window.session, window.monitor
    with qtbot.waitSignal(session.epoch_ended, timeout=RUN_TIMEOUT_MS):
        window.start_run(tiny_config(epochs=30, name="stop-resume"))
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as stopped:
        session.stop()
    assert stopped.args == ["stopped"]
    assert monitor.resume_button.isEnabled() and window.resume_action.isEnabled()
    run_dir = session.run_dir
    with qtbot.waitSignal(session.run_started, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(monitor.resume_button, Qt.MouseButton.LeftButton)
    assert session.run_dir == run_dir and session.is_active()
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS):
        session.stop()


def test_menus_status_tips_about_and_help(window):
    from adtn_studio import __version__
    from ui.about import HELP_DOCUMENTS, about_text, doc_path

    for action in window.findChildren(type(window.about_action)):
        assert "&" not in action.statusTip(), action.text()
    assert __version__ in about_text(window.catalog, window.device_text)
    help_menu = [a.menu() for a in window.menuBar().actions() if a.text() == "&Help"][0]
    texts = [action.text() for action in help_menu.actions()]
    assert any("Documentation" in text for text in texts)
    assert any("format" in text for text in texts)
    for _, name in HELP_DOCUMENTS:
        assert doc_path(name) is not None


# -- 14: what is loading ------------------------------------------------------------------


def test_engine_loading_reports_each_step():
    from ui.engine_catalog import load_catalog

    steps = []
    catalog = load_catalog(lambda fraction, text: steps.append(text))
    assert catalog.presets
    assert steps[0] == "Loading PyTorch…" and any("presets" in step for step in steps)


def test_the_window_shows_what_is_loading(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    window.show_loading(0.1, "Loading PyTorch…")
    assert window.statusBar().currentMessage() == "Loading PyTorch…"
    assert window.wizard.loading.text() == "Loading PyTorch…"


def test_the_training_page_sets_a_distillation_teacher(qtbot, window, tmp_path):
    wizard = window.wizard
    page = wizard.training_page
    page.advanced_toggle.setChecked(True)
    assert not page.teacher.isHidden()
    assert not page.distill_weight.isEnabled()  # no teacher: nothing to weigh
    teacher_run = tmp_path / "dense-run"
    teacher_run.mkdir()
    page.ask_teacher_folder = lambda: str(teacher_run)  # the folder dialog, answered
    page.teacher_button.click()
    assert page.teacher.text() == str(teacher_run) and page.distill_weight.isEnabled()
    page.distill_weight.setValue(0.7)
    page.distill_temperature.setValue(2.0)
    config = page.apply(wizard.config)
    assert (config.teacher, config.distill_weight, config.distill_temperature) == (
        str(teacher_run),
        0.7,
        2.0,
    )
    page.load(config.replace(teacher=""))  # and back: a run without a teacher
    assert page.teacher.text() == "" and not page.distill_temperature.isEnabled()
