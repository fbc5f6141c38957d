"""The "Compare encodings" dialog queues the variants and shows their progress and results."""

from __future__ import annotations

import pytest

from engine.config import RunConfig
from engine.layer_spec import LayerSpec

pytest.importorskip("pytestqt")


def quick_config() -> RunConfig:
    return RunConfig(model="fc2", dataset="synthetic", epochs=1, batch_size=64, lr=3e-3,
                     limit_train=256, limit_test=64, device="cpu",
                     layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2", depth=2)])


def test_dialog_runs_the_variants_and_fills_the_table(qtbot, tmp_path):
    from ui.compare_dialog import CompareDialog

    dialog = CompareDialog(quick_config(), tmp_path)
    qtbot.addWidget(dialog)
    for name, box in dialog.encoding_boxes.items():
        box.setChecked(name in ("adtn", "tt", "lowrank"))
    dialog.seeds_edit.setText("0")
    dialog.search_box.setChecked(False)
    with qtbot.waitSignal(dialog.finished_compare, timeout=180_000) as finished:
        dialog.start()
        assert not dialog.start_button.isEnabled() and dialog.stop_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.start_button.isEnabled(), timeout=30_000)
    out = finished.args[0]
    assert out.startswith(str(tmp_path)) and (tmp_path / out.split("/")[-1] / "compare.md").is_file()
    rows = {dialog.table.item(r, 0).text(): r for r in range(dialog.table.rowCount())}
    assert set(rows) == {"adtn at the ADTN depth-2 budget", "tt at the ADTN depth-2 budget",
                         "lowrank at the ADTN depth-2 budget"}
    adtn, lowrank = rows["adtn at the ADTN depth-2 budget"], rows["lowrank at the ADTN depth-2 budget"]
    assert dialog.table.item(adtn, 1).text().startswith("done (1 of 1")
    assert dialog.table.item(adtn, 4).text().endswith("%")
    assert dialog.table.item(lowrank, 1).text() == "does not fit the budget"
    assert "needs at least" in dialog.table.item(lowrank, 1).toolTip()
    assert "best is" in dialog.verdict.text()
    assert dialog.progress.value() == dialog.progress.maximum()


def test_bad_choices_are_said_and_nothing_starts(qtbot, tmp_path):
    from ui.compare_dialog import CompareDialog

    dialog = CompareDialog(quick_config(), tmp_path)
    qtbot.addWidget(dialog)
    dialog.seeds_edit.setText("zero")
    dialog.start()
    assert "whole numbers" in dialog.status.text()
    assert dialog.start_button.isEnabled() and not dialog.is_running()
    dialog.seeds_edit.setText("0")
    for box in dialog.encoding_boxes.values():
        box.setChecked(False)
    dialog.start()
    assert dialog.status.text().startswith("encodings: choose some of")
