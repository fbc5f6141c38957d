"""Every encoding behind one interface: counts, budgets, dense parity, gradients, fitting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.compression import compress, plan_compression
from engine.encodings import EncodingError, build_generator, plan_layer
from engine.encodings.tt import balanced_factors
from engine.layer_spec import ENCODINGS, LayerSpec, LayerSpecError
from engine.layers import EncodedConv2d, EncodedLinear, encode_layer

SHAPES = [(256, 784), (10, 256), (120, 400), (84, 120), (10, 84), (16, 6, 5, 5), (4096, 512)]


def independent_count(encoding: str, shape, options) -> int:
    """The parameter count written out again from the definitions, not from the engine."""
    out, inputs = shape[0], math.prod(shape[1:])
    if encoding == "lowrank":
        return options["rank"] * out + options["rank"] * inputs
    if encoding == "cp":
        return options["rank"] + sum(d * options["rank"] for d in shape)
    if encoding == "tucker":
        return math.prod(options["ranks"]) + sum(d * r for d, r in zip(shape, options["ranks"]))
    if encoding == "tt":
        bonds = [1] + options["ranks"] + [1]
        cores = zip(options["out_factors"], options["in_factors"])
        return sum(bonds[k] * m * n * bonds[k + 1] for k, (m, n) in enumerate(cores))
    raise AssertionError(encoding)


@pytest.mark.parametrize("encoding", ["tt", "lowrank", "tucker", "cp"])
@pytest.mark.parametrize("rank", [1, 2, 5])
def test_counts_agree_with_the_definitions_and_the_built_generator(encoding, rank):
    shape = (84, 120)
    spec = {
        "tt": LayerSpec("x", encoding="tt", ranks=[rank, rank], factors=[[3, 4, 7], [4, 5, 6]]),
        "lowrank": LayerSpec("x", encoding="lowrank", rank=rank),
        "tucker": LayerSpec("x", encoding="tucker", ranks=[rank, rank + 1]),
        "cp": LayerSpec("x", encoding="cp", rank=rank),
    }[encoding]
    plan = plan_layer(spec, shape)
    assert plan.params == independent_count(encoding, shape, plan.options)
    generator = build_generator(plan, 0.05)
    assert sum(p.numel() for p in generator.parameters()) == plan.params
    assert tuple(generator().shape) == shape


def test_adtn_count_is_the_one_the_paper_construction_gives():
    # 4096×4096, depth 1: Q = 24; 12 gates on fresh pairs keep 4 numbers, 11 keep all 16.
    plan = plan_layer(LayerSpec("x", depth=1), (4096, 4096))
    assert plan.params == 12 * 4 + 11 * 16 + 1  # plus the scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("encoding", ["adtn", "tt", "lowrank", "tucker", "cp"])
@pytest.mark.parametrize("budget", [500, 1_500, 6_000])
def test_budgets_are_met_within_five_percent_or_refused(shape, encoding, budget):
    spec = LayerSpec("x", encoding=encoding, budget=budget, depth=2)
    try:
        plan = plan_layer(spec, shape)
    except EncodingError as exc:
        # Refused only when even the smallest encoding is over the budget, and said so.
        assert "needs at least" in str(exc) and f"{budget:,}" in str(exc)
        smallest = int(str(exc).split("needs at least ")[1].split(" ")[0].replace(",", ""))
        assert smallest > budget * 1.05
        return
    assert plan.params <= budget * 1.05
    assert plan.budget == budget
    generator = build_generator(plan, 0.05)
    assert sum(p.numel() for p in generator.parameters()) == plan.params


def test_tt_budget_is_close_not_just_below():
    for shape in [(256, 784), (120, 400), (84, 120)]:
        for budget in (700, 1_200, 3_000):
            plan = plan_layer(LayerSpec("x", encoding="tt", budget=budget), shape)
            assert abs(plan.params - budget) <= 0.2 * budget, (shape, budget, plan)


def test_match_adtn_budget_is_the_adtn_count_and_is_the_default_for_other_encodings():
    shape = (256, 784)
    adtn = plan_layer(LayerSpec("x", depth=3), shape).params
    for encoding in ("tt", "tucker", "cp"):
        default = (
            plan_layer(LayerSpec("x", depth=3, encoding=encoding), shape)
            if encoding == "tt"
            else None
        )
        matched = plan_layer(LayerSpec("x", depth=3, encoding="tt", budget="match:adtn"), shape)
        assert matched.budget == adtn
        if default is not None:
            assert default.params == matched.params
    assert plan_layer(LayerSpec("x", depth=3, encoding="tt"), shape).params <= adtn * 1.05


def test_adtn_budget_picks_a_depth():
    shape = (120, 400)
    depth3 = plan_layer(LayerSpec("x", depth=3), shape).params
    plan = plan_layer(LayerSpec("x", budget=depth3), shape)
    assert plan.options["depth"] == 3 and plan.params == depth3


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_linear_and_conv_layers_match_their_dense_equivalents(encoding):
    torch.manual_seed(0)
    spec = LayerSpec("x", encoding=encoding, depth=2)
    linear = encode_layer(nn.Linear(40, 24), spec)
    x = torch.randn(5, 40)
    assert torch.allclose(linear(x), linear.to_dense()(x), atol=1e-6)
    conv = encode_layer(nn.Conv2d(6, 16, 3, padding=1, stride=2), spec)
    image = torch.randn(2, 6, 9, 9)
    dense = conv.to_dense()
    assert isinstance(dense, nn.Conv2d) and dense.stride == (2, 2)
    assert torch.allclose(conv(image), dense(image), atol=1e-6)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_gradients_reach_every_factor(encoding):
    torch.manual_seed(0)
    layer = encode_layer(nn.Linear(30, 20), LayerSpec("x", encoding=encoding, depth=2))
    layer(torch.randn(8, 30)).square().sum().backward()
    for name, parameter in layer.generator.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("encoding", ["tt", "lowrank", "tucker", "cp"])
def test_fresh_weights_have_the_dense_layers_spread(encoding):
    torch.manual_seed(0)
    layer = encode_layer(nn.Linear(400, 120), LayerSpec("x", encoding=encoding, budget=2_000))
    expected = 1.0 / math.sqrt(3 * 400)
    assert float(layer.weight.detach().std()) == pytest.approx(expected, rel=0.05)


def test_fit_recovers_weights_the_encoding_can_represent():
    torch.manual_seed(0)
    lowrank = plan_layer(LayerSpec("x", encoding="lowrank", rank=3), (20, 30))
    target = build_generator(lowrank, 0.1)().detach()
    fresh = build_generator(lowrank, 0.1)
    assert fresh.fit(target) < 1e-5
    tt = plan_layer(
        LayerSpec("x", encoding="tt", ranks=[2, 3], factors=[[2, 2, 4], [2, 3, 4]]), (16, 24)
    )
    target = build_generator(tt, 0.1)().detach()
    assert build_generator(tt, 0.1).fit(target) < 1e-4


def test_fitted_layer_reports_its_error():
    torch.manual_seed(0)
    dense = nn.Linear(30, 20)
    layer = encode_layer(dense, LayerSpec("x", encoding="lowrank", rank=20), fit=True, fit_steps=0)
    assert layer.fit_error is not None and layer.fit_error < 1e-5
    assert torch.allclose(layer(torch.ones(1, 30)), dense(torch.ones(1, 30)), atol=1e-5)


def test_compress_with_mixed_encodings_reports_each_layer():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(64, 32))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(32, 10))
    specs = [LayerSpec("fc1", depth=2, encoding="tt"), LayerSpec("fc2", encoding="lowrank", rank=2)]
    planned = plan_compression(model, specs)
    report = compress(model, specs)
    assert [r.encoding for r in report.rows] == ["tt", "lowrank"]
    assert report.rows == planned.rows
    assert report.rows[1].encoded_params == 2 * (32 + 10)
    assert "rank 2" in report.rows[1].detail
    assert isinstance(model.fc1, EncodedLinear) and model.fc1.encoding == "tt"
    assert sum(p.numel() for p in model.parameters()) == report.model_params_after
    assert "tt" in report.format_table() and "lowrank" in report.format_table()
    assert set(report.to_dict()["encodings"]) == {"tt", "lowrank"}


def test_bad_options_name_the_field():
    model = nn.Sequential(nn.Linear(64, 32))
    with pytest.raises(ValueError, match="encoding must be one of"):
        plan_compression(model, [LayerSpec("0", encoding="svd")])
    with pytest.raises(ValueError, match="factors"):
        plan_compression(model, [LayerSpec("0", encoding="tt", factors=[[4, 8], [4, 4, 4]])])
    with pytest.raises(ValueError, match="multiply to"):
        plan_compression(
            model, [LayerSpec("0", encoding="tt", factors=[[4, 4], [4, 4]], ranks=[2])]
        )
    with pytest.raises(ValueError, match="either rank or budget"):
        plan_compression(model, [LayerSpec("0", encoding="lowrank", rank=2, budget=100)])
    with pytest.raises(ValueError, match="budget"):
        plan_compression(model, [LayerSpec("0", encoding="tt", budget="half")])
    with pytest.raises(ValueError, match="needs at least"):
        plan_compression(model, [LayerSpec("0", encoding="lowrank", budget=10)])
    with pytest.raises(LayerSpecError, match=r"layers\[2\]\.ranks\[1\]"):
        LayerSpec("fc", encoding="tt", ranks=[2, 0]).validate("layers[2]")


def test_conv_generator_for_tucker_uses_all_four_modes():
    plan = plan_layer(LayerSpec("x", encoding="tucker", ranks=[4, 3, 2, 2]), (16, 6, 5, 5))
    assert plan.params == 4 * 3 * 2 * 2 + 16 * 4 + 6 * 3 + 5 * 2 + 5 * 2
    layer = EncodedConv2d(6, 16, 5, encoding=plan)
    assert layer(torch.randn(1, 6, 12, 12)).shape == (1, 16, 8, 8)


@pytest.mark.parametrize("size,count", [(784, 3), (256, 4), (10, 3), (97, 2), (1, 2)])
def test_balanced_factors_multiply_back(size, count):
    factors = balanced_factors(size, count)
    assert len(factors) == count and math.prod(factors) == size


def test_adtn_index_order_and_gate_init_are_validated_stored_and_planned():
    with pytest.raises(LayerSpecError, match=r"layers\[0\]\.index_order"):
        LayerSpec("fc", index_order="zigzag").validate("layers[0]")
    with pytest.raises(LayerSpecError, match=r"layers\[1\]\.gate_init"):
        LayerSpec("fc", gate_init="zeros").validate("layers[1]")
    assert LayerSpec("fc").to_dict()["index_order"] == "interleaved"  # the default, written
    assert "index_order" not in LayerSpec("fc", encoding="tt").to_dict()  # no meaning there
    assert LayerSpec("fc", index_order="rows_first").to_dict()["index_order"] == "rows_first"
    spec = LayerSpec("fc", depth=3, index_order="interleaved", gate_init="normal")
    assert spec.to_dict()["index_order"] == "interleaved"
    assert spec.to_dict()["gate_init"] == "normal"
    shape = (256, 784)
    plan = plan_layer(spec, shape)
    assert plan.options["index_order"] == "interleaved"
    assert plan.options["gate_init"] == "normal"
    assert "interleaved" in plan.detail
    # the order of the indices and the start values change no count, nor a matched budget
    assert plan.params == plan_layer(LayerSpec("fc", depth=3), shape).params
    matched = plan_layer(
        LayerSpec("fc", depth=3, encoding="tt", budget="match:adtn", index_order="interleaved"),
        shape,
    )
    assert matched.budget == plan.params


def test_adtn_index_order_and_gate_init_reach_the_built_network():
    from engine.adtn import ADTN

    shape = (12, 20)
    plan = plan_layer(
        LayerSpec("fc", depth=2, index_order="interleaved", gate_init="normal"), shape
    )
    built = build_generator(plan, 0.1)
    assert built.index_order == "interleaved" and built.init == "normal"
    # the same gates give the interleaved network's weight, not the rows-first one's
    reference = ADTN(shape, 2, index_order="interleaved", init_std=0.1)
    rows_first = ADTN(shape, 2, init_std=0.1)
    reference.load_state_dict(built.state_dict())
    rows_first.load_state_dict(built.state_dict())
    with torch.no_grad():
        assert torch.allclose(built(), reference())
        assert not torch.allclose(built(), rows_first(), atol=1e-4)
    default = build_generator(plan_layer(LayerSpec("fc", depth=2), shape), 0.1)
    assert default.index_order == "interleaved" and default.init == "orthogonal"
