"""The engine calls the wizard makes, each a plain function (run in a background task
where it can take a while). The UI computes nothing itself: counts come from the engine."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.choices import IMAGEFOLDER_PREFIX
from engine.config import ConfigError, RunConfig  # torch-free
from engine.layer_spec import LayerSpec

if TYPE_CHECKING:  # these load PyTorch; their functions are imported where they are called
    from engine.compression import CompressionReport, LayerInfo


@dataclass(frozen=True)
class NetworkPlan:
    """The layers of one network built for one data set, and the engine's planner for it."""

    model: str
    dataset: str
    layers: tuple[LayerInfo, ...]
    planner: Callable[[list[LayerSpec]], CompressionReport]


def inspect_network(model_name: str, dataset_name: str) -> NetworkPlan:
    """Build the (untrained) network for the data set's input shape and list its layers."""
    import torch

    from engine.compression import describe_layers, plan_compression
    from engine.data import dataset_info
    from engine.models import build_model

    info = dataset_info(dataset_name)
    arguments = (model_name, info.in_channels, info.image_size, info.num_classes)
    try:  # on the meta device: counting needs shapes only, even for a ViT-H
        with torch.device("meta"):
            model = build_model(*arguments)
    except (RuntimeError, NotImplementedError):  # a user's model doing arithmetic when built
        model = build_model(*arguments)
    return NetworkPlan(
        model_name,
        dataset_name,
        tuple(describe_layers(model)),
        functools.partial(plan_compression, model),
    )


def measured_recommendations(model: str, dataset: str) -> tuple[list[str], str | None]:
    """Which encoding measured best for this network and data set: the sentences (the
    user's own comparisons first, else this project's shipped measurement), and the encoding
    that won at the most budgets (None without measurements)."""
    from engine.paths import default_runs_root
    from engine.recommend import measured_best, recommendations

    found = recommendations(model, dataset, default_runs_root())
    return [r.sentence() for r in found], measured_best(found)


def layer_spec(**fields: Any) -> LayerSpec:  # keyword arguments: LayerSpec's own fields
    return LayerSpec(**fields)


def default_config() -> RunConfig:
    return RunConfig()


def load_preset(name: str) -> RunConfig:
    from engine.presets import load_preset as load

    return load(name)


def config_toml(config: RunConfig) -> tuple[str, str]:
    """The configuration as TOML, and the validation problem ("" when it is valid)."""
    import tomli_w

    try:
        config.validate()
        problem = ""
    except ConfigError as exc:
        problem = f"Cannot start: {exc}"
    return tomli_w.dumps(config.to_dict()), problem


def dataset_status(config: RunConfig) -> tuple[bool, str]:
    """Whether the configuration's data set is on disk, in words for the source page."""
    from engine import data_files
    from engine.data import dataset_info, resolve_data_root

    if config.dataset.startswith(IMAGEFOLDER_PREFIX):
        from engine.data import config_dataset_info

        try:
            info = config_dataset_info(config)
        except ValueError as exc:  # the folder's problem, in one line naming it
            return False, str(exc)
        return True, (
            f"✓ {info.title}: {info.num_classes} classes, {info.train_size} training "
            f"and {info.test_size} test images, "
            f"{'grayscale' if info.in_channels == 1 else 'colour'}, "
            f"{info.image_size}×{info.image_size} pixels"
        )
    info = dataset_info(config.dataset)
    if config.dataset not in data_files.FILES:
        return True, f"✓ {info.title} is generated on the fly; nothing to download."
    root = resolve_data_root(config.data_root)
    files = data_files.FILES[config.dataset]
    if not files.missing(root):
        return True, f"✓ {info.title} found in {files.location(root)}"
    return False, (
        f"{info.title} is not in {root} yet. Download it, or choose the folder that holds a copy."
    )


def download(config: RunConfig, report: Callable[[float, str], None]) -> Path:
    """Download the configuration's data set; ``report`` receives the progress."""
    from engine.data import download_dataset

    def progress(done: int, total: int) -> None:
        megabytes = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        report(done / total if total else -1.0, megabytes)

    return download_dataset(config.dataset, config.data_root or None, progress=progress)
