"""Make the application icon in the formats the host system's installer needs.

    python packaging/make_icons.py build/icons

Renders the application's SVG icon (resources/icons/) to a 512 px PNG with Qt, then makes
adtn-studio.ico on Windows (Pillow) and adtn-studio.icns on macOS (sips and iconutil).
Prints the path of the icon the PyInstaller spec should use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_SVG = ROOT / "resources" / "icons" / "adtn-studio.svg"
NAME = "adtn-studio"
ICNS_SIZES = (16, 32, 128, 256, 512)  # each also at @2x, as iconutil expects


def render_png(svg: Path, out: Path, size: int = 512) -> Path:
    """Draw the SVG on a transparent size×size image (no display needed)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer
    from PySide6.QtWidgets import QApplication

    # A QApplication (not a bare QGuiApplication): in a process that later opens widgets,
    # such as the test run, the first application object decides what Qt can do.
    app = QApplication.instance() or QApplication([])  # noqa: F841 - Qt needs it alive
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"make_icons: cannot read {svg}")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out)):
        raise SystemExit(f"make_icons: cannot write {out}")
    return out


def make_ico(png: Path) -> Path:
    from PIL import Image

    out = png.with_suffix(".ico")
    Image.open(png).save(out, sizes=[(s, s) for s in (16, 24, 32, 48, 64, 128, 256)])
    return out


def make_icns(png: Path) -> Path:
    iconset = png.with_suffix(".iconset")
    shutil.rmtree(iconset, ignore_errors=True)
    iconset.mkdir()
    for size in ICNS_SIZES:
        for scale, suffix in ((1, ""), (2, "@2x")):
            target = iconset / f"icon_{size}x{size}{suffix}.png"
            pixels = str(size * scale)
            subprocess.run(
                ["sips", "-z", pixels, pixels, str(png), "--out", str(target)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    out = png.with_suffix(".icns")
    subprocess.run(["iconutil", "-c", "icns", str(iconset), "-o", str(out)], check=True)
    return out


def make_icons(out_dir: Path) -> Path:
    """Write the icons into out_dir; return the one for this system's executable."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = render_png(SOURCE_SVG, out_dir / f"{NAME}.png")
    if sys.platform == "win32":
        return make_ico(png)
    if sys.platform == "darwin":
        return make_icns(png)
    return png


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(make_icons(Path(sys.argv[1])))
