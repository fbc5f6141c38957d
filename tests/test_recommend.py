"""The wizard says which encoding measured best: the user's comparisons, else the shipped one."""

from __future__ import annotations

import json

from engine.recommend import SHIPPED, recommendations


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
