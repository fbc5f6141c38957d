"""The launcher names missing X libraries instead of letting Qt abort (issue 14, item 13)."""

from __future__ import annotations

import stat
import sys

from ui import platform_check
from ui.platform_check import explain, missing_libraries, uses_xcb

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibQt6XcbQpa.so.6 => not found
"""


def fake_ldd(tmp_path, output: str):
    script = tmp_path / "ldd"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_missing_x_libraries_are_read_from_ldd(tmp_path):
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"")
    missing = missing_libraries(plugin, ldd=fake_ldd(tmp_path, LDD_OUTPUT))
    # Qt's own libraries of a bundle are never reported; the system's X libraries are.
    assert missing == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    text = explain(missing)
    assert "apt-get install libxcb-icccm4 libxcb-keysyms1" in text
    assert "libxcb-icccm.so.4" in text and "INSTALL.md" in text


def test_only_the_x11_platform_is_checked():
    assert uses_xcb({}, "linux")
    assert uses_xcb({"QT_QPA_PLATFORM": "xcb"}, "linux")
    assert not uses_xcb({"QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert not uses_xcb({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert not uses_xcb({}, "win32") and not uses_xcb({}, "darwin")


def test_the_launcher_prints_the_missing_library_and_exits(monkeypatch, capsys):
    from adtn_studio.__main__ import main

    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform_check, "missing_libraries", lambda: ["libxcb-icccm.so.4"])
    started = []
    monkeypatch.setattr("ui.app.run_app", lambda: started.append(1) or 0)
    assert main([]) == 1
    assert not started
    assert "libxcb-icccm4" in capsys.readouterr().err


def test_the_installed_plugin_is_found_and_checked():
    plugin = platform_check.xcb_plugin()
    assert plugin is not None and plugin.name == "libqxcb.so"
    # Whatever this machine lacks is a subset of what the plugin is known to need.
    assert set(missing_libraries(plugin)) <= set(platform_check.XCB_LIBRARIES)


def test_without_ldd_each_known_library_is_loaded(tmp_path, monkeypatch):
    import ctypes

    tried = []

    def fake_load(name):
        tried.append(name)
        if name == "libxcb-keysyms.so.1":
            raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", fake_load)
    assert missing_libraries(tmp_path / "libqxcb.so", ldd="") == ["libxcb-keysyms.so.1"]
    assert set(tried) == set(platform_check.XCB_LIBRARIES)
