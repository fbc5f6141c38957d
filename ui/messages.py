"""Failures in plain words: what went wrong and what the user can do about it."""

from __future__ import annotations

import re

# Keys are the ``RunFailed.kind`` values the trainer reports, or exception class names.
_ADVICE = {
    "nan_loss": "The loss became NaN or infinite, so training stopped. The last good "
    "checkpoint is kept. Try a lower learning rate, a smaller depth, or the 'pretrained' "
    "initialisation.",
    "out_of_memory": "The device ran out of memory. Try a smaller batch size, fewer encoded "
    "layers, or the CPU.",
    "data_unavailable": "The data set is missing or unreadable; nothing was downloaded. "
    "Open New compression ▸ Network and data: click Download to fetch it, or Browse… to the "
    "folder that holds a copy. Then start the run again.",
    "device": "The chosen device cannot be used.",
    "config": "The run configuration is not valid.",
    "ConfigError": "The run configuration is not valid.",
}


def _kind_of(text: str) -> str | None:
    lowered = text.lower()
    if "out of memory" in lowered:
        return "out_of_memory"
    if "nan" in lowered.split() or "not finite" in lowered or "non-finite" in lowered:
        return "nan_loss"
    return None


# The engine's kinds under the names the window knows them by (an exception's class name).
_ALIASES = {"DataUnavailableError": "data_unavailable"}

# Sentences of engine messages written for the command line (flags, environment variables,
# config keys); the window says what to click instead.
_COMMAND_LINE_WORDS = ("--data-root", "ADTN_DATA_DIR", "download = true", "data_root in")


def _for_the_window(message: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", message.strip())
    kept = [s for s in sentences if not any(word in s for word in _COMMAND_LINE_WORDS)]
    return " ".join(kept)


def describe_failure(kind: str | None, message: str) -> str:
    """One or two sentences for the log pane and dialogs."""
    kind = _ALIASES.get(kind or "", kind)
    if kind == "data_unavailable":
        message = _for_the_window(message)
    kind = kind if kind in _ADVICE else _kind_of(f"{kind or ''} {message}")
    advice = _ADVICE.get(kind or "")
    if advice is None:
        return message or "The run failed for an unknown reason."
    if message and message not in advice:
        return f"{advice}\n{message}"
    return advice


def describe_exception(exc: BaseException) -> str:
    """An exception raised by an engine call, as the user should read it."""
    return describe_failure(type(exc).__name__, str(exc))
