"""The names the engine, the command line and the window share: one place, no PyTorch.

Every choice a user makes (activation, layout, encoding, optimiser, …) and every name the
engine writes (metric columns, failure kinds) is spelled here once; the other modules import it.
"""

from __future__ import annotations

from enum import Enum


class FailureKind(str, Enum):
    """Why a run failed; stored in ``summary.json`` and carried by ``RunFailed``."""

    NAN_LOSS = "nan_loss"
    OUT_OF_MEMORY = "out_of_memory"
    DATA_UNAVAILABLE = "data_unavailable"
    CONFIG = "config"
    DEVICE = "device"
    CHECKPOINT = "checkpoint"
    DISTRIBUTED = "distributed"
    EXPORT = "export"  # an export or bundle file that could not be written or read
    SIGNAL = "signal"  # a data-parallel launcher told to end: the run is "stopped", not failed
    ERROR = "error"  # an unexpected exception: an engine bug, logged with its traceback
