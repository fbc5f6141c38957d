"""Events by type: one table from event class to hook, used by the dispatcher, the event log
and the window's drain."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from engine import events
from engine.event_log import EVENT_CLASSES, event_from_json, event_to_json
from engine.events import HOOKS, EventDispatcher, TrainerCallback


def _event_classes() -> list[type]:
    """Every event dataclass that ``engine.events`` defines."""
    return [
        cls
        for _, cls in inspect.getmembers(events, inspect.isclass)
        if cls.__module__ == events.__name__ and dataclasses.is_dataclass(cls)
    ]


def test_every_event_class_has_a_hook_and_every_hook_is_defined():
    assert set(_event_classes()) == set(HOOKS)
    assert len(set(HOOKS.values())) == len(HOOKS)  # one hook per event
    defined = {name for name in vars(TrainerCallback) if name.startswith("on_")}
    assert defined == set(HOOKS.values())
    for cls, hook in HOOKS.items():
        # a hook's annotation names its event class
        assert inspect.signature(getattr(TrainerCallback, hook)).parameters["event"].annotation in (
            cls,
            cls.__name__,
        )


def test_the_event_log_names_the_same_classes():
    assert EVENT_CLASSES == {cls.__name__: cls for cls in HOOKS}


def test_emit_calls_the_hook_of_the_events_type():
    calls = []

    class Recorder(TrainerCallback):
        def on_checkpoint(self, event):
            calls.append(("checkpoint", event))

        def on_error(self, event):
            calls.append(("error", event))

    saved = events.CheckpointSaved(1, "x.safetensors", "last")
    failed = events.RunFailed("config", "bad")
    dispatcher = EventDispatcher([Recorder(), TrainerCallback()])
    dispatcher.emit(saved)
    dispatcher.emit(failed)
    dispatcher.emit(events.RunEnded("failed", {}))  # no override: the default does nothing
    assert calls == [("checkpoint", saved), ("error", failed)]


def test_an_unregistered_event_type_is_refused():
    @dataclasses.dataclass(frozen=True)
    class EpochFinished:  # looks like an event, but is in no table
        epoch: int

    dispatcher = EventDispatcher([TrainerCallback()])
    with pytest.raises(TypeError, match="not a trainer event: EpochFinished"):
        dispatcher.emit(EpochFinished(1))
    with pytest.raises(TypeError, match="not a trainer event"):
        event_to_json(EpochFinished(1))


def test_a_misspelt_hook_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="on_epoch_ended is not a trainer hook"):

        class Typo(TrainerCallback):
            def on_epoch_ended(self, event):
                pass


def test_a_callback_must_be_a_trainer_callback():
    class Duck:
        def on_batch_end(self, event):
            pass

    with pytest.raises(TypeError, match="must be a TrainerCallback"):
        EventDispatcher([Duck()])


def test_failure_kind_round_trips_through_the_event_log():
    from engine.choices import FailureKind

    line = event_to_json(events.RunFailed(FailureKind.OUT_OF_MEMORY, "full"))
    assert '"kind":"out_of_memory"' in line
    assert event_from_json(line) == events.RunFailed(FailureKind.OUT_OF_MEMORY, "full")
