"""What every encoding of a layer's weight provides, and the pieces they share.

An encoding turns a layer request (``LayerSpec``) and the layer's weight shape into an
``EncodingPlan``: concrete options, the exact parameter count and a one-line description,
computed without building anything. From a plan it builds a *weight generator*: an
``nn.Module`` whose ``forward()`` returns the weight, with ``fit(target)`` and
``named_factors()`` (the tensors an export stores). Layers, the planner, the trainer,
checkpoints and export talk only to this interface.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from engine.errors import EncodingError, LayerSpecError  # noqa: F401 - importable here
from engine.layer_spec import LayerSpec

# A budget may be exceeded by at most this fraction when an encoding's ranks are chosen.
BUDGET_TOLERANCE = 0.05


@dataclass(frozen=True)
class EncodingPlan:
    """An encoding with every option resolved, for one weight shape."""

    encoding: str
    weight_shape: tuple[int, ...]
    options: dict[str, Any] = field(hash=False)
    params: int  # numbers that can change the weight
    detail: str  # e.g. "TT 3 cores: 4×4×16 ← 7×7×16, ranks 1-3-3-1"
    budget: int = 0  # the parameter count asked for (0: none)


class WeightGenerator(Protocol):
    """What layers, the trainer and export use of a generator (an ``nn.Module`` that an
    encoding builds); ``generator()`` is the weight."""

    def __call__(self) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def fit(self, target: torch.Tensor, steps: int = ..., lr: float = ...) -> float: ...


@runtime_checkable
class FactorGenerator(WeightGenerator, Protocol):
    """A generator that is a product of a few factors (every encoding but the ADTN)."""

    def named_factors(self) -> dict[str, torch.Tensor]:
        """The stored factors by role: what an export writes."""
        ...


class Encoding(ABC):
    """One way of writing a weight with few parameters."""

    name: str = ""

    @abstractmethod
    def plan(self, spec: LayerSpec, weight_shape: tuple[int, ...], budget: int) -> EncodingPlan:
        """Options for ``spec`` on this weight; with ``budget > 0`` chosen to match it."""

    @abstractmethod
    def build(self, plan: EncodingPlan, init_std: float) -> nn.Module:
        """A fresh weight generator whose weight has about ``init_std`` standard deviation."""

    def factor_shapes(self, weight_shape: tuple[int, ...], options: dict) -> dict[str, tuple]:
        """The shape of each stored factor (``named_factors()`` of the generator), from the
        options alone: what an export checks a file against before building anything."""
        raise NotImplementedError(self.name)

    def spec_fields(self, options: dict) -> dict[str, Any]:
        """``LayerSpec`` fields that rebuild exactly this plan (explicit ranks, no budget)."""
        raise NotImplementedError(self.name)


def matrix_shape(weight_shape: Sequence[int]) -> tuple[int, int]:
    """A weight read as a matrix: (outputs, everything else)."""
    return int(weight_shape[0]), int(math.prod(weight_shape[1:]))


def closest_within_budget(candidates, budget: int):
    """The ``(count, item)`` closest to ``budget`` among those at most 5 % above it."""
    limit = budget * (1.0 + BUDGET_TOLERANCE)
    best = None
    for count, item in candidates:
        if count > limit:
            continue
        if best is None or abs(count - budget) < abs(best[0] - budget):
            best = (count, item)
    return best


def relative_error(weight: torch.Tensor, target: torch.Tensor) -> float:
    return float((weight - target).norm() / target.norm().clamp_min(1e-30))


def refine_by_adam(generator: nn.Module, target: torch.Tensor, steps: int, lr: float) -> float:
    """Least-squares refinement of a generator's weight towards ``target``; keeps the best."""
    target = target.detach()
    norm = target.norm().clamp_min(1e-30)
    params = [p for p in generator.parameters() if p.requires_grad]
    with torch.no_grad():
        best = relative_error(generator(), target)
    best_state = [p.detach().clone() for p in params]
    if steps <= 0 or not params:
        return best
    optimiser = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            error = (generator() - target).norm() / norm
            if not torch.isfinite(error):
                break
            if error.item() < best:
                best = error.item()
                best_state = [p.detach().clone() for p in params]
            error.backward()
            optimiser.step()
            schedule.step()
    with torch.no_grad():
        for p, saved in zip(params, best_state):
            p.copy_(saved)
        return relative_error(generator(), target)


def gaussian_std(target_std: float, factors: int, summed_terms: int) -> float:
    """Entry std of ``factors`` independent Gaussian tensors whose product, summed over
    ``summed_terms`` terms, has standard deviation ``target_std``."""
    return (target_std**2 / max(1, summed_terms)) ** (1.0 / (2 * factors))


def rank_by_count(spec: LayerSpec, budget: int, per_rank: int, most: int, described: str) -> int:
    """The rank of an encoding whose count is ``rank · per_rank`` (low rank, CP): the spec's
    own, or the one closest to ``budget``; ``described`` names the weight in messages."""
    if spec.rank:
        no_budget(spec, "rank", spec.encoding)
        return int(spec.rank)
    if not budget:
        raise EncodingError(f"{described} needs a rank or a budget")
    best = closest_within_budget(((r * per_rank, r) for r in range(1, most + 1)), budget)
    if best is None:
        raise EncodingError(
            f"{described} needs at least {per_rank:,} parameters (rank 1); the budget is {budget:,}"
        )
    return best[1]


def no_budget(spec: LayerSpec, field_name: str, where: str) -> None:
    """Explicit ranks and a budget contradict each other; say so."""
    if spec.budget:
        raise EncodingError(
            f"{where}: give either {field_name} or budget, not both "
            f"({field_name} fixes the size; budget chooses it)"
        )
