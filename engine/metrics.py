"""The rule for a run's best test accuracy, shared by the trainer (which keeps the best
checkpoint by it) and the window (which reports it). No PyTorch.

Only epochs that train the compressed model count: dense pre-training epochs (phase
"pretrain") are a different model. The first such epoch sets the best; a later one replaces it
only when strictly higher, so ties keep the earlier epoch (and its checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from engine.choices import PHASE_TRAIN


def improves_best(phase: str, test_acc: float, best_test_acc: float, best_epoch: int) -> bool:
    """Whether an epoch of ``phase`` with ``test_acc`` becomes the run's best, given the best
    so far (``best_epoch`` 0: none yet)."""
    if phase != PHASE_TRAIN or math.isnan(test_acc):
        return False
    return best_epoch == 0 or test_acc > best_test_acc


def best_test_accuracy(rows: Iterable[Mapping[str, object]]) -> float:
    """The best test accuracy of a run from its epoch rows in order (``metrics.csv`` rows or
    the trainer's epoch events as dicts); NaN before an epoch of the compressed model ended.

    A row's ``best_test_acc``, when given, is the trainer's running best, which also covers
    epochs before a resume that ``rows`` may lack; it is taken as it is.
    """
    best, best_epoch = math.nan, 0
    for index, row in enumerate(rows, start=1):
        phase = str(row.get("phase") or PHASE_TRAIN)
        if phase != PHASE_TRAIN:
            continue
        reported = _number(row.get("best_test_acc"))
        if not math.isnan(reported):
            best, best_epoch = reported, index
            continue
        test_acc = _number(row.get("test_acc"))
        if improves_best(phase, test_acc, best, best_epoch):
            best, best_epoch = test_acc, index
    return best


def _number(value: object) -> float:
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
