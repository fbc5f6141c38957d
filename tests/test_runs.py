"""Run folders: the files a run writes, checkpoints, listing runs, rebuilding a run's model."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import struct

import pytest
import torch

from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.config import LayerSpec, RunConfig
from engine.data import BatchIterator, dataset_info, load_datasets
from engine.runs import METRIC_COLUMNS, RunPaths, build_run_model, list_runs, new_run_dir
from engine.trainer import train


def quick_config(**changes) -> RunConfig:
    base = RunConfig(
        model="fc2",
        dataset="synthetic",
        epochs=2,
        batch_size=32,
        limit_train=128,
        limit_test=64,
        device="cpu",
        layers=[LayerSpec("fc2", depth=1)],
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    summary = train(quick_config(name="finished"), run_dir)
    assert summary.status == "finished"
    return run_dir


def test_run_folder_holds_config_metrics_summary_and_checkpoints(finished_run):
    paths = RunPaths(finished_run)
    assert RunConfig.load(paths.config) == quick_config(name="finished")
    with open(paths.metrics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == METRIC_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.loads(paths.summary.read_text())
    for key in (
        "test_acc",
        "best_test_acc",
        "params_total",
        "dense_params_total",
        "compression_ratio",
        "compression",
        "status",
        "device",
        "seconds_total",
    ):
        assert key in summary
    assert summary["status"] == "finished" and 0 <= summary["best_test_acc"] <= 1
    assert summary["compression"]["layers"][0]["name"] == "fc2"
    assert summary["compression_ratio"] > 1
    for kind in ("last", "best"):
        assert paths.checkpoint(kind).is_file()
        assert json.loads(paths.checkpoint(kind).with_suffix(".json").read_text())["epoch"] >= 1
    leftovers = [p for p in finished_run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_checkpoints_are_safetensors_not_pickles(finished_run):
    raw = RunPaths(finished_run).checkpoint("last").read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_size])  # a safetensors header is plain JSON
    assert "__metadata__" in header and not raw.startswith(b"\x80")


def test_build_run_model_restores_the_trained_weights(finished_run):
    model = build_run_model(finished_run, checkpoint="last")
    config = RunConfig.load(RunPaths(finished_run).config)
    _, test = load_datasets(config)
    batches = BatchIterator(test, dataset_info(config.dataset), 64, torch.device("cpu"))
    images, labels = next(batches.epoch(0))
    with torch.no_grad():
        acc = (model(images).argmax(1) == labels).float().mean().item()
    summary = json.loads(RunPaths(finished_run).summary.read_text())
    assert acc == pytest.approx(summary["test_acc"])
    assert not model.training
    assert type(model.fc2).__name__ == "ADTNLinear"


def test_build_run_model_without_a_best_checkpoint_says_so(tmp_path):
    quick_config().save(tmp_path / "config.toml")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        build_run_model(tmp_path, checkpoint="best")
    with pytest.raises(ValueError, match="checkpoint must be one of last, best"):
        build_run_model(tmp_path, checkpoint="final")


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(
        tmp_path / "c.safetensors", model, {"epoch": 3, "history": [{"a": 1}]}, optimizer
    )
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded.state["epoch"] == 3 and loaded.state["history"] == [{"a": 1}]
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(loaded.model_state)
    assert torch.equal(twin.weight, model.weight)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=0.5)
    twin_optimizer.load_state_dict(loaded.optimizer_state)
    original = optimizer.state_dict()
    restored = twin_optimizer.state_dict()
    assert restored["param_groups"][0]["lr"] == 0.01
    assert torch.equal(restored["state"][0]["exp_avg"], original["state"][0]["exp_avg"])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.safetensors"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_list_runs_reports_each_run_newest_first(tmp_path, finished_run):
    root = tmp_path / "runs"
    first = new_run_dir(quick_config(name="one"), root)
    train(quick_config(name="one", epochs=1), first)
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.toml").write_text("model = ")
    (root / "not-a-run").mkdir()
    records = list_runs(root)
    assert {r.name for r in records} == {"one", "broken"}
    one = next(r for r in records if r.name == "one")
    assert (one.model, one.dataset, one.status, one.epochs_completed) == (
        "fc2",
        "synthetic",
        "finished",
        1,
    )
    assert one.params_total < one.dense_params_total and 0 <= one.best_test_acc <= 1
    assert next(r for r in records if r.name == "broken").status == "unreadable"
    assert list_runs(tmp_path / "nowhere") == []


def test_new_run_dirs_are_unique_and_under_the_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ADTN_RUNS_DIR", str(tmp_path / "runs"))
    a, b = new_run_dir(quick_config()), new_run_dir(quick_config())
    assert a != b and a.parent == b.parent == tmp_path / "runs"
    assert a.name.endswith("fc2-synthetic")


def test_a_killed_run_is_listed_as_interrupted(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from engine.config import RunConfig
    from engine.runs import list_runs

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name, pid in (("killed", int(gone.stdout)), ("alive", os.getpid())):
        folder = tmp_path / name
        folder.mkdir()
        RunConfig(name=name, dataset="synthetic", dense_baseline=True).save(folder / "config.toml")
        (folder / "summary.json").write_text(
            json.dumps({"status": "running", "host": socket.gethostname(), "pid": pid, "epochs": 3})
        )
    statuses = {record.name: record.status for record in list_runs(tmp_path)}
    assert statuses == {"killed": "interrupted", "alive": "running"}


# -- resuming: a lost checkpoint, two processes, a killed run -------------------------------


def copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def test_resume_without_last_checkpoint_is_refused_not_restarted(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    paths = RunPaths(run_dir)
    paths.checkpoint("last").unlink()
    metrics_before = paths.metrics.read_text()

    summary = train(quick_config(name="finished"), run_dir, resume=True)
    assert summary.status == "failed" and summary.error_kind == "checkpoint"
    assert (
        "last.safetensors is missing although the run has 2 finished epochs"
        in summary.error_message
        and "--restart" in summary.error_message
    )
    assert "\n" not in summary.error_message
    assert paths.metrics.read_text() == metrics_before  # nothing of the run was overwritten
    assert json.loads(paths.summary.read_text())["status"] == "finished"


def test_resume_without_any_progress_starts_at_epoch_one(tmp_path):
    from engine.runs import check_resumable

    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    assert check_resumable(run_dir) == 1  # stopped before its first epoch: nothing to lose


def test_cli_resume_refuses_then_restart_starts_over(finished_run, tmp_path, capsys):
    from adtn_studio.cli import run_cli

    run_dir = copy_run(finished_run, tmp_path / "run")
    paths = RunPaths(run_dir)
    paths.checkpoint("last").unlink()
    assert run_cli(["resume", str(run_dir)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "last.safetensors is missing" in errors[0]

    assert run_cli(["resume", "--restart", str(run_dir)]) == 0
    assert paths.checkpoint("last").is_file()
    assert (paths.checkpoints / "best-before-restart.safetensors").is_file()
    with open(paths.metrics, newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


LOCK_HOLDER = """
import sys, time
from engine.runs import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)  # holds the lock until the test kills it
"""


def test_second_process_on_a_run_folder_is_refused_naming_the_holder(finished_run, tmp_path):
    import socket
    import subprocess
    import sys

    from engine.runs import RunFolderBusy, RunLock, read_lock

    run_dir = copy_run(finished_run, tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        summary = train(quick_config(name="finished", epochs=3), run_dir, resume=True)
        assert summary.status == "failed"
        assert f"is in use: process {holder.pid} on {socket.gethostname()}" in summary.error_message
        assert json.loads(RunPaths(run_dir).summary.read_text())["status"] == "finished"
        with pytest.raises(RunFolderBusy):
            RunLock(run_dir).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is stale and taken over, then given back.
    assert read_lock(RunPaths(run_dir).lock)["pid"] == holder.pid
    with RunLock(run_dir):
        assert read_lock(RunPaths(run_dir).lock)["pid"] == os.getpid()
    assert not RunPaths(run_dir).lock.exists()
    summary = train(quick_config(name="finished", epochs=3), run_dir, resume=True)
    assert summary.status == "finished" and summary.epochs_completed == 3


def test_list_and_resume_agree_on_a_running_and_a_killed_run(finished_run, tmp_path):
    import socket
    import subprocess
    import sys

    from engine.runs import RunFolderBusy, RunLock

    # a process that stays alive (until killed below) for the "running" run's lock
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    try:
        for name, pid in (("killed", int(gone.stdout)), ("alive", alive.pid)):
            run_dir = copy_run(finished_run, tmp_path / name)
            summary = json.loads(RunPaths(run_dir).summary.read_text())
            summary.update(status="running", host=socket.gethostname(), pid=pid, name=name)
            RunPaths(run_dir).summary.write_text(json.dumps(summary))
        statuses = {r.path.rsplit("/", 1)[-1]: r.status for r in list_runs(tmp_path)}
        assert statuses == {"killed": "interrupted", "alive": "running"}
        with pytest.raises(RunFolderBusy, match=f"process {alive.pid}"):
            RunLock(tmp_path / "alive").acquire()
        with RunLock(tmp_path / "killed"):
            pass
    finally:
        alive.kill()
        alive.wait()
