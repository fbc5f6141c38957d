"""The two failures export can report to a user."""

from __future__ import annotations


class BundleError(ValueError):
    """A file that cannot be trusted or read: truncated, corrupted, edited or hostile."""


class ExportError(RuntimeError):
    """An export that could not be completed (nothing it wrote is left behind)."""
