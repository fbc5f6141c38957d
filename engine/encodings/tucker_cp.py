"""Tucker and CP decompositions of the weight tensor, through TensorLy-Torch.

Tucker: a core of shape ``ranks`` and one factor matrix ``(d_i, r_i)`` per mode:
``Π r_i + Σ d_i r_i`` numbers. CP: ``R`` weights and one ``(d_i, R)`` factor per mode:
``R (1 + Σ d_i)`` numbers. A linear layer's weight has two modes, a convolution's four.
"""

from __future__ import annotations

import math

import tltorch
import torch
from torch import nn

from engine.encodings.base import (
    Encoding,
    EncodingError,
    EncodingPlan,
    closest_within_budget,
    gaussian_std,
    no_budget,
    rank_by_count,
    refine_by_adam,
    relative_error,
)
from engine.layer_spec import LayerSpec


def tucker_count(shape, ranks) -> int:
    return math.prod(ranks) + sum(d * r for d, r in zip(shape, ranks))


def cp_count(shape, rank: int) -> int:
    return rank * (1 + sum(shape))


class FactorizedWeight(nn.Module):
    """A weight held by a TensorLy-Torch factorised tensor (Tucker or CP)."""

    def __init__(self, weight_shape, factorization: str, rank, init_std: float) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in weight_shape)
        self.factorization = factorization
        self.tensor = tltorch.FactorizedTensor.new(
            self.shape, rank=rank, factorization=factorization
        )
        with torch.no_grad():
            if factorization == "cp":
                self.tensor.weights.fill_(1.0)
                std = gaussian_std(init_std, len(self.shape), rank)
            else:
                std = gaussian_std(init_std, len(self.shape) + 1, math.prod(rank))
            for factor in self.tensor.factors:
                factor.normal_(0.0, std)
            if factorization == "tucker":
                self.tensor.core.normal_(0.0, std)

    def forward(self) -> torch.Tensor:
        return self.tensor.to_tensor()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fit(self, target: torch.Tensor, steps: int = 0, lr: float = 0.01) -> float:
        """TensorLy's decomposition (HOOI for Tucker, ALS for CP), then optional Adam steps."""
        ref = next(self.parameters())
        target = target.detach().to(ref)
        with torch.no_grad():
            self.tensor.init_from_tensor(target)
        if steps > 0:
            return refine_by_adam(self, target, steps, lr)
        with torch.no_grad():
            return relative_error(self(), target)

    def named_factors(self) -> dict[str, torch.Tensor]:
        named = {f"factor_{i}": f for i, f in enumerate(self.tensor.factors)}
        if self.factorization == "tucker":
            named["core"] = self.tensor.core
        else:
            named["weights"] = self.tensor.weights
        return named


class TuckerEncoding(Encoding):
    name = "tucker"

    def plan(self, spec: LayerSpec, weight_shape: tuple[int, ...], budget: int) -> EncodingPlan:
        shape = tuple(int(d) for d in weight_shape)
        if spec.ranks:
            no_budget(spec, "ranks", "tucker")
            if len(spec.ranks) != len(shape):
                raise EncodingError(
                    f"ranks: a Tucker decomposition of a {len(shape)}-mode weight "
                    f"needs {len(shape)} ranks (got {len(spec.ranks)})"
                )
            ranks = [min(int(r), d) for r, d in zip(spec.ranks, shape)]
        else:
            if not budget:
                raise EncodingError("a Tucker layer needs ranks or a budget")
            # The same fraction of every mode; every rank of every mode is tried as the
            # fraction's anchor, so no size is skipped.
            candidates = {}
            for fraction in sorted({r / d for d in shape for r in range(1, d + 1)}):
                ranks_f = tuple(max(1, min(d, round(fraction * d))) for d in shape)
                candidates[ranks_f] = tucker_count(shape, ranks_f)
            best = closest_within_budget(((c, r) for r, c in candidates.items()), budget)
            if best is None:
                raise EncodingError(
                    f"a Tucker decomposition of a {'×'.join(map(str, shape))} weight needs at "
                    f"least {tucker_count(shape, [1] * len(shape)):,} parameters; the budget is "
                    f"{budget:,}"
                )
            ranks = list(best[1])
        params = tucker_count(shape, ranks)
        detail = f"Tucker ranks {'×'.join(map(str, ranks))}"
        return EncodingPlan(self.name, shape, {"ranks": list(ranks)}, params, detail, budget)

    def factor_shapes(self, weight_shape, options) -> dict[str, tuple]:
        ranks = options["ranks"]
        shapes = {f"factor_{i}": (d, r) for i, (d, r) in enumerate(zip(weight_shape, ranks))}
        return shapes | {"core": tuple(ranks)}

    def spec_fields(self, options) -> dict:
        return {"ranks": list(options["ranks"])}

    def build(self, plan: EncodingPlan, init_std: float) -> nn.Module:
        return FactorizedWeight(plan.weight_shape, "tucker", list(plan.options["ranks"]), init_std)


class CPEncoding(Encoding):
    name = "cp"

    def plan(self, spec: LayerSpec, weight_shape: tuple[int, ...], budget: int) -> EncodingPlan:
        shape = tuple(int(d) for d in weight_shape)
        per_rank = 1 + sum(shape)
        rank = rank_by_count(
            spec,
            budget,
            per_rank,
            max(1, budget // per_rank + 1),
            f"a CP decomposition of a {'×'.join(map(str, shape))} weight",
        )
        params = cp_count(shape, rank)
        return EncodingPlan(self.name, shape, {"rank": rank}, params, f"CP rank {rank}", budget)

    def factor_shapes(self, weight_shape, options) -> dict[str, tuple]:
        rank = options["rank"]
        shapes = {f"factor_{i}": (d, rank) for i, d in enumerate(weight_shape)}
        return shapes | {"weights": (rank,)}

    def spec_fields(self, options) -> dict:
        return {"rank": int(options["rank"])}

    def build(self, plan: EncodingPlan, init_std: float) -> nn.Module:
        return FactorizedWeight(plan.weight_shape, "cp", int(plan.options["rank"]), init_std)
