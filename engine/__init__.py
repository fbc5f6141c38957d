"""The ADTN engine: PyTorch, never Qt. Its core (choices, limits, paths, layer_spec,
model_spec, metrics, events, config) imports no PyTorch either (tests/test_layering.py).

Names are resolved lazily so that ``import engine`` stays cheap (the window imports it at
start-up) and a submodule is loaded only when one of its names is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # the tensor network and its layers
    "ADTN": "engine.adtn",
    "ADTNLinear": "engine.layers",
    "ADTNConv2d": "engine.layers",
    "EncodedLinear": "engine.layers",
    "EncodedConv2d": "engine.layers",
    "encode_layer": "engine.layers",
    "plan_layer": "engine.encodings",
    "ENCODINGS": "engine.layer_spec",
    "compress": "engine.compression",
    "describe_layers": "engine.compression",
    "plan_compression": "engine.compression",
    "materialize": "engine.compression",
    "CompressionReport": "engine.compression",
    "LayerReport": "engine.compression",
    "LayerInfo": "engine.compression",
    # configuration, models, data, training
    "RunConfig": "engine.config",
    "LayerSpec": "engine.layer_spec",
    "ConfigError": "engine.config",
    "EngineError": "engine.errors",
    "build_model": "engine.models",
    "train": "engine.trainer",
    "run_compare": "engine.compare",
    "CompareRequest": "engine.compare",
    "RunControl": "engine.events",
    # export
    "load_bundle": "engine.export",
    "export_run": "engine.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
