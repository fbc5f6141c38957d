"""A headless installation (no ``gui`` extra): the command line works, the window says why not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adtn_studio.__main__ import main
from adtn_studio.extras import GUI_INSTALL, missing_gui_packages

# Run a snippet in a fresh interpreter in which PySide6 and pyqtgraph cannot be imported,
# as on a server that installed `pip install adtn-studio` only.
BLOCK_GUI = "import sys\nfor name in ('PySide6', 'pyqtgraph'):\n    sys.modules[name] = None\n"


def run_without_gui(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_GUI + code], capture_output=True, text=True, timeout=300
    )


def test_full_installation_has_the_gui_packages():
    assert missing_gui_packages() == []


def test_blocked_packages_are_reported_missing():
    result = run_without_gui(
        "from adtn_studio.extras import missing_gui_packages\nprint(missing_gui_packages())"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['PySide6', 'pyqtgraph']"


def test_window_without_gui_extra_says_how_to_install_it():
    result = run_without_gui("from adtn_studio.__main__ import main\nsys.exit(main([]))")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one clear line, no traceback
    assert "PySide6" in lines[0] and GUI_INSTALL in lines[0]


def test_command_line_works_without_gui_extra():
    result = run_without_gui(
        "from adtn_studio.cli import run_cli\n"
        "code = run_cli(['layers', '--model', 'fc2'])\n"
        "assert not any(m.startswith(('PySide6', 'pyqtgraph', 'ui')) for m in sys.modules"
        " if sys.modules[m] is not None), 'the CLI imported the window'\n"
        "sys.exit(code)"
    )
    assert result.returncode == 0, result.stderr
    assert "fc1" in result.stdout


def test_selftest_versions_step_without_gui_extra():
    result = run_without_gui(
        "from pathlib import Path\n"
        "from adtn_studio.selftest import Context, check_versions, selftest_steps\n"
        "print(check_versions(Context(work=Path('.'), device='cpu')))\n"
        "print([name for name, _, _ in selftest_steps(window=True)])"
    )
    assert result.returncode == 0, result.stderr
    versions, steps = result.stdout.strip().splitlines()
    assert "no Qt" in versions and "PyTorch" in versions
    assert "window" not in steps and "train" in steps


def test_arguments_still_reach_the_cli(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "adtn-studio" in capsys.readouterr().out
