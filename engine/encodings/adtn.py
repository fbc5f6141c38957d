"""The deep tensor network of the paper (``engine.adtn.ADTN``) as an encoding."""

from __future__ import annotations

from torch import nn

from engine.adtn import ADTN
from engine.encodings.base import Encoding, EncodingError, EncodingPlan, closest_within_budget
from engine.layer_spec import LayerSpec
from engine.limits import MAX_DEPTH


def adtn_count(weight_shape: tuple[int, ...], depth: int, layout: str) -> int:
    """The ADTN's parameters (stored local tensors and the scale); EncodingError if none fits."""
    try:
        return ADTN.count_parameters(weight_shape, depth, layout)
    except ValueError as exc:
        raise EncodingError(str(exc)) from None


class ADTNEncoding(Encoding):
    name = "adtn"

    def plan(self, spec: LayerSpec, weight_shape: tuple[int, ...], budget: int) -> EncodingPlan:
        depth = int(spec.depth)
        if budget:
            counts = (
                (adtn_count(weight_shape, d, spec.layout), d) for d in range(1, MAX_DEPTH + 1)
            )
            best = closest_within_budget(counts, budget)
            if best is None:
                smallest = adtn_count(weight_shape, 1, spec.layout)
                raise EncodingError(
                    f"an ADTN on a {'×'.join(map(str, weight_shape))} weight needs at least "
                    f"{smallest:,} parameters (depth 1); the budget is {budget:,}"
                )
            depth = best[1]
        params = adtn_count(weight_shape, depth, spec.layout)
        options = {
            "depth": depth,
            "activation": spec.activation,
            "layout": spec.layout,
            "index_order": spec.index_order,
            "gate_init": spec.gate_init,
        }
        detail = f"depth {depth}, {spec.layout}, {spec.activation}"
        if spec.index_order != "rows_first":
            detail += f", {spec.index_order}"
        if spec.gate_init != "orthogonal":
            detail += f", {spec.gate_init.replace('_', '-')} init"
        return EncodingPlan(self.name, tuple(weight_shape), options, params, detail, budget)

    def build(self, plan: EncodingPlan, init_std: float) -> nn.Module:
        o = plan.options
        # Only options away from their defaults are passed: plans stored before they existed
        # still build.
        extra = {}
        if o.get("index_order", "rows_first") != "rows_first":
            extra["index_order"] = o["index_order"]
        if o.get("gate_init", "orthogonal") != "orthogonal":
            extra["init"] = o["gate_init"]
        return ADTN(
            plan.weight_shape,
            o["depth"],
            o["activation"],
            o["layout"],
            init_std=init_std,
            block_bits=o.get("block_bits"),
            **extra,
        )
