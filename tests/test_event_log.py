"""The event log (JSON lines) and the control file through which a parent follows and steers
a run trained in another process."""

from __future__ import annotations

import math
import threading
import time

import pytest

from engine.event_log import (
    EventLogReader,
    EventLogWriter,
    FileRunControl,
    event_from_json,
    event_to_json,
    read_control,
    write_control,
)
from engine.events import (
    BatchEnded,
    CheckpointSaved,
    DownloadProgress,
    EpochEnded,
    RunEnded,
    RunFailed,
    RunStarted,
)

EVENTS = [
    RunStarted(
        run_dir="/runs/a",
        device="cpu ×2 (gloo)",
        epochs=3,
        batches_per_epoch=4,
        compression={"layers": [{"name": "fc1", "weight_shape": [256, 784]}]},
        params_total=10,
        dense_params_total=100,
        start_epoch=2,
        train_examples=8,
        test_examples=4,
        config={"name": "a", "lr": 0.001},
        parallel="data-parallel",
    ),
    BatchEnded(
        epoch=1,
        batch=2,
        batches=4,
        loss=float("nan"),
        acc=0.5,
        examples_per_second=12.5,
        elapsed=1.0,
        eta_seconds=math.inf,
        phase="train",
        grad_norms={"fc1": 0.25},
    ),
    BatchEnded(
        epoch=1,
        batch=3,
        batches=4,
        loss=2.0,
        acc=0.5,
        examples_per_second=1.0,
        elapsed=1.0,
        eta_seconds=2.0,
        phase="pretrain",
    ),
    EpochEnded(
        epoch=1,
        train_loss=2.0,
        train_acc=0.1,
        test_loss=2.1,
        test_acc=0.2,
        best_test_acc=0.2,
        params_total=10,
        dense_params_total=100,
        seconds=0.5,
        lr=0.001,
        phase="train",
    ),
    CheckpointSaved(epoch=1, path="/runs/a/checkpoints/last.safetensors", kind="last"),
    DownloadProgress(dataset="mnist", done_bytes=5, total_bytes=0),
    RunFailed(kind="nan_loss", message="The loss became nan."),
    RunEnded(status="failed", summary={"status": "failed", "test_acc": 0.2}),
]


def same(a, b) -> bool:
    """Equality that counts NaN equal to NaN (a diverged loss travels as NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, name), getattr(b, name)) for name in a.__dataclass_fields__)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_every_event_reads_back_as_the_same_dataclass():
    for event in EVENTS:
        line = event_to_json(event)
        assert "\n" not in line and "NaN" not in line and "Infinity" not in line
        assert same(event_from_json(line), event), type(event).__name__
    with pytest.raises(TypeError):
        event_to_json(object())
    for bad in (
        '{"event": "Nope", "data": {}}',
        "[1]",
        '{"event": "RunFailed"}',
        '{"event": "RunFailed", "data": {"kind": "x"}}',
    ):
        with pytest.raises(ValueError):
            event_from_json(bad)


def test_the_reader_follows_complete_lines_only_and_skips_damaged_ones(tmp_path):
    path = tmp_path / "events.jsonl"
    reader = EventLogReader(path)
    assert reader.read() == []  # no file yet
    writer = EventLogWriter(path)
    writer.on_run_start(EVENTS[0])
    writer.on_batch_end(EVENTS[2])
    first = reader.read()
    assert [type(e).__name__ for e in first] == ["RunStarted", "BatchEnded"]
    with open(path, "a", encoding="utf-8") as raw:  # a damaged line, then half a line
        raw.write("not json\n")
        raw.write(event_to_json(EVENTS[3])[:20])
    assert reader.read() == [] and reader.skipped == 1
    with open(path, "a", encoding="utf-8") as raw:  # the rest of the half line arrives
        raw.write(event_to_json(EVENTS[3])[20:] + "\n")
    assert [type(e).__name__ for e in reader.read()] == ["EpochEnded"]
    writer.on_run_end(EVENTS[-1])  # closes the file
    assert [type(e).__name__ for e in reader.read()] == ["RunEnded"]
    # a reader that starts at the end sees only what comes later (a resumed run appends)
    late = EventLogReader(path, EventLogReader.end_of(path))
    EventLogWriter(path).on_checkpoint(EVENTS[4])
    assert [type(e).__name__ for e in late.read()] == ["CheckpointSaved"]


def test_the_control_file_pauses_resumes_and_stops(tmp_path):
    path = tmp_path / "control.json"
    assert read_control(path) == "run"  # missing: run
    with pytest.raises(ValueError):
        write_control(path, "explode")
    control = FileRunControl(path, poll_seconds=0.01)
    assert not control.paused and not control.stop_requested
    write_control(path, "pause")
    assert eventually(lambda: control.paused)  # the property reads the file by itself

    woke = threading.Event()

    def trainer() -> None:
        control.wait_while_paused()
        woke.set()

    thread = threading.Thread(target=trainer)
    thread.start()
    # held while the file says pause: an absence, which only a span of time can show
    assert not woke.wait(0.2)
    write_control(path, "run")
    assert woke.wait(5)
    thread.join()
    write_control(path, "pause")
    assert eventually(lambda: control.paused)
    path.write_text("{ damaged", encoding="utf-8")  # unreadable reads as run, never a crash
    control.poll(force=True)
    assert not control.paused and not control.stop_requested
    write_control(path, "stop")
    control.poll(force=True)
    assert control.stop_requested
    control.wait_while_paused()  # returns at once after a stop
    write_control(path, "run")  # a stop is final
    control.poll(force=True)
    assert control.stop_requested


def eventually(condition, timeout: float = 5.0) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (checked every few ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
