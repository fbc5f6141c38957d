"""The packaging files agree with each other and with the tree; the real build when asked.

The fast tests read the PyInstaller spec, the build script, the installer scripts and the CI
workflow, and check that every file they name exists and that names shared between them
(executable, icon, menu entry, installer files) match. ``install.sh`` is run for real on a
stand-in application. The build itself takes many minutes: set ADTN_TEST_BUILD=1 to run it.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
SPEC = PACKAGING / "adtn_studio.spec"
BUILD = PACKAGING / "build.py"
DESKTOP = PACKAGING / "linux" / "adtn-studio.desktop"
INSTALL_SH = PACKAGING / "linux" / "install.sh"
ISS = PACKAGING / "windows" / "adtn_studio.iss"
WORKFLOW = ROOT / ".github" / "workflows" / "installers.yml"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_icons = load_script(PACKAGING / "make_icons.py")


def constant(path: Path, name: str) -> str:
    """The string assigned to NAME at the top level of a Python file."""
    match = re.search(rf'^{name} = "([^"]+)"$', path.read_text(), re.MULTILINE)
    assert match, f"{path.name} defines no {name}"
    return match.group(1)


def joined_paths(path: Path, base: str) -> list[Path]:
    """Every ``BASE / "a" / "b"`` expression in a Python file, as a path."""
    bases = {"ROOT": ROOT, "PACKAGING": PACKAGING}
    found = []
    for parts in re.findall(rf'\b{base}((?:\s*/\s*"[^"{{}}]+")+)', path.read_text()):
        found.append(bases[base].joinpath(*re.findall(r'"([^"]+)"', parts)))
    return found


EXE_NAME = constant(SPEC, "EXE_NAME")
APP_NAME = constant(SPEC, "APP_NAME")


def test_spec_names_files_that_exist():
    paths = joined_paths(SPEC, "ROOT")
    assert ROOT / "packaging" / "launcher.py" in paths
    for path in paths:
        assert path.exists(), f"the spec names {path}, which does not exist"


def test_spec_collects_the_project_packages_and_resources():
    text = SPEC.read_text()
    for package in re.findall(r'collect_submodules\("([\w.]+)"\)', text):
        assert (ROOT / package / "__init__.py").is_file(), f"{package} is not a package"
    assert 'collect_data_files("resources")' in text
    assert list((ROOT / "resources" / "presets").glob("*.toml")), "no presets to ship"
    for package in ("adtn_studio", "engine", "ui", "resources"):
        assert f'collect_submodules("{package}")' in text


def test_build_script_names_files_that_exist():
    for path in joined_paths(BUILD, "PACKAGING"):
        assert path.exists(), f"build.py names {path}, which does not exist"
    assert constant(BUILD, "NAME") == EXE_NAME
    assert constant(BUILD, "APP_NAME") == APP_NAME


def test_icon_source_exists_and_renders(tmp_path):
    assert make_icons.SOURCE_SVG.is_file()
    png = make_icons.render_png(make_icons.SOURCE_SVG, tmp_path / "icon.png", size=256)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert make_icons.make_ico(png).read_bytes()[:4] == b"\x00\x00\x01\x00"  # Windows icon


def test_desktop_entry_matches_the_executable_and_icon():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(DESKTOP)
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application"
    assert section["Name"] == APP_NAME
    assert section["Exec"] == EXE_NAME  # install.sh rewrites it to the installed path
    assert section["Icon"] == make_icons.NAME == EXE_NAME
    assert DESKTOP.name == f"{EXE_NAME}.desktop"


def test_install_script_installs_and_uninstalls(tmp_path):
    """Run install.sh on a stand-in application laid out as in the .tar.gz."""
    package = tmp_path / "package"
    (package / EXE_NAME).mkdir(parents=True)
    program = package / EXE_NAME / EXE_NAME
    program.write_text("#!/bin/sh\necho stand-in\n")
    program.chmod(0o755)
    shutil.copy(INSTALL_SH, package / "install.sh")
    shutil.copy(DESKTOP, package / DESKTOP.name)
    (package / f"{EXE_NAME}.png").write_bytes(b"png")
    home = tmp_path / "home"
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}

    subprocess.run(["sh", str(package / "install.sh")], env=env, check=True, capture_output=True)
    app_dir = home / ".local" / "opt" / EXE_NAME
    link = home / ".local" / "bin" / EXE_NAME
    desktop = home / ".local" / "share" / "applications" / DESKTOP.name
    icon = home / ".local" / "share" / "icons" / "hicolor" / "512x512" / "apps" / f"{EXE_NAME}.png"
    assert subprocess.run([str(link)], capture_output=True, text=True).stdout == "stand-in\n"
    assert f"Exec={app_dir / EXE_NAME}\n" in desktop.read_text()
    assert icon.is_file()

    subprocess.run(
        ["sh", str(app_dir / "install.sh"), "--uninstall"], env=env, check=True, capture_output=True
    )
    for path in (app_dir, link, desktop, icon):
        assert not path.exists() and not path.is_symlink(), f"{path} was left behind"


def test_inno_setup_script_matches_the_build():
    text = ISS.read_text()
    defined = set(re.findall(r"^#ifndef (\w+)$", text, re.MULTILINE))
    passed = set(re.findall(r"/D(\w+)=", BUILD.read_text()))
    assert passed == defined, "build.py and the .iss disagree on the /D values"
    assert f'#define AppExe "{EXE_NAME}.exe"' in text
    assert f'#define AppName "{APP_NAME}"' in text
    assert 'Source: "{#SourceDir}\\*"' in text
    assert "SetupIconFile={#IconFile}" in text
    assert re.search(
        r'^Name: "\{group\}\\\{#AppName\}"; Filename: "\{app\}\\\{#AppExe\}"', text, re.MULTILINE
    ), "no Start-menu entry"
    assert '"{uninstallexe}"' in text


def test_workflow_builds_selftests_and_uploads_on_three_systems():
    text = WORKFLOW.read_text()
    assert "os: [ubuntu-latest, windows-latest, macos-latest]" in text
    assert 'python-version: "3.11"' in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "python packaging/build.py" in text
    assert f"dist/{EXE_NAME}/{EXE_NAME}-cli.exe selftest" in text
    assert f'"dist/{APP_NAME}.app/Contents/MacOS/{EXE_NAME}" selftest' in text
    assert f"dist/{EXE_NAME}/{EXE_NAME} selftest" in text
    build = BUILD.read_text()
    for pattern, produced in (
        ("dist/*.tar.gz", '.tar.gz"'),
        ("dist/*.dmg", '.dmg"'),
        ("dist/*-setup.exe", '-setup"'),
    ):
        assert pattern in text and produced in build, f"{pattern} is not what build.py makes"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ADTN_TEST_BUILD") != "1",
    reason="the real build takes many minutes; set ADTN_TEST_BUILD=1",
)
def test_build_and_frozen_selftest():
    subprocess.run([sys.executable, str(BUILD)], cwd=ROOT, check=True)
    frozen = {
        "win32": ROOT / "dist" / EXE_NAME / f"{EXE_NAME}-cli.exe",
        "darwin": ROOT / "dist" / f"{APP_NAME}.app" / "Contents" / "MacOS" / EXE_NAME,
    }.get(sys.platform, ROOT / "dist" / EXE_NAME / EXE_NAME)
    result = subprocess.run([str(frozen), "selftest"], capture_output=True, text=True, timeout=600)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "selftest: PASS" in result.stdout
