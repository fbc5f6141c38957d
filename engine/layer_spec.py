"""One layer to encode, as a run configuration names it. Imports no PyTorch.

A layer gets an *encoding* (how its weight is written with few parameters) and that
encoding's options. ``budget`` asks for a parameter count instead of explicit ranks: a number,
or ``"match:adtn"`` (the count of the ADTN of this spec's ``depth`` and ``layout`` on this
layer), so that encodings can be compared at equal size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The shared names (engine.choices), also importable from here as before.
from engine.choices import (  # noqa: F401
    ACTIVATIONS,
    DEFAULT_INDEX_ORDER,
    ENCODING_LABELS,
    ENCODINGS,
    GATE_INITS,
    INDEX_ORDERS,
    LAYOUTS,
    MATCH_ADTN,
)
from engine.errors import LayerSpecError
from engine.limits import MAX_DEPTH

MAX_TT_CORES = 8


@dataclass
class LayerSpec:
    """One layer to encode, and how.

    ``depth``, ``activation``, ``layout``, ``index_order`` and ``gate_init`` are the ADTN's
    options (``depth`` and ``layout`` also fix the size of ``budget = "match:adtn"``).
    ``ranks`` are a TT-matrix's inner bond ranks or a Tucker decomposition's per-mode ranks;
    ``factors`` the TT-matrix's factorisation of the output and input sizes
    (``[[4, 4, 4, 4], [4, 7, 7, 4]]``); ``cores`` the number of TT cores when ``factors`` is
    not given (0: chosen); ``rank`` the rank of ``lowrank`` and ``cp``. Options left empty are
    chosen from ``budget``, which defaults to the ADTN's count for the encodings other than
    ``adtn``.
    """

    name: str
    depth: int = 1
    activation: str = "relu"
    layout: str = "brick"
    encoding: str = "adtn"
    ranks: list[int] = field(default_factory=list)
    factors: list[list[int]] = field(default_factory=list)
    cores: int = 0
    rank: int = 0
    budget: int | str = 0
    index_order: str = DEFAULT_INDEX_ORDER
    gate_init: str = "orthogonal"

    def validate(self, where: str = "layer") -> LayerSpec:
        """Raise ``LayerSpecError`` naming the first bad field (``where.field``)."""
        if not isinstance(self.name, str) or not self.name:
            raise LayerSpecError(f"{where}.name must be a layer name such as 'fc1'")
        _choice(f"{where}.encoding", self.encoding, ENCODINGS)
        _whole(f"{where}.depth", self.depth, 1, MAX_DEPTH)
        _choice(f"{where}.activation", self.activation, ACTIVATIONS)
        _choice(f"{where}.layout", self.layout, LAYOUTS)
        _choice(f"{where}.index_order", self.index_order, INDEX_ORDERS)
        _choice(f"{where}.gate_init", self.gate_init, GATE_INITS)
        if not isinstance(self.ranks, list):
            raise LayerSpecError(
                f"{where}.ranks must be a list of whole numbers, not {self.ranks!r}"
            )
        for index, rank in enumerate(self.ranks):
            _whole(f"{where}.ranks[{index}]", rank, 1, 1 << 20)
        if not isinstance(self.factors, list):
            raise LayerSpecError(
                f"{where}.factors must be a list of two lists, not {self.factors!r}"
            )
        if self.factors:
            if len(self.factors) != 2 or not all(isinstance(f, list) for f in self.factors):
                raise LayerSpecError(
                    f"{where}.factors must be two lists, output and input factors, such as "
                    f"[[4, 4, 4, 4], [4, 7, 7, 4]] (got {self.factors!r})"
                )
            if len(self.factors[0]) != len(self.factors[1]):
                raise LayerSpecError(
                    f"{where}.factors: the output and input lists need the same number of "
                    f"factors (got {len(self.factors[0])} and {len(self.factors[1])})"
                )
            for side, values in zip(("output", "input"), self.factors):
                for index, value in enumerate(values):
                    _whole(f"{where}.factors ({side} factor {index + 1})", value, 1, 1 << 20)
        _whole(f"{where}.cores", self.cores, 0, MAX_TT_CORES)
        if self.cores == 1:
            raise LayerSpecError(f"{where}.cores must be 0 (chosen) or at least 2 (got 1)")
        _whole(f"{where}.rank", self.rank, 0, 1 << 20)
        budget_value(self.budget, f"{where}.budget")
        if self.encoding == "tt" and self.ranks and self.factors:
            if len(self.ranks) != len(self.factors[0]) - 1:
                raise LayerSpecError(
                    f"{where}.ranks: a TT-matrix of {len(self.factors[0])} cores has "
                    f"{len(self.factors[0]) - 1} inner ranks (got {len(self.ranks)})"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values, leaving out most options that are at their defaults (short TOML)."""
        data: dict[str, Any] = {"name": self.name}
        defaults = LayerSpec("")
        for key in (
            "depth",
            "activation",
            "layout",
            "encoding",
            "ranks",
            "factors",
            "cores",
            "rank",
            "budget",
            "index_order",
            "gate_init",
        ):
            value = getattr(self, key)
            # The index order is always written for an ADTN: its default changed once, and a
            # file that says it reads the same whatever the default.
            always = key in ("depth", "activation", "layout") or (
                key == "index_order" and self.encoding == "adtn"
            )
            if always or value != getattr(defaults, key):
                data[key] = (
                    [list(v) for v in value]
                    if key == "factors"
                    else (list(value) if isinstance(value, list) else value)
                )
        return data


def budget_value(budget: Any, where: str = "budget") -> int | str:
    """``budget`` checked: 0 (none), a positive parameter count, or ``"match:adtn"``."""
    if isinstance(budget, bool):
        raise LayerSpecError(f"{where} must be a parameter count or {MATCH_ADTN!r}, not {budget!r}")
    if isinstance(budget, int):
        if budget < 0:
            raise LayerSpecError(
                f"{where} must be 0 (none) or a positive parameter count (got {budget})"
            )
        return budget
    if isinstance(budget, str):
        text = budget.strip()
        if text == MATCH_ADTN:
            return text
        if text.isdigit():
            return int(text)
    raise LayerSpecError(
        f"{where} must be a parameter count or {MATCH_ADTN!r} (the ADTN's count), not {budget!r}"
    )


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LayerSpecError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def _whole(name: str, value: Any, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayerSpecError(f"{name} must be a whole number, not {value!r}")
    if value < minimum:
        raise LayerSpecError(f"{name} must be at least {minimum} (got {value})")
    if value > maximum:
        raise LayerSpecError(f"{name} must be at most {maximum} (got {value})")
