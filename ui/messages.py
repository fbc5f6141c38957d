"""Failures in plain words: what went wrong and what the user can do about it."""

from __future__ import annotations

import re

from engine.choices import FailureKind
from engine.errors import ImageFolderError, failure_kind
from engine.logging_setup import app_log_file

# Advice for the ``RunFailed.kind`` values the trainer reports (and the kinds of the engine's
# errors). An unexpected error (``FailureKind.ERROR``) has none: its message says what it was.
_ADVICE = {
    FailureKind.NAN_LOSS: "The loss became NaN or infinite, so training stopped. The last "
    "good checkpoint is kept. Try a lower learning rate, a smaller depth, or the 'pretrained' "
    "initialisation.",
    FailureKind.OUT_OF_MEMORY: "The device ran out of memory. Try a smaller batch size, fewer "
    "encoded layers, or the CPU.",
    FailureKind.DATA_UNAVAILABLE: "The data set is missing or unreadable; nothing was "
    "downloaded. Open New compression ▸ Network and data: click Download to fetch it, or "
    "Browse… to the folder that holds a copy. Then start the run again.",
    FailureKind.DEVICE: "The chosen device cannot be used.",
    FailureKind.CONFIG: "The run configuration is not valid.",
}


def _kind_of(text: str) -> FailureKind | None:
    """What an unclassified message is about, when its words say so."""
    lowered = text.lower()
    if "out of memory" in lowered:
        return FailureKind.OUT_OF_MEMORY
    if "nan" in lowered.split() or "not finite" in lowered or "non-finite" in lowered:
        return FailureKind.NAN_LOSS
    return None


# Sentences of engine messages written for the command line (flags, environment variables,
# config keys); the window says what to click instead.
_COMMAND_LINE_WORDS = ("--data-root", "ADTN_DATA_DIR", "download = true", "data_root in")


def _for_the_window(message: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", message.strip())
    kept = [s for s in sentences if not any(word in s for word in _COMMAND_LINE_WORDS)]
    return " ".join(kept)


def _as_kind(kind: FailureKind | str | None) -> FailureKind | None:
    try:
        return FailureKind(kind) if kind else None
    except ValueError:
        return None


def describe_failure(kind: FailureKind | str | None, message: str) -> str:
    """One or two sentences for the log pane and dialogs."""
    known = _as_kind(kind)
    if known is FailureKind.DATA_UNAVAILABLE:
        message = _for_the_window(message)
    if known not in _ADVICE:
        known = _kind_of(f"{kind or ''} {message}")
    advice = _ADVICE.get(known) if known is not None else None
    if advice is None:
        return message or "The run failed for an unknown reason."
    if message and message not in advice:
        return f"{advice}\n{message}"
    return advice


def describe_exception(exc: BaseException) -> str:
    """An exception raised by an engine call, as the user should read it: an engine error
    by its kind, a file the system could not use in the system's words, anything else as
    an unexpected error (its traceback is in the log file; see ``ui.workers``)."""
    kind = failure_kind(exc)
    if isinstance(exc, ImageFolderError):  # a folder the user chose: the advice to download
        return str(exc)  # does not apply, the message names the folder or file
    if kind is not FailureKind.ERROR or isinstance(exc, OSError):
        return describe_failure(kind, str(exc))
    text = f"Unexpected error: {type(exc).__name__}: {exc}"
    where = app_log_file()
    return describe_failure(kind, text + (f" (details in {where})" if where else ""))
