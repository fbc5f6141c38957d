"""The command line end to end, in subprocesses: presets, train, resume, Ctrl-C, a kill,
and the exit code and one-line message of a failure."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adtn_studio.cli import run_cli
from engine.config import RunConfig
from engine.presets import list_presets

QUICK_CONFIG = """\
model = "fc2"
dataset = "synthetic"
epochs = {epochs}
batch_size = 32
limit_train = {limit_train}
limit_test = 64
device = "cpu"
"""
ADTN_LAYER = """
[[layers]]
name = "fc2"
depth = 1
"""


def adtn(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adtn_studio", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(path: Path, epochs: int = 2, limit_train: int = 128, adtn: bool = True) -> Path:
    text = QUICK_CONFIG.format(epochs=epochs, limit_train=limit_train)
    path.write_text(text + ADTN_LAYER if adtn else text + "dense_baseline = true\n")
    return path


def start_training(tmp_path: Path, run_dir: Path, epochs: int) -> subprocess.Popen:
    config = write_config(tmp_path / "long.toml", epochs=epochs, limit_train=1000, adtn=False)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adtn_studio",
            "train",
            "--config",
            str(config),
            "--out",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if text in line:
            return
        if not line and process.poll() is not None:
            break
    process.kill()
    pytest.fail(f"the training process never printed {text!r}")


def metric_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_presets_lists_every_preset():
    result = adtn("presets")
    assert result.returncode == 0
    for name in list_presets():
        assert name in result.stdout
    assert "fc1:1 fc2:1" in result.stdout  # VGG-16's two compressed layers


def test_train_prints_a_summary_and_writes_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = adtn(
        "train",
        "--config",
        write_config(tmp_path / "c.toml"),
        "--out",
        run_dir,
        "--epochs",
        2,
        "--limit-test",
        32,
    )
    assert result.returncode == 0, result.stderr
    assert "status:      finished (2/2 epochs, cpu)" in result.stdout
    assert "encoded layers: fc2 (adtn: depth 1, brick, relu)" in result.stdout
    assert "epoch 2/2: train loss" in result.stderr  # the per-epoch line beside the bar
    assert metric_epochs(run_dir) == [1, 2]


def test_bad_config_exits_1_with_one_line_naming_the_field(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('model = "fc2"\ndataset = "synthetic"\noptimizer = "rmsprop"\n')
    result = adtn("train", "--config", config)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adtn-studio train: ")
    assert "optimizer must be one of adam, adamw, sgd" in lines[0]


# failures that end before any training are checked in-process (same code path, no start-up)


def test_missing_data_set_exits_1_saying_how_to_provide_it(tmp_path, capsys):
    config = tmp_path / "mnist.toml"
    config.write_text('model = "fc2"\ndataset = "mnist"\ndownload = false\ndense_baseline = true\n')
    code = run_cli(
        [
            "train",
            "--config",
            str(config),
            "--data-root",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "MNIST is not available" in err and "--data-root" in err


def test_unknown_preset_and_non_run_folder_fail_cleanly(tmp_path, capsys):
    assert run_cli(["train", "--preset", "nope"]) == 1
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert run_cli(["resume", str(tmp_path)]) == 1
    assert "is not a run folder" in capsys.readouterr().err


def test_command_line_overrides_reach_the_config(tmp_path):
    run_dir = tmp_path / "run"
    code = run_cli(
        [
            "train",
            "--config",
            str(write_config(tmp_path / "c.toml", adtn=False)),
            "--out",
            str(run_dir),
            "--epochs",
            "1",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--limit-train",
            "40",
            "--limit-test",
            "20",
        ]
    )
    assert code == 0
    saved = RunConfig.load(run_dir / "config.toml")
    assert (saved.epochs, saved.seed, saved.limit_train, saved.limit_test) == (1, 3, 40, 20)


def test_ctrl_c_stops_cleanly_with_a_one_line_message(tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(tmp_path, run_dir, epochs=200)
    wait_for_line(process, "epoch 1/200: train loss")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "stopped after epoch" in stderr and f"adtn-studio resume {run_dir}" in stderr
    done = metric_epochs(run_dir)
    assert done and done == list(range(1, len(done) + 1))


def test_a_killed_run_resumes_from_its_last_finished_epoch(tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(tmp_path, run_dir, epochs=4)
    wait_for_line(process, "epoch 1/4: train loss")
    process.kill()
    process.communicate(timeout=60)
    finished_before = metric_epochs(run_dir)
    result = adtn("resume", run_dir)
    assert result.returncode == 0, result.stderr
    if finished_before[-1] < 4:
        assert f"resuming at epoch {finished_before[-1] + 1}" in result.stderr
    assert metric_epochs(run_dir) == [1, 2, 3, 4]
