"""The About box: what this is, and the versions and device it runs with."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QUrl, qVersion
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QMessageBox, QWidget

from adtn_studio import __version__
from ui.engine_catalog import EngineCatalog

# The Help menu's documents: (menu text, file under docs/).
HELP_DOCUMENTS = (
    ("&Documentation (the window)", "GUI.md"),
    ("&Training and the command line", "TRAINING.md"),
    ("Export and the &file format", "FORMAT.md"),
)


def about_text(catalog: EngineCatalog | None, device: str) -> str:
    torch_version = catalog.versions.get("PyTorch", "loading…") if catalog else "loading…"
    return (
        f"<h3>ADTN Studio {__version__}</h3>"
        "<p>Compress neural networks by encoding chosen layers as deep, automatically "
        "differentiable tensor networks (Qing, Li, Zhou and Ran, arXiv 2305.06058).</p>"
        "<table>"
        f"<tr><td>Version</td><td>&nbsp;{__version__}</td></tr>"
        f"<tr><td>Python</td><td>&nbsp;{platform.python_version()}</td></tr>"
        f"<tr><td>PyTorch</td><td>&nbsp;{torch_version}</td></tr>"
        f"<tr><td>Qt</td><td>&nbsp;{qVersion()} (PySide6 {pyside_version})</td></tr>"
        f"<tr><td>Device</td><td>&nbsp;{device}</td></tr>"
        "</table>"
    )


def show_about(parent: QWidget, catalog: EngineCatalog | None, device: str) -> None:
    QMessageBox.about(parent, "About ADTN Studio", about_text(catalog, device))


def doc_path(name: str) -> Path | None:
    """A document of ``docs/``: beside the source tree, or inside a frozen bundle."""
    roots = [Path(__file__).resolve().parents[1]]
    if getattr(sys, "_MEIPASS", None):
        roots.insert(0, Path(sys._MEIPASS))
    for root in roots:
        path = root / "docs" / name
        if path.is_file():
            return path
    return None


def open_document(parent: QWidget, name: str) -> bool:
    """Open ``docs/<name>`` with the system's viewer; say where it is when that fails."""
    path = doc_path(name)
    if path is not None and QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
        return True
    where = str(path) if path is not None else f"docs/{name} of the ADTN Studio sources"
    QMessageBox.information(
        parent, "Documentation", f"No viewer could open the document. It is {where}."
    )
    return False
