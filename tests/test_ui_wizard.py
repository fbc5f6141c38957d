"""Walk the compression wizard as a user would: presets, Next/Back, layers, review, Start."""

from __future__ import annotations

import tomllib

from PySide6.QtCore import Qt

from ui.main_window import MainWindow
from ui.wizard.wizard import LAYERS, REVIEW, SOURCE, TRAINING


def go_to_layers(qtbot, wizard):
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    assert wizard.current_page() == LAYERS
    qtbot.waitUntil(lambda: wizard.layer_model.rowCount() > 0, timeout=30_000)
    qtbot.waitUntil(lambda: wizard.next_button.isEnabled(), timeout=10_000)


def test_engine_loads_after_the_window_shows(window):
    wizard = window.wizard
    assert wizard.current_page() == SOURCE
    assert "lenet5-mnist" in [name for name, _ in window.catalog.presets]
    assert wizard.source_page.preset_combo.currentData() == "lenet5-mnist"
    assert wizard.source_page.model_combo.currentData() == "lenet5"
    devices = [
        wizard.training_page.device.itemData(i) for i in range(wizard.training_page.device.count())
    ]
    assert devices[0] == "auto" and "cpu" in devices
    assert window.device_label.text().startswith("Device: ")
    assert "detecting" not in window.device_label.text()


def test_next_and_back_walk_the_pages(qtbot, window):
    wizard = window.wizard
    assert not wizard.back_button.isEnabled()
    go_to_layers(qtbot, wizard)
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    assert wizard.current_page() == TRAINING
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    assert wizard.current_page() == REVIEW
    assert not wizard.next_button.isVisible()
    assert wizard.start_button.isEnabled()
    for expected in (TRAINING, LAYERS, SOURCE):
        qtbot.mouseClick(wizard.back_button, Qt.MouseButton.LeftButton)
        assert wizard.current_page() == expected


def test_preset_fills_every_page(qtbot, window):
    wizard = window.wizard
    source = wizard.source_page
    source.preset_combo.setCurrentIndex(source.preset_combo.findData("fc2-mnist"))
    source.preset_combo.activated.emit(source.preset_combo.currentIndex())
    assert source.model_combo.currentData() == "fc2"
    go_to_layers(qtbot, wizard)
    assert wizard.layer_model.layer_names() == ["fc1", "fc2"]
    preset_layers = [spec.name for spec in wizard.config.layers]
    assert preset_layers and [s.name for s in wizard.layer_model.specs()] == preset_layers
    assert wizard.training_page.epochs.value() == wizard.config.epochs


def test_layer_edits_update_the_totals(qtbot, window):
    wizard = window.wizard
    go_to_layers(qtbot, wizard)
    page = wizard.layers_page
    before = page.after_label.text()
    wizard.layer_model.set_encoded("conv2", False)
    wizard.layer_model.set_encoded(
        "fc1", not any(s.name == "fc1" for s in wizard.layer_model.specs())
    )
    assert page.after_label.text() != before
    wizard.layer_model.set_encoded("fc1", True)
    with_fc1 = page.after_label.text()
    wizard.layer_model.set_depth("fc1", 4)
    assert page.after_label.text() != with_fc1
    assert "smaller" in page.ratio_label.text()
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    assert ("fc1", 4) in [(s.name, s.depth) for s in wizard.config.layers]


def test_encode_all_then_none(qtbot, window):
    wizard = window.wizard
    go_to_layers(qtbot, wizard)
    model = wizard.layer_model
    before = model.report.model_params_before
    qtbot.mouseClick(wizard.layers_page.encode_all_button, Qt.MouseButton.LeftButton)
    assert len(model.specs()) == model.rowCount()
    assert model.report.model_params_after < before / 10
    qtbot.mouseClick(wizard.layers_page.encode_none_button, Qt.MouseButton.LeftButton)
    assert model.specs() == [] and model.report.model_params_after == before


def test_changing_the_network_rebuilds_the_layer_table(qtbot, window):
    wizard = window.wizard
    go_to_layers(qtbot, wizard)
    qtbot.mouseClick(wizard.back_button, Qt.MouseButton.LeftButton)
    source = wizard.source_page
    source.model_combo.setCurrentIndex(source.model_combo.findData("fc2"))
    go_to_layers(qtbot, wizard)
    qtbot.waitUntil(lambda: wizard.layer_model.layer_names() == ["fc1", "fc2"], timeout=30_000)


