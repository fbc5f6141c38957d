"""Failures keep their causes: engine errors by type, bugs as "error" with their traceback in
the run folder's and the application's log files, and ``--verbose`` on the command line."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path

import pytest

import engine.trainer as trainer_module
from adtn_studio.cli import run_cli
from engine import errors
from engine.choices import FailureKind
from engine.config import LayerSpec, RunConfig
from engine.logging_setup import APP_LOG_NAME, configure_logging, run_log
from engine.runs import RunPaths
from engine.trainer import train

# where each error was importable before the hierarchy moved to engine.errors
OLD_HOMES = {
    "ConfigError": "engine.config",
    "LayerSpecError": "engine.layer_spec",
    "EncodingError": "engine.encodings",
    "DataUnavailableError": "engine.data",
    "ImageFolderError": "engine.imagefolder",
    "DeviceError": "engine.trainer",
    "NonFiniteLoss": "engine.trainer",
    "CheckpointError": "engine.checkpoint",
    "RunFolderBusy": "engine.runs",
    "DistributedSetupError": "engine.distributed",
    "ModelSourceError": "engine.model_sources",
    "WeightsError": "engine.weights",
    "CompareError": "engine.compare",
    "BundleError": "engine.export",
    "ExportError": "engine.export",
}


def quick_config(**changes) -> RunConfig:
    base = RunConfig(
        model="fc2",
        dataset="synthetic",
        epochs=1,
        batch_size=32,
        lr=1e-3,
        limit_train=128,
        limit_test=64,
        device="cpu",
        seed=3,
    )
    config = dataclasses.replace(base, **changes)
    return dataclasses.replace(config, dense_baseline=not config.layers)


@pytest.mark.parametrize("name", sorted(OLD_HOMES))
def test_every_engine_error_is_one_class_under_engine_error(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.EngineError)
    assert getattr(importlib.import_module(OLD_HOMES[name]), name) is cls
    assert isinstance(cls.kind, FailureKind) and cls.kind is not FailureKind.ERROR


def test_errors_keep_the_builtin_base_callers_catch():
    for cls in (
        errors.ConfigError,
        errors.LayerSpecError,
        errors.EncodingError,
        errors.ModelSourceError,
        errors.WeightsError,
        errors.BundleError,
        errors.ImageFolderError,
    ):
        assert issubclass(cls, ValueError), cls
    for cls in (
        errors.DataUnavailableError,
        errors.CheckpointError,
        errors.DeviceError,
        errors.DistributedSetupError,
        errors.NonFiniteLoss,
        errors.ExportError,
    ):
        assert issubclass(cls, RuntimeError), cls
    assert errors.failure_kind(errors.DataUnavailableError("x")) is FailureKind.DATA_UNAVAILABLE
    assert errors.failure_kind(ValueError("x")) is FailureKind.ERROR
    assert errors.failure_kind(KeyError("x")) is FailureKind.ERROR


@pytest.fixture
def engine_bug(monkeypatch):
    """A plain ValueError from inside the training loop: what an engine bug looks like."""

    def broken(*args, **kwargs):
        raise ValueError("an index went astray")

    monkeypatch.setattr(trainer_module, "adtn_grad_norms", broken)


def test_an_engine_bug_is_an_error_with_its_traceback_in_the_run_log(tmp_path, engine_bug):
    summary = train(quick_config(), tmp_path / "run")
    assert summary.status == "failed"
    assert summary.error_kind == FailureKind.ERROR.value == "error"
    log_file = RunPaths(tmp_path / "run").log
    assert summary.error_message.startswith("Unexpected error: ValueError: an index went astray")
    assert str(log_file) in summary.error_message  # where to look
    text = log_file.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text
    assert "in broken" in text and "ValueError: an index went astray" in text


def test_a_layer_that_cannot_be_encoded_is_a_config_failure_in_one_line(tmp_path):
    summary = train(
        quick_config(layers=[LayerSpec("fc1", encoding="lowrank", budget=1)]), tmp_path / "run"
    )
    assert summary.error_kind == "config"
    assert "fc1" in summary.error_message and "\n" not in summary.error_message
    assert "Unexpected" not in summary.error_message
    # the user's mistake is logged in words, not as a traceback
    assert "Traceback" not in RunPaths(tmp_path / "run").log.read_text(encoding="utf-8")


def test_failure_events_carry_a_failure_kind(tmp_path, engine_bug):
    from engine.events import RunFailed, TrainerCallback

    failures = []

    class Failures(TrainerCallback):
        def on_error(self, event):
            failures.append(event)

    train(quick_config(), tmp_path / "run", callbacks=[Failures()])
    assert [type(f) for f in failures] == [RunFailed]
    assert failures[0].kind is FailureKind.ERROR
    assert RunFailed("nan_loss", "x").kind is FailureKind.NAN_LOSS  # read back from a log
    assert RunFailed("a kind from a newer version", "x").kind is FailureKind.ERROR


def test_the_run_log_takes_only_the_training_threads_engine_records(tmp_path):
    import threading

    path = tmp_path / "log.txt"
    other = logging.getLogger("engine.elsewhere")
    with run_log(path):
        logging.getLogger("engine.trainer").info("from the run")
        thread = threading.Thread(target=lambda: other.warning("from another thread"))
        thread.start()
        thread.join()
        logging.getLogger("somebody.else").warning("not the engine")
    logging.getLogger("engine.trainer").warning("after the run")
    assert path.read_text(encoding="utf-8").splitlines()[0].endswith("engine.trainer: from the run")
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1


def test_logging_setup_writes_tracebacks_to_the_app_log_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADTN_LOG_DIR", str(tmp_path / "logs"))
    log_file = configure_logging()
    assert log_file == tmp_path / "logs" / APP_LOG_NAME
    try:
        raise KeyError("lost")
    except KeyError:
        logging.getLogger("engine.somewhere").exception("it broke")
    logging.getLogger("engine.somewhere").debug("a detail")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text(encoding="utf-8")
    assert "it broke" in text and "Traceback" in text and "KeyError: 'lost'" in text
    assert "a detail" in text  # the file keeps the engine's DEBUG records
    logging.getLogger("engine.somewhere").warning("a warning")
    err = capsys.readouterr().err
    # the console: warnings in one line; a traceback is the file's (its logger tells the user)
    assert err.strip() == "WARNING engine.somewhere: a warning"
    configure_logging(verbose=True)  # again: replaces, never doubles, the handlers
    logging.getLogger("engine.somewhere").debug("verbose detail")
    err = capsys.readouterr().err
    assert err.count("verbose detail") == 1


@pytest.fixture
def broken_presets(monkeypatch):
    import adtn_studio.commands.presets as presets

    def broken():
        raise KeyError("no such column")

    monkeypatch.setattr(presets, "format_presets_table", broken)


def test_an_unexpected_cli_error_is_one_line_naming_the_log(
    broken_presets, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("ADTN_LOG_DIR", str(tmp_path / "logs"))
    assert run_cli(["presets"]) == 1
    err = capsys.readouterr().err
    log_file = tmp_path / "logs" / APP_LOG_NAME
    assert err.strip().splitlines() == [
        f"adtn-studio presets: unexpected error: KeyError: 'no such column' (details in {log_file})"
    ]
    assert "Traceback" in log_file.read_text(encoding="utf-8")


@pytest.mark.parametrize("argv", [["--verbose", "presets"], ["presets", "-v"]])
def test_verbose_prints_the_traceback(broken_presets, capsys, argv):
    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "details in" not in err


def test_verbose_training_failure_shows_the_traceback(engine_bug, capsys, tmp_path):
    config = tmp_path / "run.toml"
    quick_config().save(config)
    assert run_cli(["train", "--config", str(config), "--out", str(tmp_path / "a")]) == 1
    quiet = capsys.readouterr().err
    assert "Traceback" not in quiet
    assert "Unexpected error: ValueError: an index went astray" in quiet
    assert str(RunPaths(tmp_path / "a").log) in quiet
    assert run_cli(["train", "-v", "--config", str(config), "--out", str(tmp_path / "b")]) == 1
    loud = capsys.readouterr().err
    assert "Traceback (most recent call last)" in loud and "in broken" in loud
    # the application's log keeps the tracebacks of both runs (ADTN_LOG_DIR: see conftest)
    app_log = (Path(os.environ["ADTN_LOG_DIR"]) / APP_LOG_NAME).read_text(encoding="utf-8")
    assert app_log.count("ValueError: an index went astray") >= 2 and "in broken" in app_log


def test_a_config_mistake_on_the_cli_is_one_line(capsys, tmp_path):
    config = tmp_path / "run.toml"
    quick_config(layers=[LayerSpec("fc9")]).save(config)
    assert run_cli(["train", "--config", str(config), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fc9" in err[0] and "Traceback" not in err[0]
