"""Which encoding measured best for a network: read from the comparisons already run.

Torch-free: it reads ``compare.json`` files (``engine.compare_report``) under the runs folder
and, when none matches the network and data set, the comparison this project measured and ships
(``resources/measured_comparisons.json``, made by ``benchmarks/compare_mnist.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from engine.choices import DATASET_TITLES, ENCODING_SHORT_TITLES, MODEL_TITLES


@dataclass(frozen=True)
class Recommendation:
    """The best encoding at one budget, with what it was measured against."""

    model: str
    dataset: str
    depth: int  # the ADTN depth whose count was the budget
    best: str
    best_accuracy: float
    others: tuple[tuple[str, float], ...]  # (encoding, mean best test accuracy)
    source: str  # the comparison folder, or "shipped measurement"

    def sentence(self) -> str:
        others = ", ".join(f"{_title(name)} {100 * acc:.2f} %" for name, acc in self.others)
        where = (
            "in your comparison " + Path(self.source).name
            if self.source != SHIPPED
            else "in this project's measurement"
        )
        model = MODEL_TITLES.get(self.model, self.model)
        dataset = DATASET_TITLES.get(self.dataset, self.dataset)
        return (
            f"Measured best for {model} on {dataset} at the ADTN depth-{self.depth} budget "
            f"({where}): {_title(self.best)} {100 * self.best_accuracy:.2f} %"
            + (f", against {others}." if others else ".")
        )


SHIPPED = "shipped measurement"


def _title(encoding: str) -> str:
    return ENCODING_SHORT_TITLES.get(encoding, encoding)


def _from_document(document: dict, source: str) -> list[Recommendation]:
    by_depth: dict[int, list[tuple[str, float]]] = {}
    for variant in document.get("variants", []):
        accuracy = variant.get("mean_best_test_acc")
        if (
            variant.get("encoding") in (None, "dense")
            or not variant.get("fits", True)
            or not isinstance(accuracy, (int, float))
            or math.isnan(accuracy)
        ):
            continue
        by_depth.setdefault(int(variant.get("depth", 0)), []).append(
            (str(variant["encoding"]), float(accuracy))
        )
    found = []
    for depth, scores in sorted(by_depth.items()):
        ranked = sorted(scores, key=lambda item: item[1], reverse=True)
        found.append(
            Recommendation(
                str(document.get("model")),
                str(document.get("dataset")),
                depth,
                ranked[0][0],
                ranked[0][1],
                tuple(ranked[1:]),
                source,
            )
        )
    return found


def _read(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def recommendations(model: str, dataset: str, runs_root: str | Path) -> list[Recommendation]:
    """The measured winners for ``model`` on ``dataset``, newest comparison first; the
    shipped measurement when the user has run none."""
    root = Path(runs_root)
    candidates = (
        sorted(root.glob("*/compare.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        if root.is_dir()
        else []
    )
    for path in candidates:
        document = _read(path)
        if (document.get("model"), document.get("dataset")) == (model, dataset):
            found = _from_document(document, str(path.parent))
            if found:
                return found
    shipped = resources.files("resources").joinpath("measured_comparisons.json")
    try:
        documents = json.loads(shipped.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    for document in documents:
        if (document.get("model"), document.get("dataset")) == (model, dataset):
            return _from_document(document, SHIPPED)
    return []


def measured_best(found: list[Recommendation]) -> str | None:
    """The encoding measured best at the most budgets (the smallest budget breaks a tie),
    or None without measurements."""
    if not found:
        return None
    wins: dict[str, int] = {}
    for recommendation in found:  # sorted by budget, smallest first
        wins[recommendation.best] = wins.get(recommendation.best, 0) + 1
    return max(wins, key=wins.__getitem__)  # the first of equals: the smallest budget's
