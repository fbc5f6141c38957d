"""Sizes in bytes: one function for the window and the command line, importable without Qt."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.units import format_bytes


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1,023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024**2 - 1, "1.0 MiB"),  # not "1,024.0 KiB"
        (3 * 1024**2 + 1024**2 // 10, "3.1 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (1500 * 1024**4, "1,500.0 TiB"),  # the largest unit takes what is left
        (None, "–"),
    ],
)
def test_sizes_read_in_binary_units(size, text):
    assert format_bytes(size) == text


def test_a_negative_size_is_refused():
    with pytest.raises(ValueError, match="cannot be negative"):
        format_bytes(-1)


def test_the_command_line_and_the_window_share_it_without_loading_qt_or_torch():
    code = (
        "import sys, engine.units, adtn_studio.commands.export, adtn_studio.commands.inspect\n"
        "assert adtn_studio.commands.export.format_bytes is engine.units.format_bytes\n"
        "assert adtn_studio.commands.inspect.format_bytes is engine.units.format_bytes\n"
        "print(sorted(m for m in ('torch', 'PySide6') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
