"""Shared test set-up: Qt offscreen, the real MNIST beside the project when present."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets(monkeypatch) -> Path:
    """The read-only real data sets beside the checkout; skips when absent. A test that asks
    for them also gets ``ADTN_DATA_DIR`` pointing there (every other test sees an empty
    temporary data folder, whatever the user's environment says)."""
    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip("../shared/datasets/MNIST is not present on this machine")
    monkeypatch.setenv("ADTN_DATA_DIR", str(SHARED_DATASETS))
    return SHARED_DATASETS


@pytest.fixture(scope="module")
def one_torch_thread():
    """Cores are shared on test machines; one thread avoids oversubscription stalls."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Every variable through which the user's environment could reach a test: the application's
# own folders, and the per-user folders (XDG) that their defaults and any other per-user
# folder (settings, logs) derive from. XDG_CACHE_HOME stays: font and model caches live there.
ISOLATED_DIRS = {
    "ADTN_RUNS_DIR": "runs",
    "ADTN_CONFIG_DIR": "config",
    "ADTN_DATA_DIR": "data",
    "XDG_DATA_HOME": "xdg-data",
    "XDG_CONFIG_HOME": "xdg-config",
    "XDG_STATE_HOME": "xdg-state",
    "ADTN_LOG_DIR": "logs",
}
# Variables that change how a run behaves: the window's training mode, and a launcher's
# (torchrun, srun) description of a distributed job the test would otherwise think it is in.
IGNORED_VARIABLES = (
    "ADTN_TRAINING_MODE",
    "ADTN_NATIVE_KERNEL",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "SLURM_PROCID",
    "SLURM_STEP_NUM_TASKS",
    "TORCHELASTIC_RESTART_COUNT",
)


@pytest.fixture(autouse=True, scope="session")
def isolated_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """The engine's build cache (its compiled native kernel) in one temporary folder for the
    whole session: built once per session, never read from or written to the user's."""
    folder = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("ADTN_CACHE_DIR")
    os.environ["ADTN_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("ADTN_CACHE_DIR", None)
    else:
        os.environ["ADTN_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch) -> Iterator[Path]:
    """Keep tests out of the user's real folders and independent of them: runs, settings,
    data sets and logs live in a fresh temporary folder per test (returned), even when the
    user has set ADTN_DATA_DIR (a test that needs the real MNIST asks for
    ``shared_datasets``)."""
    home = tmp_path_factory.mktemp("user")
    for variable, folder in ISOLATED_DIRS.items():
        monkeypatch.setenv(variable, str(home / folder))
    for variable in IGNORED_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    yield home
    if "engine.logging_setup" in sys.modules:  # a test ran the CLI: close its log handlers
        sys.modules["engine.logging_setup"].reset_logging()


@pytest.fixture
def wait_until_still(qtbot):
    """``wait_until_still(read, still_ms=500, timeout=30_000)``: wait until ``read()`` has
    kept one value for ``still_ms`` (Qt events keep being processed meanwhile) and return
    that value. For "whatever was in flight has arrived" where no signal says so, instead of
    a fixed sleep; it fails after ``timeout`` ms if the value never settles."""

    def wait(read, still_ms: int = 500, timeout: int = 30_000):
        last = {"value": read(), "since": time.monotonic()}

        def still() -> bool:
            value, now = read(), time.monotonic()
            if value != last["value"]:
                last.update(value=value, since=now)
                return False
            return now - last["since"] >= still_ms / 1000

        qtbot.waitUntil(still, timeout=timeout)
        return last["value"]

    return wait


@pytest.fixture
def window(qtbot):
    """The main window, shown offscreen, once its engine has loaded."""
    from ui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.load_engine()
    qtbot.waitUntil(lambda: window.catalog is not None, timeout=60_000)
    yield window
    if window.session.is_active():  # never leave a trainer thread behind a failed test
        window.session.stop_and_wait()


_exit_status = 0


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without the interpreter's final clean-up once Qt was used: after some sequences of
    widget tests PySide6 6.12 aborts in that last garbage collection ("none_dealloc"), turning
    a passing run into a crash. Every report has been printed by now; the status is kept."""
    if "PySide6.QtWidgets" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
