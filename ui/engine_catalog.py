"""What the engine offers (presets, networks, data sets, devices), loaded off the UI thread.

Importing the engine imports PyTorch, which takes seconds; the window shows first and this
loads in a background task right after.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceChoice:
    id: str  # what RunConfig.device takes: "auto", "cpu", "cuda:0", "mps"
    label: str  # what the device combo shows


@dataclass(frozen=True)
class EngineCatalog:
    presets: tuple[tuple[str, str], ...]  # (name, description)
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    devices: tuple[DeviceChoice, ...]
    default_device: str  # what "auto" resolves to, e.g. "cuda:0 (NVIDIA H100)" or "cpu"
    versions: dict[str, str] = field(default_factory=dict)

    def device_label(self, device_id: str) -> str:
        for choice in self.devices:
            if choice.id == device_id:
                return choice.label
        return device_id


def load_catalog() -> EngineCatalog:
    """Import the engine and list what it offers (blocking: call from a worker)."""
    from engine import presets
    from engine.data import DATASET_NAMES
    from engine.models import MODEL_NAMES
    from engine.trainer import describe_device, resolve_device

    described = []
    for name in presets.list_presets():
        description = getattr(presets.load_preset(name), "description", "")
        described.append((name, description))
    return EngineCatalog(presets=tuple(described), models=tuple(MODEL_NAMES),
                         datasets=tuple(DATASET_NAMES), devices=_devices(),
                         default_device=describe_device(resolve_device("auto")),
                         versions=_versions())


def _devices() -> tuple[DeviceChoice, ...]:
    """Every device a run can use (asked of the engine in a worker, never in a widget)."""
    from engine.trainer import list_devices

    return tuple(DeviceChoice(value, label) for value, label in list_devices())


def _versions() -> dict[str, str]:
    import platform

    import PySide6
    import torch

    return {"Python": platform.python_version(), "PyTorch": torch.__version__,
            "Qt": PySide6.QtCore.qVersion(), "PySide6": PySide6.__version__}
