"""The UI's models without windows: the layer plan, metric history, messages, settings."""

from __future__ import annotations

import logging
import math

import pytest
from PySide6.QtCore import Qt

from engine.errors import ConfigError
from ui.messages import describe_failure
from ui.metric_history import MetricHistory
from ui.settings import app_settings, last_folder, remember_folder
from ui.wizard import engine_calls
from ui.wizard.layer_plan_model import DEPTH, ENCODE, PARAMS, RATIO, LayerPlanModel


@pytest.fixture
def lenet_plan(qapp):
    plan = engine_calls.inspect_network("lenet5", "mnist")
    model = LayerPlanModel()
    model.set_layers(list(plan.layers), plan.planner, engine_calls.layer_spec)
    return model


def test_layer_plan_lists_every_weight_layer_unencoded(lenet_plan):
    assert lenet_plan.layer_names() == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert lenet_plan.specs() == []
    report = lenet_plan.report
    assert report.model_params_before == report.model_params_after > 60_000


def test_layer_plan_totals_follow_encoding_and_depth(lenet_plan, qtbot):
    before = lenet_plan.report.model_params_after
    with qtbot.waitSignal(lenet_plan.totals_changed):
        lenet_plan.set_encoded("fc1", True)
    encoded = lenet_plan.report.model_params_after
    assert encoded < before - 40_000  # fc1 (48,120 parameters) shrinks to a few hundred
    row = lenet_plan.layer_names().index("fc1")
    assert lenet_plan.data(lenet_plan.index(row, PARAMS)) not in ("", None)
    assert lenet_plan.data(lenet_plan.index(row, RATIO)).endswith("×")

    lenet_plan.set_depth("fc1", 3)
    deeper = lenet_plan.report.model_params_after
    assert deeper > encoded  # more layers of gates, more parameters
    assert [(s.name, s.depth) for s in lenet_plan.specs()] == [("fc1", 3)]

    lenet_plan.set_encoded("fc1", False)
    assert lenet_plan.report.model_params_after == before
    assert lenet_plan.data(lenet_plan.index(row, PARAMS)) == ""


def test_switching_a_layers_encoding_updates_its_count_and_the_totals(lenet_plan, qtbot):
    from ui.wizard.layer_plan_model import ENCODING, OPTIONS

    row = lenet_plan.layer_names().index("fc1")
    lenet_plan.set_encoded("fc1", True)
    lenet_plan.set_depth("fc1", 3)
    adtn_count = lenet_plan.report.rows[0].encoded_params
    adtn_total = lenet_plan.report.model_params_after
    with qtbot.waitSignal(lenet_plan.totals_changed):
        lenet_plan.set_encoding("fc1", "tt")
    row_report = lenet_plan.report.rows[0]
    assert row_report.encoding == "tt" and row_report.encoded_params <= adtn_count * 1.05
    assert lenet_plan.data(lenet_plan.index(row, PARAMS)) == f"{row_report.encoded_params:,}"
    assert lenet_plan.data(lenet_plan.index(row, OPTIONS)).startswith("TT ")
    assert lenet_plan.report.model_params_after == (
        adtn_total - adtn_count + row_report.encoded_params
    )
    assert [(s.name, s.encoding) for s in lenet_plan.specs()] == [("fc1", "tt")]
    # A budget an encoding cannot meet is said on the row and left out of the totals.
    lenet_plan.set_depth("fc1", 1)
    lenet_plan.set_encoding("fc1", "lowrank")
    assert "needs at least" in lenet_plan.data(lenet_plan.index(row, OPTIONS))
    assert lenet_plan.report.model_params_after == lenet_plan.report.model_params_before
    assert not lenet_plan.setData(lenet_plan.index(row, ENCODING), "svd")


def test_layer_plan_keeps_depth_editing_to_encoded_layers(lenet_plan):
    row = lenet_plan.layer_names().index("fc2")
    depth = lenet_plan.index(row, DEPTH)
    assert not lenet_plan.flags(depth) & Qt.ItemFlag.ItemIsEditable
    assert not lenet_plan.setData(depth, 4)
    lenet_plan.setData(
        lenet_plan.index(row, ENCODE), Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole
    )
    assert lenet_plan.flags(depth) & Qt.ItemFlag.ItemIsEditable
    assert lenet_plan.setData(depth, 99)
    assert lenet_plan.specs()[0].depth == 64  # clamped to the engine's limit (MAX_DEPTH)


