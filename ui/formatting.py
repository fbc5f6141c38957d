"""How numbers read in tables and labels (one place, so every view agrees)."""

from __future__ import annotations

import math

# Sizes in bytes read the same in the window and on the command line:
# ``engine.units.format_bytes`` (torch-free, so the CLI needs no Qt for it).


def format_count(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{int(value):,}"


def format_ratio(value: float | None) -> str:
    if value is None or math.isnan(value) or math.isinf(value):
        return "–"
    return f"{value:,.1f}×" if value < 1000 else f"{value:,.0f}×"


def format_percent(fraction: float | None) -> str:
    if fraction is None or math.isnan(fraction):
        return "–"
    return f"{100.0 * fraction:.2f} %"


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
