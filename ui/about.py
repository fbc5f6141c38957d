"""The About box: what this is, and the versions and device it runs with."""

from __future__ import annotations

import platform

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import qVersion
from PySide6.QtWidgets import QMessageBox, QWidget

from ui.engine_catalog import EngineCatalog


def about_text(catalog: EngineCatalog | None, device: str) -> str:
    torch_version = catalog.versions.get("PyTorch", "loading…") if catalog else "loading…"
    return (
        "<h3>ADTN Studio</h3>"
        "<p>Compress neural networks by encoding chosen layers as deep, automatically "
        "differentiable tensor networks (Qing, Li, Zhou and Ran, arXiv 2305.06058).</p>"
        "<table>"
        f"<tr><td>Python</td><td>&nbsp;{platform.python_version()}</td></tr>"
        f"<tr><td>PyTorch</td><td>&nbsp;{torch_version}</td></tr>"
        f"<tr><td>Qt</td><td>&nbsp;{qVersion()} (PySide6 {pyside_version})</td></tr>"
        f"<tr><td>Device</td><td>&nbsp;{device}</td></tr>"
        "</table>"
    )


def show_about(parent: QWidget, catalog: EngineCatalog | None, device: str) -> None:
    QMessageBox.about(parent, "About ADTN Studio", about_text(catalog, device))
