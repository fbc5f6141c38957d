"""Choosing layers of any model by name pattern or by kind and size.

Names are the dotted module names ``engine.describe_layers`` lists (``layer1.0.conv1``,
``fc``). A pattern list is comma-separated shell patterns (``"fc,layer4.*"``); a pattern
that matches no encodable layer is an error that names it, so a typo never silently
compresses less than asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from torch import nn

from engine.errors import LayerSpecError


def split_patterns(patterns: str | Iterable[str]) -> list[str]:
    """``"fc, layer4.*"`` or ``["fc", "layer4.*"]`` → ``["fc", "layer4.*"]``."""
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    return [item.strip() for item in items if item and item.strip()]


def select_layer_names(infos: Sequence, patterns: str | Iterable[str]) -> list[str]:
    """Names of the encodable layers among ``infos`` (``LayerInfo`` rows) that match any of
    ``patterns``, in model order. ``LayerSpecError`` (a ``ValueError``) for an empty pattern
    list, or a pattern that matches nothing (the message lists a few layer names to choose
    from)."""
    wanted = split_patterns(patterns)
    if not wanted:
        raise LayerSpecError("no layer pattern given; name layers like 'fc' or 'layer4.*'")
    encodable = [info for info in infos if info.encodable]
    chosen: list[str] = []
    for pattern in wanted:
        matches = [info.name for info in encodable if fnmatchcase(info.name, pattern)]
        if not matches:
            blocked = [
                info for info in infos if not info.encodable and fnmatchcase(info.name, pattern)
            ]
            if blocked:
                raise LayerSpecError(
                    f"layer pattern {pattern!r} matches only layers that "
                    f"cannot be encoded ({blocked[0].name}: "
                    f"{blocked[0].reason})"
                )
            sample = ", ".join(info.name for info in encodable[:8])
            more = " ..." if len(encodable) > 8 else ""
            raise LayerSpecError(
                f"layer pattern {pattern!r} matches no layer of the model "
                f"(its layers: {sample}{more})"
            )
        chosen += [name for name in matches if name not in chosen]
    order = {info.name: index for index, info in enumerate(infos)}
    return sorted(chosen, key=order.__getitem__)


def select_layers(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """``select_layer_names`` on the layers of ``model``."""
    from engine.compression import describe_layers

    return select_layer_names(describe_layers(model), patterns)


def linear_layer_names(infos: Sequence) -> list[str]:
    """Every encodable linear layer (the wizard's "all linear layers")."""
    return [info.name for info in infos if info.encodable and info.kind == "linear"]


def conv_layer_names(infos: Sequence, min_params: int = 0) -> list[str]:
    """Every encodable convolution with at least ``min_params`` dense parameters."""
    return [
        info.name
        for info in infos
        if info.encodable and info.kind == "conv2d" and info.dense_params >= min_params
    ]


def parent_name(layer_name: str) -> str:
    """The module that holds a layer (``layer1.0`` for ``layer1.0.conv1``; "" at the top)."""
    return layer_name.rpartition(".")[0]


def group_by_parent(infos: Sequence) -> list[tuple[str, list]]:
    """``infos`` grouped by parent module, groups in model order (for long layer tables)."""
    groups: dict[str, list] = {}
    for info in infos:
        groups.setdefault(parent_name(info.name), []).append(info)
    return list(groups.items())
