"""The background task's signals: one outcome, then ``ended``, in the UI thread."""

from __future__ import annotations

import threading

from ui.workers import BackgroundTask


def record(task: BackgroundTask) -> list[tuple]:
    seen: list[tuple] = []
    task.progressed.connect(lambda fraction, text: seen.append(("progressed", fraction, text)))
    task.succeeded.connect(lambda result: seen.append(("succeeded", result)))
    task.failed.connect(lambda exc: seen.append(("failed", str(exc))))
    task.ended.connect(lambda: seen.append(("ended", threading.current_thread().name)))
    return seen


def test_a_task_that_returns_reports_its_result_then_ends(qtbot):
    def work(report):
        report(0.5, "half")
        return 42

    task = BackgroundTask(work)
    seen = record(task)
    with qtbot.waitSignal(task.ended, timeout=10_000):
        task.start()
    assert seen == [
        ("progressed", 0.5, "half"),
        ("succeeded", 42),
        ("ended", threading.main_thread().name),
    ]
    assert not task.is_running()


def test_a_task_that_raises_reports_the_failure_then_ends(qtbot):
    def work(_report):
        raise ValueError("no such layer: fc9")

    task = BackgroundTask(work)
    seen = record(task)
    with qtbot.waitSignal(task.ended, timeout=10_000):
        task.start()
    assert seen == [("failed", "no such layer: fc9"), ("ended", threading.main_thread().name)]
