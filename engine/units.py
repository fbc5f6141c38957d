"""How sizes read in text: one spelling for the window, the command line and the logs.

Plain Python (no PyTorch, no Qt), so the command line and the window both import it cheaply.
"""

from __future__ import annotations

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(size: float | None) -> str:
    """``size`` bytes in binary units: "512 B", "1.5 KiB", "1,024.0 TiB"; "–" when unknown.

    Whole bytes below 1 KiB, one decimal above; the largest unit takes whatever is left.
    """
    if size is None:
        return "–"
    if size < 0:
        raise ValueError(f"a size cannot be negative (got {size})")
    value, index, last = float(size), 0, len(BYTE_UNITS) - 1
    # move up while the number would print as 1024 or more ("1,024.0 KiB" reads as "1.0 MiB")
    while index < last and (value >= 1024 or (index > 0 and round(value, 1) >= 1024)):
        value /= 1024
        index += 1
    return f"{value:,.0f} B" if index == 0 else f"{value:,.1f} {BYTE_UNITS[index]}"