def test_review_shows_the_toml_and_saves_it(qtbot, window, tmp_path):
    wizard = window.wizard
    go_to_layers(qtbot, wizard)
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    wizard.training_page.epochs.setValue(7)
    qtbot.mouseClick(wizard.next_button, Qt.MouseButton.LeftButton)
    review = wizard.review_page
    shown = tomllib.loads(review.toml_view.toPlainText())
    assert shown["epochs"] == 7 and shown["model"] == "lenet5"
    review.name_edit.setText("my-run")
    review.name_edit.editingFinished.emit()
    assert 'name = "my-run"' in review.toml_view.toPlainText()
    saved = wizard.save_config(tmp_path / "run.toml")
    from engine.config import RunConfig

    loaded = RunConfig.load(saved)
    assert loaded.name == "my-run" and loaded.epochs == 7
    assert [s.name for s in loaded.layers] == [s.name for s in wizard.layer_model.specs()]


def test_invalid_settings_block_start_with_the_reason(qtbot, window):
    wizard = window.wizard
    wizard.config = wizard.config.replace(lr_milestones=[], schedule="step")
    wizard.training_page.load(wizard.config)
    wizard.show_page(REVIEW)
    assert "lr_milestones" in wizard.review_page.problem.text()
    assert not wizard.start_button.isEnabled()


def test_start_emits_the_configuration(qtbot, window):
    wizard = window.wizard
    # A generated data set: Start refuses a data set that is not on disk (it never downloads).
    source = wizard.source_page
    source.dataset_combo.setCurrentIndex(source.dataset_combo.findData("synthetic"))
    go_to_layers(qtbot, wizard)
    started = []
    wizard.start_requested.disconnect()
    wizard.start_requested.connect(started.append)
    qtbot.keyClick(window, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    assert len(started) == 1
    assert started[0].model == "lenet5" and not started[0].download
    assert started[0].layers == wizard.layer_model.specs()


def test_synthetic_data_needs_no_download_and_mnist_offers_one(qtbot, window, tmp_path):
    source = window.wizard.source_page
    source.data_root_edit.setText(str(tmp_path / "empty"))
    source.dataset_combo.setCurrentIndex(source.dataset_combo.findData("mnist"))
    assert not source.download_button.isHidden()
    assert "not in" in source.data_status.text()
    source.dataset_combo.setCurrentIndex(source.dataset_combo.findData("synthetic"))
    assert source.download_button.isHidden()
    assert "generated" in source.data_status.text()


def test_window_geometry_is_remembered(qtbot, window):
    # The offscreen screen is 800×800 and the window's minimum width about as much, so
    # the height is what can differ from the default size (880) and still be restored.
    window.resize(window.width(), 603)
    assert window.close()
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.height() == 603


def test_about_names_the_versions_and_device(window):
    from ui.about import about_text

    text = about_text(window.catalog, window.device_text)
    for expected in (
        "Python",
        "PyTorch",
        window.catalog.versions["PyTorch"],
        "Qt",
        f"Device</td><td>&nbsp;{window.device_text}",
    ):
        assert expected in text


def test_download_runs_in_the_background_with_progress(qtbot, window, monkeypatch):
    """The network is not reachable from the tests: the engine's download is replaced by a
    stand-in that reports progress from the worker thread like the real one."""
    import threading

    from ui.wizard import engine_calls

    seen = {"threads": set(), "downloaded": False}
    release = threading.Event()

    def fake_download(config, report):
        seen["threads"].add(threading.current_thread().name)
        report(0.25, "2.5 of 10.0 MB")
        release.wait(10)
        report(1.0, "10.0 of 10.0 MB")
        seen["downloaded"] = True

    real_status = engine_calls.dataset_status
    monkeypatch.setattr(engine_calls, "download", fake_download)
    monkeypatch.setattr(
        engine_calls,
        "dataset_status",
        lambda config: (True, "✓ ready") if seen["downloaded"] else real_status(config),
    )
    source = window.wizard.source_page
    source.dataset_combo.setCurrentIndex(source.dataset_combo.findData("mnist"))
    qtbot.mouseClick(source.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: source.download_progress.value() == 250, timeout=10_000)
    assert (
        source.download_progress.isVisible()
        and "2.5 of 10.0 MB" in source.download_progress.format()
    )
    assert not source.download_button.isEnabled() and not source.dataset_combo.isEnabled()
    release.set()
    qtbot.waitUntil(lambda: source.data_status.text() == "✓ ready", timeout=10_000)
    assert source.download_button.isHidden() and source.dataset_combo.isEnabled()
    assert threading.main_thread().name not in seen["threads"]
