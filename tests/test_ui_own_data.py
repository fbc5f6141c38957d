"""The wizard with the user's own model and images: the network and data-set lists, the
data folder remembered per data set, the layer table of a large network, the depth editor."""

from __future__ import annotations

import pytest
from _imagefolders import write_folder
from PySide6.QtWidgets import QStyleOptionViewItem

from engine.config import RunConfig
from engine.limits import MAX_DEPTH
from ui.engine_catalog import DeviceChoice, EngineCatalog
from ui.settings import app_settings
from ui.wizard import engine_calls
from ui.wizard.layer_plan_model import DEPTH, LayerPlanModel
from ui.wizard.layers_page import DEPTH_EDITOR_MIN_WIDTH, LayersPage
from ui.wizard.source_page import IMAGE_FOLDER, OWN_MODEL, SourcePage, data_root_key

CATALOG = EngineCatalog(
    presets=(("lenet5-mnist", ""),),
    models=("fc2", "lenet5", "torchvision:resnet18"),
    datasets=("mnist", "fashionmnist", "cifar10"),
    devices=(DeviceChoice("cpu", "CPU"),),
    default_device="cpu",
)


@pytest.fixture
def source(qtbot):
    page = SourcePage()
    qtbot.addWidget(page)
    page.set_catalog(CATALOG, {"lenet5": "LeNet-5"})
    return page


def choose(combo, data):
    index = combo.findData(data)
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def test_the_settings_used_here_are_the_tests_own(tmp_path):
    # conftest points ADTN_CONFIG_DIR at a fresh folder: the user's settings are never touched
    assert "adtn-studio.ini" in app_settings().fileName()
    assert str(tmp_path.parent.parent) in app_settings().fileName()


def test_data_folder_is_remembered_per_data_set_across_launches_and_presets(
    qtbot, source, tmp_path
):
    source.load(RunConfig(dataset="mnist"))
    source.data_root_edit.setText(str(tmp_path / "mnist-home"))
    source.data_root_edit.editingFinished.emit()
    choose(source.dataset_combo, "cifar10")
    assert source.data_root_edit.text() == ""  # nothing remembered for CIFAR-10 yet
    source.data_root_edit.setText(str(tmp_path / "cifar-home"))
    source.data_root_edit.editingFinished.emit()
    choose(source.dataset_combo, "mnist")
    assert source.data_root_edit.text() == str(tmp_path / "mnist-home")

    relaunched = SourcePage()  # a new window reads the same settings
    qtbot.addWidget(relaunched)
    relaunched.set_catalog(CATALOG, {})
    relaunched.load(RunConfig(dataset="cifar10"))  # a preset: it names no data folder
    assert relaunched.data_root_edit.text() == str(tmp_path / "cifar-home")
    relaunched.load(RunConfig(dataset="mnist", data_root="/given/by/config"))
    assert relaunched.data_root_edit.text() == "/given/by/config"
    assert app_settings().value(f"folders/{data_root_key('mnist')}") == str(tmp_path / "mnist-home")


def test_own_model_and_image_folder_entries_ask_and_are_listed(source, tmp_path, monkeypatch):
    assert source.model_combo.findData("torchvision:resnet18") >= 0
    assert (
        source.model_combo.itemText(source.model_combo.findData("torchvision:resnet18"))
        == "resnet18 (torchvision)"
    )
    model_file = tmp_path / "nets.py"
    model_file.write_text("from torch import nn\n")
    monkeypatch.setattr(source, "ask_model_file", lambda: (str(model_file), "make_net"))
    folder = write_folder(tmp_path / "pictures", classes=2, per_class=3)
    monkeypatch.setattr(source, "ask_image_folder", lambda: str(folder))
    choose(source.model_combo, OWN_MODEL)
    choose(source.dataset_combo, IMAGE_FOLDER)
    config = source.apply(RunConfig())
    assert config.model == f"{model_file}:make_net"
    assert config.dataset == f"imagefolder:{folder}"
    assert source.model_combo.currentText() == "make_net (nets.py)"
    assert not source.data_root_edit.isEnabled()  # an image folder is its own location
    available, text = engine_calls.dataset_status(config)
    assert available and "2 classes, 6 training and 6 test images" in text

    monkeypatch.setattr(source, "ask_model_file", lambda: None)  # cancelled: unchanged
    choose(source.model_combo, OWN_MODEL)
    assert source.model_combo.currentData() == f"{model_file}:make_net"
    source.load(config)  # a configuration naming them selects them again
    assert source.apply(RunConfig()).model == config.model


