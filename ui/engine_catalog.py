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


def load_catalog(report=None) -> EngineCatalog:
    """Import the engine and list what it offers (blocking: call from a worker).
    ``report(fraction, text)``, when given, hears each step: the window shows it."""
    step = report or (lambda fraction, text: None)
    step(0.0, "Loading PyTorch…")
    import torch  # noqa: F401 (the slow part: seconds on a cold start)

    step(0.6, "Loading the engine (models, data sets, trainer)…")
    from engine import presets
    from engine.choices import DATASET_NAMES, MODEL_NAMES
    from engine.trainer import describe_device, resolve_device

    step(0.8, "Reading the presets…")
    described = []
    for name in presets.list_presets():
        description = getattr(presets.load_preset(name), "description", "")
        described.append((name, description))
    step(0.9, "Looking for GPUs…")
    step(0.95, "Listing torchvision's models…")
    models = tuple(MODEL_NAMES) + _torchvision_models()
    return EngineCatalog(
        presets=tuple(described),
        models=models,
        datasets=tuple(DATASET_NAMES),
        devices=_devices(),
        default_device=describe_device(resolve_device("auto")),
        versions=_versions(),
    )


def _torchvision_models() -> tuple[str, ...]:
    """torchvision's image classifiers as model names ("torchvision:resnet18", ...); none
    when torchvision cannot be imported (the zoo still works)."""
    try:
        from engine.model_sources import TORCHVISION_PREFIX, torchvision_names

        return tuple(TORCHVISION_PREFIX + name for name in torchvision_names())
    except ImportError:
        return ()


def _devices() -> tuple[DeviceChoice, ...]:
    """Every device a run can use (asked of the engine in a worker, never in a widget)."""
    from engine.trainer import list_devices

    return tuple(DeviceChoice(value, label) for value, label in list_devices())


def _versions() -> dict[str, str]:
    import platform

    import PySide6
    import torch

    return {
        "Python": platform.python_version(),
        "PyTorch": torch.__version__,
        "Qt": PySide6.QtCore.qVersion(),
        "PySide6": PySide6.__version__,
    }
