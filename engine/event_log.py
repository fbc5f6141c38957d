"""The trainer's events as a JSON-lines file, and the control file that steers a run.

A run trained in another process (a child of the window, or the ranks of a ``torchrun`` job)
reports through ``EventLogWriter``: one JSON object per event, appended and flushed, written
by rank 0 only. ``EventLogReader`` follows the file from a given offset and turns complete
lines back into the same frozen dataclasses, so a window draws a child's run exactly as it
draws one trained in its own thread.

The opposite direction is a small JSON file, ``{"command": "run" | "pause" | "stop"}``,
replaced atomically by whoever steers the run and polled by ``FileRunControl`` between
batches (a ``stat`` per poll, the file is read only when it changed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from engine import events as _events
from engine.paths import CONTROL_FILE, EVENT_LOG_FILE, atomic_write_text

EVENT_LOG_NAME = EVENT_LOG_FILE  # the run folder's names (engine.paths.RunPaths)
CONTROL_FILE_NAME = CONTROL_FILE
COMMANDS = ("run", "pause", "stop")

# a record names its event's class; the names are those of ``engine.events.HOOKS``' classes
EVENT_CLASSES = _events.EVENT_TYPES


def event_to_json(event: Any) -> str:
    """One line of JSON (without the newline) for a trainer event."""
    _events.hook_of(event)  # TypeError for anything that is not a trainer event
    name = type(event).__name__
    data = {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    return json.dumps({"event": name, "data": data}, allow_nan=False, separators=(",", ":"))


def event_from_json(line: str) -> Any:
    """The event a line of ``event_to_json`` holds; ``ValueError`` when it holds none."""
    record = json.loads(line)
    if not isinstance(record, dict) or record.get("event") not in EVENT_CLASSES:
        raise ValueError("not an event record")
    cls = EVENT_CLASSES[record["event"]]
    data = record.get("data")
    if not isinstance(data, dict):
        raise ValueError("an event record without data")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            continue  # a field a newer writer added
        value = _restore(value)
        if isinstance(value, list) and _is_tuple_field(fields[key]):
            value = tuple(value)  # JSON has only lists
        values[key] = value
    try:  # a missing required field raises TypeError
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"bad {record['event']} record: {exc}") from None


def _is_tuple_field(field: dataclasses.Field) -> bool:
    return isinstance(field.default, tuple) or str(field.type).startswith(("tuple", "Tuple"))


def _plain(value: Any) -> Any:
    """JSON cannot hold NaN or infinity (a diverged loss); they travel as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, Enum):  # a FailureKind travels as its value
        return value.value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"} and isinstance(value["float"], str):
            return float(value["float"])
        return {key: _restore(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore(item) for item in value]
    return value


class EventLogWriter(_events.TrainerCallback):
    """A trainer callback that appends every event to a JSON-lines file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = None
        self._lock = threading.Lock()

    def _write(self, event: Any) -> None:
        line = event_to_json(event) + "\n"
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            # one write per line and a flush: a reader never sees half a line for long, and
            # a line that is cut by a crash is simply not complete (the reader skips it)
            self._file.write(line)
            self._file.flush()
            if isinstance(event, _events.RunEnded):
                self.close_locked()

    def close_locked(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    # the TrainerCallback hooks
    on_run_start = on_batch_end = on_epoch_end = on_checkpoint = _write
    on_download = on_error = on_run_end = _write


class EventLogReader:
    """Follows an event log from ``offset``: ``read()`` returns the events of the complete
    lines added since the last call. A missing file reads as no events."""

    def __init__(self, path: str | Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset
        self.skipped = 0  # lines that held no event (damaged); counted, never fatal

    @staticmethod
    def end_of(path: str | Path) -> int:
        """The current size of ``path`` (0 when missing): where a reader of new events starts."""
        try:
            return os.stat(path).st_size
        except OSError:
            return 0

    def read(self, max_bytes: int = 4 << 20) -> list[Any]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                chunk = file.read(max_bytes)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        found = []
        for line in chunk[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                found.append(event_from_json(line.decode("utf-8")))
            except (ValueError, UnicodeDecodeError):
                self.skipped += 1
        return found


# -- the control file ---------------------------------------------------------------------


def write_control(path: str | Path, command: str) -> None:
    """Ask the run that polls ``path`` to run, pause or stop (atomic replace)."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)} (got {command!r})")
    atomic_write_text(path, json.dumps({"command": command}) + "\n")


def read_control(path: str | Path) -> str:
    """The command in ``path``; "run" when the file is missing or unreadable."""
    try:
        command = json.loads(Path(path).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return "run"
    return command if command in COMMANDS else "run"


class FileRunControl(_events.RunControl):
    """A ``RunControl`` that also obeys a control file.

    The trainer asks ``stop_requested`` and ``wait_while_paused()`` between batches; each ask
    polls the file at most every ``poll_seconds`` (a ``stat``; the file is read only when it
    was replaced or changed). Requests made directly (Ctrl-C, a signal handler)
    still work. A stop in the file is final; "pause" blocks until the file says "run" or
    "stop".
    """

    def __init__(self, path: str | Path, poll_seconds: float = 0.1) -> None:
        super().__init__()
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self._stamp: tuple[int, int, int] | None = None
        self._polled_at = -math.inf

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._polled_at < self.poll_seconds:
            return
        self._polled_at = now
        try:
            info = os.stat(self.path)
            # an atomic replace makes a new inode: no change is missed at coarse mtimes
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        command = read_control(self.path) if stamp is not None else "run"
        if command == "stop":
            self.request_stop()
        elif command == "pause":
            self.pause()
        else:
            self.resume()

    @property
    def stop_requested(self) -> bool:
        self.poll()
        return super().stop_requested

    @property
    def paused(self) -> bool:
        self.poll()
        return super().paused

    def wait_while_paused(self) -> None:
        self.poll()
        while super().paused and not super().stop_requested:
            time.sleep(self.poll_seconds)
            self.poll(force=True)
