"""Where the window keeps its settings: geometry, last folders, last choices.

An INI file under ``ADTN_CONFIG_DIR`` when that is set (tests and portable installs stay
isolated); otherwise Qt's native per-user store.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

ORGANIZATION = "ADTN Studio"
APPLICATION = "ADTN Studio"


def app_settings() -> QSettings:
    """The application's settings store (cheap to create; Qt shares the backing file)."""
    config_dir = os.environ.get("ADTN_CONFIG_DIR")
    if config_dir:
        path = Path(config_dir) / "adtn-studio.ini"
        path.parent.mkdir(parents=True, exist_ok=True)
        return QSettings(str(path), QSettings.Format.IniFormat)
    return QSettings(ORGANIZATION, APPLICATION)


def last_folder(key: str, fallback: str | Path = "") -> str:
    """The folder the user last chose for ``key`` (a data root, an export target...)."""
    value = app_settings().value(f"folders/{key}", "")
    return str(value) if value else str(fallback)


def remember_folder(key: str, folder: str | Path) -> None:
    app_settings().setValue(f"folders/{key}", str(folder))
