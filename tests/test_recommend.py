"""The wizard says which encoding measured best: the user's comparisons, else the shipped one."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt

from engine.recommend import SHIPPED, measured_best, recommendations


def comparison(folder, model, dataset, scores):
    folder.mkdir(parents=True)
    variants = [
        {"key": f"{e}-d{d}", "encoding": e, "depth": d, "fits": True, "mean_best_test_acc": acc}
        for (e, d), acc in scores.items()
    ]
    variants.append(
        {
            "key": "lowrank-d3",
            "encoding": "lowrank",
            "depth": 3,
            "fits": False,
            "mean_best_test_acc": float("nan"),
        }
    )
    (folder / "compare.json").write_text(
        json.dumps({"model": model, "dataset": dataset, "variants": variants})
    )


def test_the_users_own_comparison_wins_over_the_shipped_one(tmp_path):
    comparison(
        tmp_path / "compare-a",
        "lenet5",
        "mnist",
        {("adtn", 3): 0.99, ("tt", 3): 0.985, ("dense", 0): 0.995},
    )
    found = recommendations("lenet5", "mnist", tmp_path)
    assert [(r.depth, r.best, r.others) for r in found] == [(3, "adtn", (("tt", 0.985),))]
    sentence = found[0].sentence()
    assert "compare-a" in sentence
    # people read titles, not the configuration's names
    assert "LeNet-5 on MNIST" in sentence
    assert "ADTN 99.00 %, against TT-matrix 98.50 %." in sentence


def test_without_a_comparison_the_shipped_measurement_is_used(tmp_path):
    found = recommendations("fc2", "mnist", tmp_path / "none")
    assert {r.depth for r in found} == {3, 4}
    assert all(
        r.source == SHIPPED and r.best_accuracy >= max(a for _, a in r.others) for r in found
    )
    assert recommendations("alexnet", "cifar10", tmp_path) == []


def test_a_damaged_comparison_file_is_skipped(tmp_path):
    (tmp_path / "compare-x").mkdir()
    (tmp_path / "compare-x" / "compare.json").write_text("{not json")
    assert all(r.source == SHIPPED for r in recommendations("lenet5", "mnist", tmp_path))


def test_the_layers_page_shows_the_recommendation(qtbot, window):
    from ui.wizard.wizard import LAYERS

    wizard = window.wizard
    wizard.show_page(LAYERS)
    qtbot.waitUntil(lambda: wizard.layer_model.rowCount() > 0, timeout=60_000)
    text = wizard.layers_page.recommendation.text()
    assert text.startswith("Measured best for LeNet-5 on MNIST") and "Compare encodings" in text


def test_the_best_encoding_is_the_one_that_won_most_budgets(tmp_path):
    scores = {("adtn", 3): 0.9, ("tt", 3): 0.95, ("adtn", 4): 0.97, ("tt", 4): 0.96}
    scores.update({("adtn", 5): 0.98, ("tt", 5): 0.99, ("adtn", 6): 0.99, ("tt", 6): 0.98})
    comparison(tmp_path / "c", "fc2", "mnist", scores)
    found = recommendations("fc2", "mnist", tmp_path)
    assert [r.best for r in found] == ["tt", "adtn", "tt", "adtn"]
    assert measured_best(found) == "tt"  # two wins each: the smallest budget's winner
    assert measured_best(found[1:]) == "adtn"
    assert measured_best([]) is None


def test_one_click_follows_the_recommendation(qtbot, window):
    from ui.wizard.wizard import LAYERS

    wizard = window.wizard
    wizard.show_page(LAYERS)
    qtbot.waitUntil(lambda: wizard.layer_model.rowCount() > 0, timeout=60_000)
    page = wizard.layers_page
    # the shipped measurement: the TT-matrix won LeNet-5 on MNIST
    assert page.use_recommended_button.isVisibleTo(page)
    assert page.use_recommended_button.text() == "Use TT-matrix for the ticked layers"
    before = wizard.layer_model.specs()
    assert before and {s.encoding for s in before} == {"adtn"}
    qtbot.mouseClick(page.use_recommended_button, Qt.MouseButton.LeftButton)
    after = wizard.layer_model.specs()
    assert [s.name for s in after] == [s.name for s in before]  # the same layers, ticked
    assert {s.encoding for s in after} == {"tt"}
    assert {s.encoding for s in wizard.config.layers} == {"tt"}  # what a run will train
    assert f"{len(after)} layers now encoded as TT-matrix" in page.status.text()
    assert page.use_recommended_encoding() == 0  # nothing left to change
    assert "already encoded as TT-matrix" in page.status.text()
    report = wizard.layer_model.report
    assert report is not None and {r.encoding for r in report.rows} == {"tt"}
