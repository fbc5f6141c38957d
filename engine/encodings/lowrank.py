"""Low rank: the weight, read as a matrix ``(outputs, inputs)``, is ``U · V`` with inner rank
``r``: ``r · (outputs + inputs)`` numbers."""

from __future__ import annotations

import torch
from torch import nn

from engine.encodings.base import (
    Encoding,
    EncodingPlan,
    gaussian_std,
    matrix_shape,
    rank_by_count,
    refine_by_adam,
    relative_error,
)
from engine.layer_spec import LayerSpec


class LowRankWeight(nn.Module):
    def __init__(self, weight_shape, rank: int, init_std: float) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in weight_shape)
        out, inputs = matrix_shape(self.shape)
        std = gaussian_std(init_std, 2, rank)
        self.U = nn.Parameter(torch.randn(out, rank) * std)
        self.V = nn.Parameter(torch.randn(rank, inputs) * std)

    def forward(self) -> torch.Tensor:
        return (self.U @ self.V).reshape(self.shape)

    def num_parameters(self) -> int:
        return self.U.numel() + self.V.numel()

    def fit(self, target: torch.Tensor, steps: int = 0, lr: float = 0.01) -> float:
        """The truncated SVD (the best rank-r approximation), split evenly between U and V."""
        matrix = target.detach().reshape(matrix_shape(self.shape)).to(self.U)
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        r = self.U.shape[1]
        root = s[:r].sqrt()
        with torch.no_grad():
            self.U.zero_()
            self.V.zero_()
            k = root.numel()
            self.U[:, :k] = (u[:, :r] * root).to(self.U)
            self.V[:k] = (root.unsqueeze(1) * vh[:r]).to(self.V)
        if steps > 0:
            return refine_by_adam(self, target.to(matrix), steps, lr)
        with torch.no_grad():
            return relative_error(self(), target.to(matrix))

    def named_factors(self) -> dict[str, torch.Tensor]:
        return {"U": self.U, "V": self.V}


class LowRankEncoding(Encoding):
    name = "lowrank"

    def plan(self, spec: LayerSpec, weight_shape: tuple[int, ...], budget: int) -> EncodingPlan:
        out, inputs = matrix_shape(weight_shape)
        rank = rank_by_count(
            spec, budget, out + inputs, min(out, inputs), f"a low-rank {out}×{inputs} weight"
        )
        params = rank * (out + inputs)
        detail = f"rank {rank}: {out}×{rank} · {rank}×{inputs}"
        return EncodingPlan(self.name, tuple(weight_shape), {"rank": rank}, params, detail, budget)

    def factor_shapes(self, weight_shape, options) -> dict[str, tuple]:
        out, inputs = matrix_shape(weight_shape)
        return {"U": (out, options["rank"]), "V": (options["rank"], inputs)}

    def spec_fields(self, options) -> dict:
        return {"rank": int(options["rank"])}

    def build(self, plan: EncodingPlan, init_std: float) -> nn.Module:
        return LowRankWeight(plan.weight_shape, plan.options["rank"], init_std)
