"""Take the screenshots in this folder: run under a display (``xvfb-run -s "-screen 0
1600x1000x24" python docs/screenshots/take_screenshots.py``). Runs, data and settings go to a
temporary folder; the PNGs are written beside this script."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = Path(tempfile.mkdtemp(prefix="adtn-shots-"))
for variable, folder in (
    ("ADTN_RUNS_DIR", "runs"),
    ("ADTN_CONFIG_DIR", "config"),
    ("ADTN_DATA_DIR", "data"),
):
    os.environ[variable] = str(WORK / folder)

from PySide6.QtCore import QEvent  # noqa: E402

from ui.app import create_application, show_main_window  # noqa: E402

app = create_application()


def wait(condition, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.01)


def settle(seconds: float = 0.4) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)


def shot(widget, name: str) -> None:
    settle()
    path = HERE / f"{name}.png"
    widget.grab().save(str(path))
    print(f"{path.name}: {path.stat().st_size // 1024} KiB")


def finish_run(window, config) -> None:
    window.start_run(config)
    wait(lambda: window.session.state == "ended")
    settle(0.5)


def main() -> None:
    # Inside a function, so every widget is gone before the interpreter shuts down.
    window = show_main_window()
    window.resize(1400, 880)
    wait(lambda: window.catalog is not None)
    wizard = window.wizard
    shot(window, "wizard-1-network-and-data")
    wizard.go_next()
    wait(lambda: wizard.layer_model.rowCount() > 0)
    shot(window, "wizard-2-layers")
    wizard.go_next()
    shot(window, "wizard-3-training")
    wizard.go_next()
    shot(window, "wizard-4-review")

    from engine.config import LayerSpec, RunConfig

    config = RunConfig(
        name="fc2-synthetic-depth2",
        model="fc2",
        dataset="synthetic",
        layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2", depth=2)],
        epochs=6,
        batch_size=64,
        lr=0.002,
        adtn_lr=0.01,
        limit_train=2000,
        limit_test=500,
        device="cpu",
    )
    window.start_run(config)
    wait(lambda: len(window.session.history) >= 3)
    settle(0.6)
    shot(window, "monitor-during-run")
    wait(lambda: window.session.state == "ended")
    settle(0.5)
    shot(window, "monitor-after-run")

    dialog = window.open_export_dialog(str(window.session.run_dir))
    dialog.out_edit.setText(str(WORK / "export"))
    dialog.start_export()
    wait(lambda: dialog.report is not None or not dialog.is_exporting())
    dialog.adjustSize()
    shot(dialog, "export-dialog-result")
    dialog.close()

    for depth, epochs in ((1, 4), (3, 4)):
        finish_run(
            window,
            config.replace(
                name=f"fc2-synthetic-depth{depth}",
                epochs=epochs,
                layers=[LayerSpec("fc1", depth=depth), LayerSpec("fc2", depth=depth)],
            ),
        )
    finish_run(
        window, config.replace(name="fc2-synthetic-dense", epochs=3, layers=[], dense_baseline=True)
    )
    window.show_page(2)
    runs = window.runs_view
    wait(lambda: runs.model.rowCount() == 4)
    shot(window, "runs-curves")
    for run in runs.model.rows:
        runs.select_run(run.path, extend=True)
    shot(window, "runs-compare")
    runs.tabs.setCurrentIndex(2)
    shot(window, "runs-params-vs-accuracy")
    window.close()
    # No event loop ran here, so deleteLater() calls are still queued: run them now.
    app.sendPostedEvents(None, QEvent.Type.DeferredDelete)


if __name__ == "__main__":
    main()
