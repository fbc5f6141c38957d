"""The "Compare encodings" dialog queues the variants and shows their progress and results."""

from __future__ import annotations

import pytest

from engine.config import RunConfig
from engine.layer_spec import LayerSpec

pytest.importorskip("pytestqt")


def quick_config() -> RunConfig:
    return RunConfig(
        model="fc2",
        dataset="synthetic",
        epochs=1,
        batch_size=64,
        lr=3e-3,
        limit_train=256,
        limit_test=64,
        device="cpu",
        layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2", depth=2)],
    )


def test_dialog_runs_the_variants_and_fills_the_table(qtbot, tmp_path):
    from ui.compare_dialog import CompareDialog

    dialog = CompareDialog(quick_config(), tmp_path)
    qtbot.addWidget(dialog)
    for name, box in dialog.encoding_boxes.items():
        box.setChecked(name in ("adtn", "tt", "lowrank"))
    dialog.seeds_edit.setText("0")
    dialog.search_box.setChecked(False)
    with qtbot.waitSignal(dialog.results_shown, timeout=180_000) as shown:
        dialog.start()
        assert not dialog.start_button.isEnabled() and dialog.stop_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.start_button.isEnabled(), timeout=30_000)
    out = shown.args[0]
    assert (
        out.startswith(str(tmp_path)) and (tmp_path / out.split("/")[-1] / "compare.md").is_file()
    )
    rows = {dialog.table.item(r, 0).text(): r for r in range(dialog.table.rowCount())}
    assert set(rows) == {
        "adtn at the ADTN depth-2 budget",
        "tt at the ADTN depth-2 budget",
        "lowrank at the ADTN depth-2 budget",
    }
    adtn, lowrank = (
        rows["adtn at the ADTN depth-2 budget"],
        rows["lowrank at the ADTN depth-2 budget"],
    )
    assert dialog.table.item(adtn, 1).text().startswith("done (1 of 1")
    assert dialog.table.item(adtn, 4).text().endswith("%")
    assert dialog.table.item(lowrank, 1).text() == "does not fit the budget"
    assert "needs at least" in dialog.table.item(lowrank, 1).toolTip()
    assert "best is" in dialog.verdict.text()
    assert dialog.progress.value() == dialog.progress.maximum()
    assert dialog.table.item(adtn, 6).text().endswith(" s")
    # Finished: the choices can be changed again, and a new Start is a new comparison.
    assert dialog.seeds_edit.isEnabled() and dialog.out_dir is None


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


def fake_run(folder, encoding: str, params: int, accuracy: float) -> None:
    """A finished run folder as the trainer leaves it (configuration and summary)."""
    from engine.runs import write_summary

    layers = [] if encoding == "dense" else [LayerSpec("fc1", encoding=encoding, depth=2)]
    config = quick_config().replace(
        name=folder.name, layers=layers, dense_baseline=encoding == "dense"
    )
    folder.mkdir(parents=True)
    config.save(folder / "config.toml")
    write_summary(
        folder / "summary.json",
        {
            "status": "finished",
            "started_at": f"2026-11-27T10:00:{params % 60:02d}",
            "epochs": 1,
            "epochs_completed": 1,
            "params_total": params,
            "dense_params_total": 203_530,
            "best_test_acc": accuracy,
            "test_acc": accuracy,
        },
    )


def test_runs_page_lists_comparison_runs_and_draws_a_front_per_encoding(
    qtbot, tmp_path, monkeypatch
):
    from engine.runs import list_runs
    from ui.runs.runs_view import RunsView

    root = tmp_path / "runs"
    fake_run(root / "plain-adtn", "adtn", 1_000, 0.90)
    compare = root / "compare-fc2"
    compare.mkdir(parents=True)
    (compare / "compare.json").write_text("{}")
    fake_run(compare / "runs" / "adtn-d3-seed0", "adtn", 1_400, 0.93)
    fake_run(compare / "runs" / "tt-d3-seed0", "tt", 1_380, 0.95)
    fake_run(compare / "runs" / "tt-d2-seed0", "tt", 900, 0.94)
    fake_run(compare / "runs" / "dense-seed0", "dense", 203_530, 0.98)
    records = list_runs(root)
    assert {r.name: r.encoding for r in records} == {
        "plain-adtn": "adtn",
        "adtn-d3-seed0": "adtn",
        "tt-d3-seed0": "tt",
        "tt-d2-seed0": "tt",
        "dense-seed0": "dense",
    }

    monkeypatch.setenv("ADTN_RUNS_DIR", str(root))
    view = RunsView()
    qtbot.addWidget(view)
    view.show()
    qtbot.waitUntil(lambda: view.scatter_point_count() == 5, timeout=60_000)
    assert view.pareto_front_count() == 3  # adtn, dense, tt
    colours = view.scatter_colours()
    assert colours["tt-d3-seed0"] == colours["tt-d2-seed0"] == view.encoding_colour("tt")
    assert colours["adtn-d3-seed0"] == colours["plain-adtn"] != colours["tt-d3-seed0"]


def test_review_page_opens_the_comparison_for_the_chosen_layers(qtbot, window):
    from PySide6.QtCore import Qt

    from ui.wizard.wizard import LAYERS, REVIEW

    wizard = window.wizard
    wizard.load_config(quick_config())
    wizard.show_page(LAYERS)
    qtbot.waitUntil(lambda: wizard.layer_model.rowCount() > 0, timeout=60_000)
    qtbot.waitUntil(lambda: wizard.next_button.isEnabled(), timeout=10_000)
    wizard.show_page(REVIEW)
    qtbot.mouseClick(wizard.review_page.compare_button, Qt.MouseButton.LeftButton)
    dialog = wizard.compare_dialog
    assert dialog is not None and dialog.isVisible()
    assert [s.name for s in dialog.config.layers] == ["fc1", "fc2"]
    assert dialog.depths_edit.text() == "2"
    dialog.close()
