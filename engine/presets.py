"""Built-in run configurations (``resources/presets/<name>.toml``), read as package data so
they work from a wheel or a frozen application as well as from a checkout."""

from __future__ import annotations

import tomllib
from importlib import resources

from engine.config import ConfigError, RunConfig

PRESET_PACKAGE = "resources"
PRESET_FOLDER = "presets"


def _preset_files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files(PRESET_PACKAGE).joinpath(PRESET_FOLDER)
    return {
        item.name.removesuffix(".toml"): item
        for item in folder.iterdir()
        if item.name.endswith(".toml")
    }


def list_presets() -> list[str]:
    """Names of the built-in presets, sorted."""
    return sorted(_preset_files())


def load_preset(name: str) -> RunConfig:
    """The validated configuration of preset ``name``; its run name defaults to ``name``."""
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(files))}")
    try:
        data = tomllib.loads(files[name].read_text(encoding="utf-8"))
        config = RunConfig.from_dict(data)
        config.validate()
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise ConfigError(f"preset {name!r} is broken: {exc}") from exc
    if not config.name:
        config.name = name
    return config
