"""Where data sets and runs live, and how files that matter are written (atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import platformdirs

APP_NAME = "adtn-studio"
DATA_DIR_ENV = "ADTN_DATA_DIR"
RUNS_DIR_ENV = "ADTN_RUNS_DIR"
LOG_DIR_ENV = "ADTN_LOG_DIR"


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
