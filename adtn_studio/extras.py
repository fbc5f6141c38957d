"""Which optional parts of the installation are present.

``pip install adtn-studio`` gives the engine and the command line; the window needs the ``gui``
extra (PySide6 and pyqtgraph). A headless server can leave it out.
"""

from __future__ import annotations

import importlib.util

GUI_PACKAGES = ("PySide6", "pyqtgraph")
GUI_INSTALL = "pip install 'adtn-studio[gui]'"


def missing_gui_packages() -> list[str]:
    """The window's packages that cannot be imported here (none in a full installation)."""
    missing = []
    for name in GUI_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a package blocked or half-installed
            found = False
        if not found:
            missing.append(name)
    return missing


def explain_missing_gui(missing: list[str]) -> str:
    return (
        f"ADTN Studio cannot open its window: {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not installed (this installation has the "
        f"engine and the command line only). Install the window with: {GUI_INSTALL}. "
        f"The command line works without it: adtn-studio --help"
    )
