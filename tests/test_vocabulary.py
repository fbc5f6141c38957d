"""One vocabulary: the names in engine.choices are the ones the engine accepts and writes and
the only ones the window offers; the best test accuracy is one rule, the engine's."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest

from engine import choices
from engine.config import ConfigError, RunConfig
from engine.layer_spec import LayerSpec
from engine.metrics import best_test_accuracy, improves_best

TITLED = (
    (choices.ENCODINGS, choices.ENCODING_LABELS),
    ((*choices.ENCODINGS, "dense"), choices.ENCODING_SHORT_TITLES),
    (choices.INITS, choices.INIT_TITLES),
    (choices.OPTIMIZERS, choices.OPTIMIZER_TITLES),
    (choices.OPTIMIZERS, choices.ABSURD_LEARNING_RATES),
    (choices.SCHEDULES, choices.SCHEDULE_TITLES),
    (choices.DATASET_NAMES, choices.DATASET_TITLES),
    (choices.MODEL_NAMES, choices.MODEL_TITLES),
    (choices.CHECKPOINT_KINDS, choices.CHECKPOINT_TITLES),
    (choices.EXPORT_FORMATS, choices.EXPORT_FORMAT_TITLES),
)


@pytest.mark.parametrize("names, titles", TITLED)
def test_every_name_has_exactly_one_title(names, titles):
    assert len(set(names)) == len(names)
    assert set(titles) == set(names)


# -- the engine uses the names it declares ------------------------------------------------


def test_the_engine_accepts_exactly_the_declared_training_choices():
    base = RunConfig(dense_baseline=True, lr_milestones=[1])
    for field, names in (
        ("optimizer", choices.OPTIMIZERS),
        ("schedule", choices.SCHEDULES),
        ("init", choices.INITS),
    ):
        for name in names:
            extra = {"pretrain_epochs": 1} if name == "pretrained" else {}
            dataclasses.replace(base, **{field: name}, **extra).validate()
        with pytest.raises(ConfigError, match=field):
            dataclasses.replace(base, **{field: "not-a-" + field}).validate()
    for name in choices.DATASET_NAMES:
        dataclasses.replace(base, dataset=name).validate()
    for name in choices.MODEL_NAMES:
        dataclasses.replace(base, model=name).validate()


def test_the_engine_accepts_exactly_the_declared_layer_options():
    for field, names in (
        ("encoding", choices.ENCODINGS),
        ("activation", choices.ACTIVATIONS),
        ("layout", choices.LAYOUTS),
        ("index_order", choices.INDEX_ORDERS),
        ("gate_init", choices.GATE_INITS),
    ):
        for name in names:
            LayerSpec("fc1", **{field: name}).validate()
        with pytest.raises(ValueError, match=field):
            LayerSpec("fc1", **{field: "not-a-" + field}).validate()


def test_the_engine_modules_build_what_choices_names():
    from engine import adtn, data, encodings, models
    from engine.export import FORMATS

    assert tuple(models.MODEL_FACTORIES) == choices.MODEL_NAMES
    assert {
        name: data.dataset_info(name).title for name in choices.DATASET_NAMES
    } == choices.DATASET_TITLES
    assert tuple(encodings._REGISTRY) == choices.ENCODINGS
    assert tuple(FORMATS) == choices.EXPORT_FORMATS
    assert (adtn.ACTIVATIONS, adtn.LAYOUTS, adtn.INDEX_ORDERS, adtn.INITS) == (
        choices.ACTIVATIONS,
        choices.LAYOUTS,
        choices.INDEX_ORDERS,
        choices.GATE_INITS,
    )


# -- the window offers the engine's names, no copies --------------------------------------


def combo_values(combo) -> list:
    return [combo.itemData(i) for i in range(combo.count()) if combo.itemData(i) is not None]


def test_training_page_offers_exactly_the_engines_choices(qtbot):
    from ui.wizard.training_page import TrainingPage

    page = TrainingPage()
    qtbot.addWidget(page)
    assert combo_values(page.optimizer) == list(choices.OPTIMIZERS)
    assert combo_values(page.schedule) == list(choices.SCHEDULES)
    assert combo_values(page.init) == list(choices.INITS)
    titles = [page.optimizer.itemText(i) for i in range(page.optimizer.count())]
    assert titles == [choices.OPTIMIZER_TITLES[name] for name in choices.OPTIMIZERS]


def test_every_schedule_a_configuration_holds_survives_the_training_page(qtbot):
    """Whichever schedule the engine knows, a configuration keeps it through the page, listed
    under its title (the page once listed cosine and constant only)."""
    from ui.wizard.training_page import TrainingPage

    page = TrainingPage()
    qtbot.addWidget(page)
    for schedule in choices.SCHEDULES:
        config = RunConfig(schedule=schedule, lr_milestones=[2], dense_baseline=True)
        page.load(config)
        applied = page.apply(config)
        assert applied.schedule == schedule
        assert page.schedule.currentText() == choices.SCHEDULE_TITLES[schedule]
        applied.validate()


def test_source_page_offers_the_engines_data_sets_with_their_titles(qtbot):
    from ui.engine_catalog import EngineCatalog
    from ui.wizard.source_page import IMAGE_FOLDER, SourcePage

    page = SourcePage()
    qtbot.addWidget(page)
    catalog = EngineCatalog(
        presets=(),
        models=choices.MODEL_NAMES,
        datasets=choices.DATASET_NAMES,
        devices=(),
        default_device="cpu",
    )
    page.set_catalog(catalog, choices.MODEL_TITLES)
    combo = page.dataset_combo
    values = [v for v in combo_values(combo) if v != IMAGE_FOLDER]
    assert values == list(choices.DATASET_NAMES)
    assert combo.itemText(combo.findData("cifar10")) == choices.DATASET_TITLES["cifar10"]
    model_combo = page.model_combo
    assert model_combo.itemText(model_combo.findData("vgg16")) == choices.MODEL_TITLES["vgg16"]


def test_layer_table_offers_the_engines_options_and_defaults(qapp):
    from ui.wizard import layers_page
    from ui.wizard.layer_plan_model import LayerChoice

    assert layers_page.ACTIVATIONS is choices.ACTIVATIONS
    assert layers_page.ENCODINGS is choices.ENCODINGS
    fresh, default = LayerChoice(), LayerSpec("")
    for field in ("depth", "activation", "layout", "encoding", "index_order", "gate_init"):
        assert getattr(fresh, field) == getattr(default, field), field


def test_export_dialog_offers_the_engines_formats_and_checkpoints(qtbot, tmp_path):
    from ui.export_dialog import ExportDialog

    dialog = ExportDialog(tmp_path)
    qtbot.addWidget(dialog)
    assert tuple(dialog.format_boxes) == choices.EXPORT_FORMATS
    assert sorted(combo_values(dialog.checkpoint)) == sorted(choices.CHECKPOINT_KINDS)
    assert dialog.checkpoint.currentData() == "best"


def test_rate_warning_knows_every_optimiser():
    from ui.wizard.wizard import rate_warning

    for name in choices.OPTIMIZERS:
        limit = choices.ABSURD_LEARNING_RATES[name]
        config = RunConfig(optimizer=name, lr=limit, dense_baseline=True)
        assert choices.OPTIMIZER_TITLES[name] in rate_warning(config)
        assert rate_warning(dataclasses.replace(config, lr=limit / 100)) == ""


def test_window_metric_table_has_the_engines_columns(tmp_path):
    from ui.metric_history import MetricHistory

    history = MetricHistory()
    history.add_epoch({"epoch": 1, "phase": "train", "test_acc": 0.5, "lr": 0.001})
    history.to_csv(tmp_path / "metrics.csv")
    with open(tmp_path / "metrics.csv", newline="", encoding="utf-8") as handle:
        header, row = list(csv.reader(handle))
    assert tuple(header) == choices.METRIC_COLUMNS
    assert dict(zip(header, row))["lr"] == "0.001"


# -- best test accuracy: one rule --------------------------------------------------------


def test_best_accuracy_rule():
    assert improves_best("train", 0.1, 0.0, 0)  # the first compressed epoch sets it
    assert not improves_best("pretrain", 0.99, 0.1, 1)  # the dense model never counts
    assert not improves_best("train", 0.5, 0.5, 3)  # a tie keeps the earlier epoch
    assert improves_best("train", 0.51, 0.5, 3)
    assert not improves_best("train", math.nan, 0.0, 0)
    rows = [
        {"phase": "pretrain", "test_acc": 0.98},
        {"phase": "train", "test_acc": 0.6},
        {"phase": "train", "test_acc": 0.7},
        {"phase": "train", "test_acc": 0.65},
    ]
    assert best_test_accuracy(rows) == 0.7
    assert math.isnan(best_test_accuracy(rows[:1]))  # no compressed epoch yet: no best
    # the trainer's running best (it covers epochs before a resume) is taken as it is
    assert best_test_accuracy([{"phase": "train", "test_acc": 0.6, "best_test_acc": 0.8}]) == 0.8


def test_monitor_engine_and_run_folder_agree_on_the_best_accuracy(tmp_path, qapp):
    """A run with dense pre-training: the summary, metrics.csv read back by the window, and
    the window's history filled from the trainer's events give the same best accuracy."""
    from engine.events import EpochEnded, TrainerCallback
    from engine.paths import RunPaths
    from engine.trainer import train
    from ui.metric_history import MetricHistory

    class Epochs(TrainerCallback):
        def __init__(self) -> None:
            self.history = MetricHistory()

        def on_epoch_end(self, event: EpochEnded) -> None:
            self.history.add_epoch(dataclasses.asdict(event))

    config = RunConfig(
        model="fc2",
        dataset="synthetic",
        epochs=2,
        init="pretrained",
        pretrain_epochs=1,
        fit_steps=5,
        batch_size=32,
        limit_train=128,
        limit_test=64,
        device="cpu",
        seed=3,
        layers=[LayerSpec("fc1")],
    )
    recorder = Epochs()
    summary = train(config, tmp_path / "run", callbacks=[recorder])
    assert summary.status == "finished"
    paths = RunPaths(tmp_path / "run")
    with open(paths.metrics, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == choices.METRIC_COLUMNS
    # the trainer fills every column (a key it spelt differently would leave one empty)
    assert all(row[name] != "" for row in rows for name in choices.METRIC_COLUMNS)
    assert [row["phase"] for row in rows] == ["pretrain", "train", "train"]
    compressed = [float(row["test_acc"]) for row in rows if row["phase"] == "train"]
    assert summary.best_test_acc == max(compressed)
    assert MetricHistory.from_csv(paths.metrics).best_test_acc() == summary.best_test_acc
    assert recorder.history.best_test_acc() == summary.best_test_acc
    assert best_test_accuracy(rows) == summary.best_test_acc


def test_monitor_shows_no_best_accuracy_before_the_compressed_model_trained(tmp_path, qtbot):
    """A past run that ended during dense pre-training has no best accuracy of the compressed
    model: the monitor says "–", as it does live, not the summary's placeholder 0 %."""
    from engine.paths import RunPaths
    from engine.runs import RunRecord, write_metrics
    from ui.monitor.monitor_view import MonitorView
    from ui.training_session import TrainingSession

    def latest_run_text(rows: list[dict]) -> str:
        folder = tmp_path / f"run{len(rows)}"
        write_metrics(RunPaths(folder).metrics, rows)
        record = RunRecord(
            path=str(folder),
            name="r",
            model="fc2",
            dataset="synthetic",
            started_at="2026-01-01T00:00:00",
            status="stopped",
            epochs_completed=len(rows),
            epochs=3,
            params_total=10,
            dense_params_total=100,
            compression_ratio=10.0,
            best_test_acc=0.0,
            test_acc=0.0,
        )
        session = TrainingSession()
        monitor = MonitorView(session)
        session.setParent(monitor)  # deleted with the view, in Qt's order
        qtbot.addWidget(monitor)
        monitor.show_latest_run(record)
        return monitor.summary.text()

    pretrain = {"epoch": 1, "phase": "pretrain", "test_acc": 0.97, "best_test_acc": 0.0}
    assert "Best test accuracy –" in latest_run_text([pretrain])
    trained = {"epoch": 2, "phase": "train", "test_acc": 0.61, "best_test_acc": 0.61}
    assert "Best test accuracy 61.00 %" in latest_run_text([pretrain, trained])


def test_the_review_page_names_only_fields_of_the_run_configuration():
    from ui.wizard import wizard

    fields = {field.name for field in dataclasses.fields(RunConfig)}
    for keys in (wizard.OFFERED_KEYS, wizard.STEP_SCHEDULE_KEYS, wizard.NEVER_REVIEWED):
        assert set(keys) <= fields, set(keys) - fields