def test_layer_plan_starts_from_a_configs_layers(qapp):
    plan = engine_calls.inspect_network("fc2", "mnist")
    model = LayerPlanModel()
    spec = engine_calls.layer_spec(name="fc2", depth=2, activation="none")
    model.set_layers(list(plan.layers), plan.planner, engine_calls.layer_spec, [spec])
    assert [(s.name, s.depth, s.activation) for s in model.specs()] == [("fc2", 2, "none")]


def test_metric_history_round_trips_through_csv(tmp_path):
    history = MetricHistory()
    history.add_epoch(
        {
            "epoch": 1,
            "train_loss": 2.0,
            "train_acc": 0.3,
            "test_loss": 1.9,
            "test_acc": 0.35,
            "params_total": 3000,
            "dense_params_total": 200000,
            "seconds": 1.5,
        }
    )
    history.add_epoch({"epoch": 2, "train_loss": 1.0, "test_acc": 0.6})
    history.to_csv(tmp_path / "m.csv")
    again = MetricHistory.from_csv(tmp_path / "m.csv")
    assert again.column("train_loss") == [2.0, 1.0]
    assert again.best_test_acc() == 0.6
    assert math.isnan(again.column("params_total")[1])


def test_failures_read_in_plain_words():
    assert "learning rate" in describe_failure("nan_loss", "loss is nan at epoch 2")
    assert "batch size" in describe_failure("out_of_memory", "CUDA out of memory")
    assert "batch size" in describe_failure("error", "RuntimeError: CUDA out of memory. Tried")
    assert describe_failure("error", "something odd") == "something odd"


def test_settings_live_in_the_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ADTN_CONFIG_DIR", str(tmp_path))
    remember_folder("data_root", "/some/where")
    app_settings().sync()
    assert last_folder("data_root") == "/some/where"
    assert (tmp_path / "adtn-studio.ini").read_text().count("/some/where") == 1


def test_layer_table_dense_count_is_the_engines_weight_count(lenet_plan):
    """The wizard and the monitor show the same dense number: the weight the ratio divides."""
    from ui.wizard.layer_plan_model import DENSE

    row = lenet_plan.layer_names().index("fc1")
    assert lenet_plan.data(lenet_plan.index(row, DENSE)) == "48,000"
    lenet_plan.set_encoded("fc1", True)
    report_row = lenet_plan.report.rows[0]
    assert f"{report_row.dense_params:,}" == "48,000"


def test_layer_options_without_a_column_survive_the_table(qapp):
    """A preset's interleaved index order is kept when the wizard hands the layers back."""
    plan = engine_calls.inspect_network("lenet5", "mnist")
    model = LayerPlanModel()
    preset = engine_calls.load_preset("lenet5-mnist")
    model.set_layers(list(plan.layers), plan.planner, engine_calls.layer_spec, preset.layers)
    assert [(s.name, s.index_order, s.gate_init) for s in model.specs()] == [
        (s.name, s.index_order, s.gate_init) for s in preset.layers
    ]
    assert {s.index_order for s in model.specs()} == {"interleaved"}


@pytest.mark.parametrize(
    "error, level, traceback",
    [
        (KeyError("column"), logging.ERROR, True),  # a bug: logged with its traceback
        (ConfigError("epochs must be at least 1"), logging.INFO, False),  # the user's to fix
    ],
)
def test_background_task_failures_are_logged_by_type(qtbot, caplog, error, level, traceback):
    from ui.workers import BackgroundTask

    def fail(report):
        raise error

    caplog.set_level(logging.DEBUG, logger="ui.workers")
    failures = []
    task = BackgroundTask(fail)
    task.failed.connect(failures.append)
    with qtbot.waitSignal(task.ended, timeout=10_000):
        task.start()
    assert failures == [error]
    [record] = [r for r in caplog.records if r.name == "ui.workers"]
    assert record.levelno == level and bool(record.exc_info) is traceback
    assert "fail" in record.getMessage()
