"""Build ADTN Studio and its installer for the host system.

    python packaging/build.py [--no-installer]

1. icons from resources/icons (packaging/make_icons.py),
2. the one-folder application with PyInstaller (packaging/adtn_studio.spec) into dist/,
3. the installer: Windows, an Inno Setup installer (ISCC.exe on PATH or in its default
   folder); macOS, a .dmg holding the .app; Linux, a .tar.gz with install.sh, a .desktop file
   and the icon.
It prints the time of each step, the bundle's size and the installer's path and size.
Then run the frozen self-test: dist/adtn-studio/adtn-studio selftest (see docs/INSTALL.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
sys.path[:0] = [str(ROOT), str(PACKAGING)]

import make_icons  # noqa: E402

from adtn_studio import __version__  # noqa: E402

DIST = ROOT / "dist"
WORK = ROOT / "build"
NAME = "adtn-studio"
APP_NAME = "ADTN Studio"


def arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def human(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB" if size < 2**30 else f"{size / 2**30:,.2f} GiB"


def run_pyinstaller(icon: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--distpath",
            str(DIST),
            "--workpath",
            str(WORK / "pyinstaller"),
            str(PACKAGING / "adtn_studio.spec"),
            "--",
            "--icon",
            str(icon),
        ],
        check=True,
    )
    return DIST / (f"{APP_NAME}.app" if sys.platform == "darwin" else NAME)


def linux_tarball(bundle: Path, icon_png: Path) -> Path:
    """A .tar.gz: the application folder, install.sh, the .desktop file and the icon."""
    top = f"{NAME}-{__version__}-linux-{arch()}"
    out = DIST / f"{top}.tar.gz"
    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        tar.add(bundle, arcname=f"{top}/{NAME}")
        tar.add(PACKAGING / "linux" / "install.sh", arcname=f"{top}/install.sh")
        tar.add(PACKAGING / "linux" / f"{NAME}.desktop", arcname=f"{top}/{NAME}.desktop")
        tar.add(icon_png, arcname=f"{top}/{NAME}.png")
    return out


def macos_dmg(app: Path) -> Path:
    """A compressed .dmg with the .app and a link to /Applications to drag it onto."""
    staging = WORK / "dmg"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copytree(app, staging / app.name, symlinks=True)
    (staging / "Applications").symlink_to("/Applications")
    out = DIST / f"{NAME}-{__version__}-macos-{arch()}.dmg"
    subprocess.run(
        [
            "hdiutil",
            "create",
            "-volname",
            APP_NAME,
            "-srcfolder",
            str(staging),
            "-ov",
            "-format",
            "UDZO",
            str(out),
        ],
        check=True,
    )
    return out


def find_iscc() -> str:
    found = shutil.which("ISCC")
    if found:
        return found
    program_files = Path(os.environ.get("ProgramFiles(x86)", r"C:\Program Files (x86)"))
    default = program_files / "Inno Setup 6" / "ISCC.exe"
    if default.is_file():
        return str(default)
    raise SystemExit(
        "build: Inno Setup 6 (ISCC.exe) not found; install it, e.g. `choco install innosetup`"
    )


def windows_setup(bundle: Path, icon_ico: Path) -> Path:
    """An Inno Setup installer with a Start-menu entry and an uninstaller."""
    base = f"{NAME}-{__version__}-windows-{arch()}-setup"
    subprocess.run(
        [
            find_iscc(),
            f"/DAppVersion={__version__}",
            f"/DSourceDir={bundle}",
            f"/DIconFile={icon_ico}",
            f"/DOutputDir={DIST}",
            f"/DOutputBaseName={base}",
            str(PACKAGING / "windows" / "adtn_studio.iss"),
        ],
        check=True,
    )
    return DIST / f"{base}.exe"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-installer", action="store_true", help="stop after PyInstaller")
    args = parser.parse_args()

    started = time.perf_counter()
    icon = make_icons.make_icons(WORK / "icons")
    print(f"build: icon {icon}")

    bundle = run_pyinstaller(icon)
    frozen_at = time.perf_counter()
    print(f"build: bundle {bundle} ({human(folder_size(bundle))}) in {frozen_at - started:.0f} s")

    if not args.no_installer:
        if sys.platform == "win32":
            installer = windows_setup(bundle, icon)
        elif sys.platform == "darwin":
            installer = macos_dmg(bundle)
        else:
            installer = linux_tarball(bundle, icon)
        print(
            f"build: installer {installer} ({human(installer.stat().st_size)}) "
            f"in {time.perf_counter() - frozen_at:.0f} s"
        )
    print(f"build: done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
