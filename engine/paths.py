"""Where data sets and runs live, the files of a run folder, and how files that matter are
written (atomically). No PyTorch: the window and the command line use it before it loads."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from engine.choices import CHECKPOINT_KINDS

APP_NAME = "adtn-studio"
DATA_DIR_ENV = "ADTN_DATA_DIR"
RUNS_DIR_ENV = "ADTN_RUNS_DIR"
LOG_DIR_ENV = "ADTN_LOG_DIR"
CACHE_DIR_ENV = "ADTN_CACHE_DIR"

# The files of a run folder (RunPaths spells their paths; nothing else does).
CONFIG_FILE = "config.toml"  # the resolved run configuration
METRICS_FILE = "metrics.csv"  # one row per epoch, columns engine.choices.METRIC_COLUMNS
SUMMARY_FILE = "summary.json"
CHECKPOINTS_FOLDER = "checkpoints"  # <kind>.safetensors and <kind>.json per checkpoint kind
LOCK_FILE = "run.lock"  # names the process training in the folder
EVENT_LOG_FILE = "events.jsonl"  # the trainer's events, when a window follows a child process
CONTROL_FILE = "control.json"  # run, pause or stop, written by that window
LOG_FILE = "log.txt"  # what the engine logged during the run, tracebacks of failures included


@dataclass(frozen=True)
class RunPaths:
    """The files of the run folder ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_FOLDER

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def event_log(self) -> Path:
        return self.root / EVENT_LOG_FILE

    @property
    def control(self) -> Path:
        return self.root / CONTROL_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    def checkpoint(self, kind: str) -> Path:
        """``checkpoints/<kind>.safetensors`` for kind "last" or "best"."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(
                f"checkpoint must be one of {', '.join(CHECKPOINT_KINDS)} (got {kind!r})"
            )
        return self.checkpoints / f"{kind}.safetensors"


def default_data_root() -> Path:
    """Data-set folder: ``$ADTN_DATA_DIR`` if set, else a per-user data folder."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return platformdirs.user_data_path(APP_NAME) / "datasets"


def default_runs_root() -> Path:
    """Folder that holds run folders: ``$ADTN_RUNS_DIR`` if set, else a per-user data folder."""
    override = os.environ.get(RUNS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return platformdirs.user_data_path(APP_NAME) / "runs"


def default_log_dir() -> Path:
    """Folder of the application's log file: ``$ADTN_LOG_DIR`` if set, else the per-user log
    folder (``platformdirs.user_log_path``)."""
    override = os.environ.get(LOG_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return platformdirs.user_log_path(APP_NAME)


def default_cache_dir() -> Path:
    """Folder of things the engine builds for this machine (its compiled contraction kernel):
    ``$ADTN_CACHE_DIR`` if set, else the per-user cache folder."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return platformdirs.user_cache_path(APP_NAME)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A reader (or a process killed mid-write) sees the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, text.encode("utf-8"))