def test_a_damaged_image_folder_is_reported_on_the_source_page(tmp_path):
    (tmp_path / "one" / "only_class").mkdir(parents=True)
    config = RunConfig(dataset=f"imagefolder:{tmp_path / 'one'}")
    available, text = engine_calls.dataset_status(config)
    assert not available and "only one class" in text and str(tmp_path / "one") in text


@pytest.fixture
def resnet_page(qtbot):
    plan = engine_calls.inspect_network("torchvision:resnet18", "cifar10")
    model = LayerPlanModel()
    page = LayersPage(model)
    qtbot.addWidget(page)
    model.set_layers(list(plan.layers), plan.planner, engine_calls.layer_spec)
    return page


def test_large_networks_filter_group_and_tick_by_kind_and_size(resnet_page):
    page, model = resnet_page, resnet_page.model
    assert model.rowCount() == 21
    page.filter_edit.setText("layer4.*")
    shown = page.shown_layer_names()
    assert shown and all(name.startswith("layer4.") for name in shown)
    assert page.tick_shown(True) == len(shown)
    assert [s.name for s in model.specs()] == shown
    page.filter_edit.setText("")
    groups = [page.group_combo.itemData(i) for i in range(page.group_combo.count())]
    assert groups[:4] == ["", "layer1", "layer1.0", "layer1.1"]
    assert "layer4" in groups and "layer2.0.downsample" not in groups  # one layer: no group
    page.group_combo.activated.emit(groups.index("layer1.0"))
    assert page.shown_layer_names() == ["layer1.0.conv1", "layer1.0.conv2"]
    page.tick_shown(False)
    page.filter_edit.setText("")
    assert page.tick_all_linear() == 1 and "fc" in [s.name for s in model.specs()]
    page.tick_shown(False)
    assert page.tick_convolutions(1_000_000) == 4  # layer4's four 3×3 convolutions
    assert model.report.model_params_after < model.report.model_params_before


def test_depth_above_the_limit_is_capped_and_said_and_the_editor_has_room(qtbot, resnet_page):
    page, model = resnet_page, resnet_page.model
    model.set_encoded("fc", True)
    row = model.layer_names().index("fc")
    index = model.index(row, DEPTH)
    editor = page.depth_delegate.createEditor(page.table.viewport(), QStyleOptionViewItem(), index)
    page.depth_delegate.setEditorData(editor, index)
    editor.lineEdit().setText("999999")
    page.depth_delegate.setModelData(editor, model, index)
    assert model.specs()[0].depth == MAX_DEPTH
    assert f"above the engine's limit of {MAX_DEPTH}" in page.status.text()
    assert "999,999" in page.status.text()
    option = QStyleOptionViewItem()
    option.rect = page.table.visualRect(index)
    option.rect.setWidth(30)  # a narrow cell
    page.depth_delegate.updateEditorGeometry(editor, option, index)
    assert editor.width() >= DEPTH_EDITOR_MIN_WIDTH
    editor.lineEdit().setText("12")
    page.depth_delegate.setModelData(editor, model, index)
    assert model.specs()[0].depth == 12


def test_the_monitor_shows_images_loading_and_the_run_notes(window):
    from engine.events import DownloadProgress, RunStarted

    monitor = window.monitor
    window.session.download_progress.emit(DownloadProgress("imagefolder:/x", 150, 600, "load"))
    assert monitor.progress_label.text() == "loading images: 150 of 600"
    assert (monitor.progress.value(), monitor.progress.maximum()) == (150, 600)
    window.session.download_progress.emit(DownloadProgress("mnist", 2_000_000, 10_000_000))
    assert monitor.progress_label.text() == "downloading mnist: 2.0 of 10.0 MB"
    window.session.run_started.emit(
        RunStarted(
            run_dir="/r",
            device="cpu",
            epochs=1,
            batches_per_epoch=1,
            compression={},
            params_total=10,
            dense_params_total=100,
            start_epoch=1,
            train_examples=8,
            test_examples=4,
            dense_test_acc=0.875,
            notes=("torchvision:resnet18: classifier built for 3 classes (ImageNet has 1000)",),
        )
    )
    log = monitor.log_view.toPlainText()
    assert "classifier built for 3 classes" in log
    assert "pretrained weights: 87.5" in log


def test_pretrained_weights_are_chosen_on_the_source_page(source, tmp_path, monkeypatch):
    weights = tmp_path / "pretrained.safetensors"
    monkeypatch.setattr(source, "ask_weights_file", lambda: str(weights))
    source.load(RunConfig())
    assert source.apply(RunConfig()).weights == ""  # none unless chosen
    source.weights_button.click()
    assert source.apply(RunConfig()).weights == str(weights)
    source.load(RunConfig(weights="torchvision:DEFAULT"))
    assert source.weights_edit.text() == "torchvision:DEFAULT"
