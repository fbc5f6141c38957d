"""Encodings of a layer's weight: the ADTN and the shallow tensor networks beside it.

``plan_layer(spec, weight_shape)`` resolves a layer request into an ``EncodingPlan`` (exact
count, chosen ranks) without building; ``build_generator(plan, init_std)`` builds the module
that generates the weight. Every caller (planner, layers, trainer, export, window) goes
through these two functions and never branches on the encoding.
"""

from __future__ import annotations

import math

import torch

from engine.choices import ENCODINGS, MATCH_ADTN
from engine.encodings.adtn import ADTNEncoding, adtn_count
from engine.encodings.base import (
    BUDGET_TOLERANCE,
    Encoding,
    EncodingError,
    EncodingPlan,
    FactorGenerator,
    WeightGenerator,
)
from engine.encodings.lowrank import LowRankEncoding
from engine.encodings.tt import TTEncoding
from engine.encodings.tucker_cp import CPEncoding, TuckerEncoding
from engine.layer_spec import LayerSpec, budget_value

__all__ = [
    "BUDGET_TOLERANCE",
    "ENCODINGS",
    "Encoding",
    "EncodingError",
    "EncodingPlan",
    "FactorGenerator",
    "WeightGenerator",
    "build_generator",
    "get_encoding",
    "plan_layer",
    "resolve_budget",
]

_REGISTRY: dict[str, Encoding] = {
    e.name: e
    for e in (ADTNEncoding(), TTEncoding(), LowRankEncoding(), TuckerEncoding(), CPEncoding())
}
assert tuple(_REGISTRY) == ENCODINGS


def get_encoding(name: str) -> Encoding:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EncodingError(
            f"encoding must be one of {', '.join(ENCODINGS)} (got {name!r})"
        ) from None


def _has_explicit_size(spec: LayerSpec) -> bool:
    return bool(spec.ranks if spec.encoding in ("tt", "tucker") else spec.rank)


def resolve_budget(spec: LayerSpec, weight_shape: tuple[int, ...]) -> int:
    """The parameter count asked for: ``budget`` as a number, ``"match:adtn"`` as the count of
    the ADTN of the spec's depth and layout; for encodings other than the ADTN with no explicit
    ranks, that ADTN's count too (so switching encodings keeps the size). 0: none."""
    budget = budget_value(spec.budget)
    if budget == MATCH_ADTN or (
        not budget and spec.encoding != "adtn" and not _has_explicit_size(spec)
    ):
        return adtn_count(tuple(weight_shape), int(spec.depth), spec.layout)
    return int(budget)


def plan_layer(spec: LayerSpec, weight_shape: tuple[int, ...]) -> EncodingPlan:
    """The resolved encoding of one layer; ``EncodingError`` says why it cannot be."""
    return get_encoding(spec.encoding).plan(
        spec, tuple(weight_shape), resolve_budget(spec, weight_shape)
    )


def build_generator(plan: EncodingPlan, init_std: float):
    """A fresh module whose ``forward()`` returns the weight of ``plan.weight_shape``, with
    standard deviation ``init_std`` (the ADTN normalises itself; a product of a few random
    factors is rescaled once, since with small ranks its spread is far from its expectation)."""
    generator = get_encoding(plan.encoding).build(plan, init_std)
    if isinstance(generator, FactorGenerator):
        with torch.no_grad():
            spread = float(generator().std())
            if spread > 0 and math.isfinite(spread):
                next(iter(generator.named_factors().values())).mul_(init_std / spread)
    return generator
