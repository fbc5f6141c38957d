"""The application's icon and style sheet, shipped in the ``resources`` package."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QIcon

RESOURCES_DIR = Path(__file__).resolve().parents[1] / "resources"
ICONS_DIR = RESOURCES_DIR / "icons"


def icon(name: str) -> QIcon:
    """An icon from ``resources/icons/NAME.svg`` (an empty icon when it is missing)."""
    path = ICONS_DIR / f"{name}.svg"
    return QIcon(str(path)) if path.is_file() else QIcon()


def style_sheet() -> str:
    path = RESOURCES_DIR / "style.qss"
    return path.read_text(encoding="utf-8") if path.is_file() else ""
