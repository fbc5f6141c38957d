"""The window's training in a child process: events through the run folder's event log,
pause/resume/stop through its control file (to every rank of a data-parallel run), a dead
child reported in plain words, and closing the window mid-run without a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ui.training_session import TrainingSession

RUN_TIMEOUT_MS = 180_000
REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_config(epochs: int = 2, name: str = "child", limit_train: int = 256, **changes):
    from engine.config import LayerSpec, RunConfig

    return RunConfig(
        name=name,
        model="fc2",
        dataset="synthetic",
        layers=[LayerSpec("fc2")],
        epochs=epochs,
        batch_size=64,
        limit_train=limit_train,
        limit_test=128,
        device="cpu",
        schedule="none",
        **changes,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.fixture
def session(qtbot):
    session = TrainingSession(mode="process")
    yield session
    if session.is_active():
        session.stop_and_wait()


def test_a_child_process_run_reports_what_a_thread_run_reports(qtbot, session, tmp_path):
    started, epochs, checkpoints = [], [], []
    session.run_started.connect(started.append)
    session.epoch_ended.connect(epochs.append)
    session.checkpoint_saved.connect(checkpoints.append)
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as ended:
        session.start(tiny_config(), tmp_path / "run")
        assert session.is_active() and session.state == "running"
    assert ended.args == ["finished"] and not session.is_active()  # its QProcess released
    assert started and started[0].train_examples == 256 and started[0].start_epoch == 1
    assert [e.epoch for e in epochs] == [1, 2] and len(session.history.batch_x) == 8
    assert {c.kind for c in checkpoints} >= {"last"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["pid"] != os.getpid()
    assert session.child_pid is None


def test_a_killed_child_is_reported_in_plain_words(qtbot, session, tmp_path):
    failures = []
    session.run_failed.connect(failures.append)
    with qtbot.waitSignal(session.batch_progress, timeout=RUN_TIMEOUT_MS):
        session.start(tiny_config(epochs=200), tmp_path / "run")
    pid = session.child_pid
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as ended:
        os.kill(pid, signal.SIGKILL)
    assert ended.args == ["failed"]
    assert failures and "killed or crashed" in failures[-1] and "resume" in failures[-1]


def test_pause_resume_and_stop_reach_every_rank_of_a_data_parallel_run(
    qtbot, session, tmp_path, wait_until_still
):
    run = tmp_path / "run"
    with qtbot.waitSignal(session.batch_progress, timeout=RUN_TIMEOUT_MS):
        session.start(tiny_config(epochs=300, limit_train=512), run, processes=2)
    session.pause()
    # the ranks finish their batch and meet in the pause: no batch comes for a while
    held = wait_until_still(lambda: len(session.history.batch_x), still_ms=1000)
    # What is under test is that nothing arrives while paused, which only time can show.
    qtbot.wait(1000)
    session.deliver_events()
    assert len(session.history.batch_x) == held and session.state == "paused"
    session.resume()
    qtbot.waitUntil(lambda: len(session.history.batch_x) > held, timeout=30_000)
    launcher = session.child_pid
    workers = [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == launcher
    ]
    assert len(workers) == 2
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as ended:
        session.stop()
    assert ended.args == ["stopped"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and "×2 (gloo)" in summary["device"]
    assert not any(alive(pid) for pid in workers + [launcher])


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_the_thread_mode_still_trains(qtbot, tmp_path):
    session = TrainingSession(mode="thread")
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as ended:
        session.start(tiny_config(epochs=1), tmp_path / "run")
    assert ended.args == ["finished"] and len(session.history.batch_x) == 4
    with pytest.raises(ValueError, match="child-process"):
        session.start(tiny_config(epochs=1), tmp_path / "other", processes=2)


CLOSE_SCRIPT = """
import sys
from PySide6.QtCore import QTimer
import ui.app
from engine.config import LayerSpec, RunConfig
config = RunConfig(name="close", model="fc2", dataset="synthetic", layers=[LayerSpec("fc2")],
                   epochs=200, batch_size=64, limit_train=512, limit_test=128, device="cpu")
show = ui.app.show_main_window
def show_and_train():  # the application's own start and exit (run_app), with a run begun
    window = show()
    window.confirm_stop_on_close = lambda: True
    def close_on_first_batch(event):
        if window.isVisible():
            print("RUN", window.session.run_dir, flush=True)
            QTimer.singleShot(0, window.close)
    window.session.batch_progress.connect(close_on_first_batch)
    def start_when_loaded():
        if window.catalog is None:
            QTimer.singleShot(20, start_when_loaded)
        else:
            window.start_run(config)
    start_when_loaded()
    return window
ui.app.show_main_window = show_and_train
sys.exit(ui.app.run_app())
"""


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_closing_the_window_mid_run_exits_cleanly_leaving_a_stopped_run(tmp_path, mode):
    env = dict(
        os.environ,
        ADTN_TRAINING_MODE=mode,
        OMP_NUM_THREADS="1",
        QT_QPA_PLATFORM="offscreen",
        PYTHONPATH=str(REPO_ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Fatal Python error" not in done.stderr
    run_dir = Path(done.stdout.split("RUN ", 1)[1].split()[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped"
    assert not alive(summary["pid"])


def test_the_wizard_offers_all_gpus_when_there_are_several(qtbot, monkeypatch):
    import torch

    from ui.main_window import MainWindow

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"GPU model {index}")
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.load_engine()
    qtbot.waitUntil(lambda: window.catalog is not None, timeout=60_000)
    page = window.wizard.training_page
    index = page.device.findData("cuda:all")
    assert index >= 0 and page.device.itemText(index) == "all 2 GPUs (data-parallel)"
    assert page.device_hint.text().startswith("2 GPU(s)")


def test_a_child_that_cannot_start_is_reported(qtbot, session, tmp_path, monkeypatch):
    import ui.training_session as training_session

    monkeypatch.setattr(
        training_session, "child_command", lambda *args: [str(tmp_path / "no-such-program")]
    )
    failures = []
    session.run_failed.connect(failures.append)
    with qtbot.waitSignal(session.ended, timeout=30_000) as ended:
        session.start(tiny_config(), tmp_path / "run")
    assert ended.args == ["failed"] and not session.is_active()
    assert "could not start the training process" in failures[-1]


def test_a_dead_worker_of_a_data_parallel_run_is_named(qtbot, session, tmp_path):
    logged, failures = [], []
    session.log.connect(lambda level, text: logged.append((level, text)))
    session.run_failed.connect(failures.append)
    with qtbot.waitSignal(session.batch_progress, timeout=RUN_TIMEOUT_MS):
        session.start(tiny_config(epochs=300, limit_train=512), tmp_path / "run", processes=2)
    launcher = session.child_pid
    rank_1 = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and _parent(p) == launcher
        and b"RANK=1" in (p / "environ").read_bytes().split(b"\0")
    ]
    assert len(rank_1) == 1
    with qtbot.waitSignal(session.ended, timeout=RUN_TIMEOUT_MS) as ended:
        os.kill(rank_1[0], signal.SIGKILL)
    assert ended.args == ["failed"] and failures
    named = [
        text
        for level, text in logged + [("error", f) for f in failures]
        if f"worker rank 1 (pid {rank_1[0]}) was killed by SIGKILL" in text
    ]
    assert named, logged
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
