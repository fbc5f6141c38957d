"""Failures in plain words: what went wrong and what the user can do about it."""

from __future__ import annotations

# Keys are the ``RunFailed.kind`` values the trainer reports, or exception class names.
_ADVICE = {
    "nan_loss": "The loss became NaN or infinite, so training stopped. The last good "
    "checkpoint is kept. Try a lower learning rate, a smaller depth, or the 'pretrained' "
    "initialisation.",
    "out_of_memory": "The device ran out of memory. Try a smaller batch size, fewer encoded "
    "layers, or the CPU.",
    "data_unavailable": "The data set is not available.",
    "DataUnavailableError": "The data set is not available.",
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


def describe_failure(kind: str | None, message: str) -> str:
    """One or two sentences for the log pane and dialogs."""
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
