"""Before Qt starts on Linux: are the X libraries its xcb platform plugin needs installed?

When one is missing, Qt prints a long plugin diagnostic and aborts the process. Checking first
lets the launcher name the missing library and the package that provides it, in plain words.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# The libraries the xcb plugin of PySide6 6.x loads beyond the C runtime (ldd of
# libqxcb.so and libQt6XcbQpa.so), and the Debian/Ubuntu package of each.
XCB_LIBRARIES = {
    "libxcb.so.1": "libxcb1",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}


def uses_xcb(environ=os.environ, platform: str = sys.platform) -> bool:
    """Whether Qt will start its X11 (xcb) plugin in this environment."""
    if not platform.startswith("linux"):
        return False
    chosen = environ.get("QT_QPA_PLATFORM", "")
    if chosen:
        return chosen.split(":")[0].split(";")[0] == "xcb"
    # Without a choice Qt prefers Wayland in a Wayland session, and X11 otherwise.
    return not (environ.get("WAYLAND_DISPLAY") or environ.get("XDG_SESSION_TYPE") == "wayland")


def xcb_plugin() -> Path | None:
    """The xcb platform plugin of the PySide6 in use (wheel or frozen bundle)."""
    try:
        import PySide6
    except ImportError:
        return None
    base = Path(PySide6.__file__).parent
    for candidate in (
        base / "Qt" / "plugins" / "platforms" / "libqxcb.so",
        base / "plugins" / "platforms" / "libqxcb.so",
    ):
        if candidate.is_file():
            return candidate
    return None


def missing_libraries(plugin: Path | None = None, ldd: str | None = None) -> list[str]:
    """Sonames the xcb plugin needs that the dynamic loader cannot find."""
    plugin = plugin or xcb_plugin()
    ldd = ldd if ldd is not None else shutil.which("ldd")
    if plugin is not None and ldd:
        try:
            output = subprocess.run(
                [ldd, str(plugin)], capture_output=True, text=True, timeout=20
            ).stdout
        except (OSError, subprocess.SubprocessError):
            output = None
        if output is not None:
            found = re.findall(r"^\s*(\S+)\s+=>\s+not found", output, flags=re.MULTILINE)
            # Only system X libraries: a frozen bundle's own Qt libraries, which ldd may not
            # resolve outside the bundle, are never reported as missing.
            return sorted({name for name in found if name in XCB_LIBRARIES})
    if getattr(sys, "frozen", False):
        return []  # a bundle may carry some of them where the loader alone would not look
    return _missing_by_loading()


def _missing_by_loading() -> list[str]:
    """Without ldd: try to load each library the plugin is known to need."""
    import ctypes

    missing = []
    for soname in XCB_LIBRARIES:
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append(soname)
    return missing


def explain(missing: list[str]) -> str:
    """The missing libraries in plain words, with the command that installs them."""
    packages = sorted({XCB_LIBRARIES.get(name, name) for name in missing})
    names = ", ".join(missing)
    return (
        f"ADTN Studio cannot open its window: the X11 libraries {names} are not installed "
        f"(Qt needs them to draw on an X display).\n"
        f"On Debian or Ubuntu install them with:\n"
        f"    sudo apt-get install {' '.join(packages)}\n"
        f"(docs/INSTALL.md lists every library the window needs). Without a display, the "
        f"command line works: adtn-studio --help"
    )


def check_platform(environ=os.environ) -> str:
    """ "" when Qt can start here; otherwise what is missing, in plain words."""
    if not uses_xcb(environ):
        return ""
    missing = missing_libraries()
    return explain(missing) if missing else ""
