"""The two failures export can report to a user (defined with the engine's others in
``engine.errors``)."""

from __future__ import annotations

from engine.errors import BundleError, ExportError

__all__ = ["BundleError", "ExportError"]
