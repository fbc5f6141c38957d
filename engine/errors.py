"""The engine's exceptions: one hierarchy, no PyTorch.

Every failure the user can act on (a bad configuration, a layer that cannot be encoded, a
missing data set, a device this machine lacks, ...) is an ``EngineError`` whose message is one
clear line, and whose ``kind`` says how a run that meets it failed. Anything else that escapes
the engine (a ``KeyError``, a plain ``ValueError`` from deep inside) is a bug: interfaces report
it as ``FailureKind.ERROR`` and log its traceback.

The classes are defined here, in one place, and the modules that raise them import them under
the same names (``engine.config.ConfigError``, ``engine.data.DataUnavailableError``, ...).
Where callers catch ``ValueError`` or ``RuntimeError`` today, that stays a second base.
"""

from __future__ import annotations

from engine.choices import FailureKind


class EngineError(Exception):
    """A failure the user can act on; ``str(error)`` says what is wrong and what to do."""

    kind: FailureKind = FailureKind.CONFIG


# -- what was asked for -------------------------------------------------------------------


class ConfigError(EngineError, ValueError):
    """A run configuration that cannot be used; the message names the field."""


class LayerSpecError(EngineError, ValueError):
    """A layer request whose field is bad; the message names the field."""


class EncodingError(LayerSpecError):
    """A layer that cannot be encoded as asked (too small, a budget no rank fits, ...)."""


class ModelSourceError(EngineError, ValueError):
    """A model name or file that cannot give a model; the message says what to fix."""


class WeightsError(EngineError, ValueError):
    """Weights that cannot be read or do not fit the model; the message names the file."""


class CompareError(EngineError, ValueError):
    """A comparison that cannot be run as asked; the message says which option is wrong."""


# -- what the machine or the disk holds ---------------------------------------------------


class DataUnavailableError(EngineError, RuntimeError):
    """A data set that is neither on disk nor downloadable; the message says what to do."""

    kind = FailureKind.DATA_UNAVAILABLE


class ImageFolderError(DataUnavailableError, ValueError):
    """An image folder that cannot be a data set; the message names the folder or file.
    (The trainer reports it as missing data; callers that validate input catch ValueError.)"""


class DeviceError(EngineError, RuntimeError):
    """A requested device that this machine does not have."""

    kind = FailureKind.DEVICE


class DistributedSetupError(EngineError, RuntimeError):
    """The environment describes a distributed run that cannot be set up."""

    kind = FailureKind.DISTRIBUTED


class CheckpointError(EngineError, RuntimeError):
    """A checkpoint that is missing, corrupt or from an incompatible version."""

    kind = FailureKind.CHECKPOINT


class RunFolderBusy(CheckpointError):
    """Another process trains in this run folder (a ``CheckpointError``: the run's files are
    not this process's to write, and interfaces show it as one line)."""


# -- what happened during training --------------------------------------------------------


class NonFiniteLoss(EngineError, RuntimeError):
    """The loss became NaN or infinite."""

    kind = FailureKind.NAN_LOSS


# -- files written and read by export -----------------------------------------------------


class BundleError(EngineError, ValueError):
    """A file that cannot be trusted or read: truncated, corrupted, edited or hostile."""

    kind = FailureKind.EXPORT


class ExportError(EngineError, RuntimeError):
    """An export that could not be completed (nothing it wrote is left behind)."""

    kind = FailureKind.EXPORT


def failure_kind(exc: BaseException) -> FailureKind:
    """How a failure with ``exc`` is reported: its class's kind, or ``ERROR`` (a bug)."""
    return exc.kind if isinstance(exc, EngineError) else FailureKind.ERROR
