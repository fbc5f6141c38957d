"""How long the window's event loop is blocked while a real training runs.

Target: at most 16 ms at the 99th percentile (one frame at 60 Hz) and 100 ms at worst.

Opens the main window, trains FC-2 with both layers as ADTNs on the generated data set
through the window's own TrainingSession (the live monitor redrawing), and meanwhile lets a
5 ms QTimer record the time between its ticks. A tick that comes late means the event loop
was busy: that lateness is what a user feels. Only ticks from the first reported batch to the
end of the run count (a child process spends its first seconds importing PyTorch, when the
window has nothing to do).

    python benchmarks/gui_responsiveness.py [--mode process|thread] [--switch-interval S]
                                            [--epochs 5] [--examples 2000]

``--mode process`` (the default) trains in a child process, as the window does;
``--mode thread`` trains in a worker thread of the window's process, optionally with
``sys.setswitchinterval(S)``. Runs headless (offscreen) unless a display is set. Prints the
machine's load (``os.getloadavg``), since other jobs on the same cores change the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TICK_MS = 5
TARGET_P99_MS, TARGET_MAX_MS = 16.0, 100.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("process", "thread"), default="process")
    parser.add_argument(
        "--switch-interval",
        type=float,
        metavar="S",
        help="sys.setswitchinterval for the thread mode (default: Python's)",
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument(
        "--worst",
        type=int,
        default=0,
        metavar="N",
        help="also list the N longest blocks and the epoch ends near them",
    )
    args = parser.parse_args()
    os.environ["ADTN_TRAINING_MODE"] = args.mode
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    from PySide6.QtCore import QElapsedTimer, Qt, QTimer

    from ui.app import create_application, show_main_window

    app = create_application()
    window = show_main_window()
    while window.catalog is None:
        app.processEvents()
        time.sleep(0.005)

    from engine.config import LayerSpec, RunConfig

    config = RunConfig(
        name="responsiveness",
        model="fc2",
        dataset="synthetic",
        layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2", depth=2)],
        epochs=args.epochs,
        batch_size=args.batch_size,
        limit_train=args.examples,
        limit_test=500,
        device="cpu",
    )

    ticks: list[tuple[float, float]] = []  # (time of the tick, ms since the previous one)
    clock = QElapsedTimer()
    ticker = QTimer()
    ticker.setInterval(TICK_MS)
    ticker.setTimerType(Qt.TimerType.PreciseTimer)

    def tick() -> None:
        ticks.append((time.perf_counter(), clock.nsecsElapsed() / 1e6))
        clock.restart()

    ticker.timeout.connect(tick)

    # The same measurement with the window idle: the machine's own noise floor.
    clock.start()
    ticker.start()
    QTimer.singleShot(int(args.idle_seconds * 1000), app.exit)  # exit() closes no window
    app.exec()
    ticker.stop()
    idle = [max(0.0, gap - TICK_MS) for _, gap in ticks[1:]]
    ticks.clear()
    batches: list = []
    marks: dict[str, float] = {}

    def on_batch(event) -> None:
        marks.setdefault("first_batch", time.perf_counter())
        batches.append(event)

    window.session.batch_progress.connect(on_batch)
    epoch_ends: list[float] = []
    window.session.epoch_ended.connect(lambda event: epoch_ends.append(time.perf_counter()))

    def on_ended(status: str) -> None:
        marks["end"] = time.perf_counter()
        app.exit(0 if status == "finished" else 1)

    window.session.ended.connect(on_ended)
    load_before = os.getloadavg()
    cpu_before = time.process_time()
    started = time.perf_counter()
    window.start_run(config)
    clock.start()
    ticker.start()
    code = app.exec()
    ticker.stop()
    seconds = time.perf_counter() - started
    window_cpu = time.process_time() - cpu_before
    load_after = os.getloadavg()

    first = marks.get("first_batch", started)
    gaps = [gap for at, gap in ticks[1:] if first <= at <= marks.get("end", at)]
    lateness = [max(0.0, gap - TICK_MS) for gap in gaps] or [0.0]
    history = window.session.history
    mode = args.mode + (
        f", switch interval {args.switch_interval:g} s"
        if args.switch_interval and args.mode == "thread"
        else ""
    )
    print(
        f"Training {config.model} ({', '.join(s.name for s in config.layers)} as ADTNs) on "
        f"{args.examples} generated examples, {args.epochs} epochs, CPU, {mode}: "
        f"{seconds:.1f} s in all ({marks.get('end', started) - first:.1f} s from the first "
        f"batch), {len(history.batch_x)} batches, {len(batches)} monitor updates, status "
        f"{window.session.state}."
    )
    print(
        f"Load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"{os.cpu_count()} CPUs. CPU time of the window's process during the run: "
        f"{window_cpu:.1f} s" + (" (training included)" if args.mode == "thread" else "")
    )
    print(
        f"Idle window, {args.idle_seconds:g} s: blocked beyond the tick p50 "
        f"{statistics.median(idle):.1f} ms, p99 {percentile(idle, 0.99):.1f} ms, "
        f"max {max(idle):.1f} ms (the machine's noise floor)"
    )
    print(f"During training, event-loop ticks every {TICK_MS} ms: {len(gaps)} ticks")
    p99, worst = percentile(lateness, 0.99), max(lateness)
    met = p99 <= TARGET_P99_MS and worst <= TARGET_MAX_MS
    print(
        f"  blocked beyond the tick: p50 {statistics.median(lateness):.1f} ms, "
        f"p99 {p99:.1f} ms, max {worst:.1f} ms (target p99 <= {TARGET_P99_MS:g} ms, "
        f"max <= {TARGET_MAX_MS:g} ms: {'met' if met else 'NOT met'})"
    )
    if args.worst:
        late = sorted(
            ((gap - TICK_MS, at) for at, gap in ticks[1:] if first <= at <= marks.get("end", at)),
            reverse=True,
        )[: args.worst]
        for blocked, at in late:
            near = min(epoch_ends, key=lambda t: abs(t - at), default=None)
            where = (
                f", {1000 * (at - near):+.0f} ms from an epoch's end" if near is not None else ""
            )
            print(f"  {blocked:6.1f} ms at {at - first:5.2f} s{where}")
    window.close()
    return code or (0 if met else 1)


if __name__ == "__main__":
    sys.exit(main())
