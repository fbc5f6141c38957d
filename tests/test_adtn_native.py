"""The native gate passes (engine/adtn_native.c): their plan, their arithmetic against a plain
reference, the ADTN's weight and gradients through them against the matrix products, and what
happens without a compiler."""

from __future__ import annotations

import copy
import ctypes
import logging
import pickle

import pytest
import torch

from engine import adtn_native
from engine.adtn import ADTN
from engine.adtn_kernel import WeightGather

needs_kernel = pytest.mark.skipif(
    adtn_native.library() is None, reason="no C compiler on this machine: no native kernel"
)


def reference_passes(state, gates, starts, num_bits):
    """Gates on bit pairs (a, a+1) applied in order, in float64, by tensordot."""
    tensor = state.double().view([2] * num_bits)
    for gate, a in zip(gates, starts):
        tensor = torch.tensordot(gate.double().view(2, 2, 2, 2), tensor, dims=([2, 3], [a, a + 1]))
        tensor = torch.movedim(tensor, (0, 1), (a, a + 1))
    return tensor.reshape(-1)


def run_pairs(num_bits, parity):
    return [(a, a + 1) for a in range(parity, num_bits - 1, 2)]


@pytest.mark.parametrize("num_bits", range(adtn_native.MIN_BITS, 21))
@pytest.mark.parametrize("parity", [0, 1])
def test_plan_covers_every_gate_once_within_tile_limits(num_bits, parity):
    pairs = run_pairs(num_bits, parity)
    starts = [a for a, _ in pairs]
    passes = adtn_native.plan_passes(pairs, num_bits)
    seen = sorted(k for members, *_ in passes for k in members)
    assert seen == list(range(len(pairs)))
    for index, (members, L, w, R, T, T_back, positions, low_positions, b) in enumerate(passes):
        assert L * (1 << w) * R == 1 << num_bits
        lo = L.bit_length() - 1
        high = members[: len(positions)]
        assert [starts[k] - lo for k in high] == list(positions)
        assert all(0 <= p <= w - 2 for p in positions)  # no gate leaves its pass's bits
        if low_positions:
            assert index == len(passes) - 1 and R == T == 1 << b
            assert [starts[k] - (num_bits - b) for k in members[len(positions) :]] == list(
                low_positions
            )
        for columns in (T, T_back):
            assert R % columns == 0 and 8 <= columns <= 128
        assert (1 << w) * T <= max(adtn_native.TILE_ENTRIES, adtn_native.STRIDED_TILE_ENTRIES)
        assert T_back <= T


def test_plan_refuses_small_states():
    assert adtn_native.plan_passes(run_pairs(6, 0), 6) is None


def assert_plan_matches_reference(plan, gates, starts, num_bits):
    """The passes of ``plan`` (specs whose first entry lists their gates), run forward and
    backward one after the other, against the float64 reference of the gates in order."""
    state, grad_out = torch.randn(1 << num_bits), torch.randn(1 << num_bits)
    passes = [(spec, adtn_native.make_pass(-1, 0, spec)) for spec in plan]
    inputs, current = [], state.clone()
    for spec, gate_pass in passes:
        inputs.append(current)
        out = torch.empty_like(current)
        adtn_native.pass_forward(current, out, gate_pass, gates[spec[0]].contiguous())
        current = out
    expected = reference_passes(state, gates, starts, num_bits)
    size = expected.abs().max().item()  # (float32 rounding grows with the gates' product)
    torch.testing.assert_close(current.double(), expected, rtol=1e-5, atol=1e-5 * size)

    leaf_state = state.double().requires_grad_()
    leaf_gates = gates.double().requires_grad_()
    exact = reference_passes(leaf_state, leaf_gates, starts, num_bits)
    (exact * grad_out.double()).sum().backward()
    grad, grad_gates = grad_out.clone(), torch.zeros_like(gates)
    for (spec, gate_pass), pass_input in zip(reversed(passes), reversed(inputs)):
        grad_in = torch.empty_like(grad)
        part = torch.empty(len(spec[0]), 16)
        gate_values = gates[spec[0]].contiguous()
        adtn_native.pass_backward(pass_input, grad, grad_in, gate_pass, gate_values, part)
        grad_gates[spec[0]] = part.view(-1, 4, 4)
        grad = grad_in
    for mine, exact in ((grad, leaf_state.grad), (grad_gates, leaf_gates.grad)):
        size = exact.abs().max().item()
        torch.testing.assert_close(mine.double(), exact, rtol=1e-4, atol=1e-5 * size)


@needs_kernel
@pytest.mark.parametrize("num_bits", [8, 9, 11, 12, 15, 18])
@pytest.mark.parametrize("parity", [0, 1])
def test_passes_match_reference_forward_and_backward(num_bits, parity):
    torch.manual_seed(num_bits * 2 + parity)
    pairs = run_pairs(num_bits, parity)
    gates = torch.randn(len(pairs), 4, 4)
    plan = adtn_native.plan_passes(pairs, num_bits)
    assert_plan_matches_reference(plan, gates, [a for a, _ in pairs], num_bits)


@pytest.mark.parametrize("num_bits", range(adtn_native.MIN_BITS, 29))
def test_brick_layer_plan_covers_every_gate_once_in_few_passes(num_bits):
    first, second = run_pairs(num_bits, 0), run_pairs(num_bits, 1)
    passes = adtn_native.plan_brick_layer(first, second, num_bits)
    # one low pass of LOW_PASS_BITS bits, then ranges of at most MAX_HIGH_ROW_BITS bits that
    # overlap by one
    above = max(0, num_bits - adtn_native.LOW_PASS_BITS)
    assert len(passes) <= 1 + -(-above // (adtn_native.MAX_HIGH_ROW_BITS - 2))
    assert len(passes) == 1 if num_bits <= adtn_native.LOW_PASS_BITS else len(passes) >= 2
    seen = sorted(k for members, *_ in passes for k in members)
    assert seen == list(range(len(first) + len(second)))
    for index, (members, L, w, R, T, T_back, steps) in enumerate(passes):
        assert L * (1 << w) * R == 1 << num_bits and len(steps) == len(members)
        assert R % T == 0 and R % T_back == 0 and T_back <= T <= 128
        # each half's gates in order, the first half's before the second's
        assert members == sorted(members)
        if index:  # gates on the pass's rows only
            assert w <= adtn_native.MAX_HIGH_ROW_BITS
            assert all(kind == 0 and view == 0 and 0 <= p <= w - 2 for kind, view, p in steps)
    # the low pass's tile is contiguous (R == T) and at most 2**LOW_PASS_BITS numbers
    members, L, w, R, T, _, _ = passes[0]
    assert R == T and (1 << w) * T <= 1 << adtn_native.LOW_PASS_BITS


def test_brick_layer_plan_refuses_what_is_not_a_brick_layer():
    assert adtn_native.plan_brick_layer(run_pairs(12, 1), run_pairs(12, 0), 12) is None
    assert adtn_native.plan_brick_layer(run_pairs(12, 0)[:-1], run_pairs(12, 1), 12) is None
    assert adtn_native.plan_brick_layer(run_pairs(6, 0), run_pairs(6, 1), 6) is None


@needs_kernel
@pytest.mark.parametrize("num_bits", [8, 11, 12, 13, 16, 17, 18, 21, 22])
def test_brick_layer_passes_match_reference_forward_and_backward(num_bits):
    torch.manual_seed(num_bits)
    first, second = run_pairs(num_bits, 0), run_pairs(num_bits, 1)
    starts = [a for a, _ in first + second]
    gates = 0.6 * torch.randn(len(starts), 4, 4)
    plan = adtn_native.plan_brick_layer(first, second, num_bits)
    assert_plan_matches_reference(plan, gates, starts, num_bits)


@needs_kernel
def test_an_adtn_runs_each_brick_layer_as_two_passes():
    adtn = ADTN((256, 784), 3, index_order="interleaved")  # Q = 18
    plan = adtn._compiled(True)[0][True]
    for layer in plan.fast[1:]:
        assert [type(step).__name__ for step in layer] == ["GatePass", "GatePass"]
        assert sum(step.count for step in layer) == 17


@needs_kernel
def test_a_shape_the_kernel_does_not_handle_is_refused_not_run():
    gate_pass = adtn_native.make_pass(-1, 0, ([0], 1, 4, 12, 16, 16, (0,), (), 4))  # 12 % 16
    state = torch.zeros(4 * 16 * 12)
    with pytest.raises(RuntimeError, match="refused"):
        adtn_native.pass_forward(state, torch.empty_like(state), gate_pass, torch.zeros(16))


@needs_kernel
@pytest.mark.parametrize("view, position", [(16, 8), (8, 7), (16, -1)])
def test_a_gate_outside_its_tile_or_vector_is_refused(view, position):
    # tile: 2**4 rows of 16 = 8 bits; on rows of 16 a gate may reach into the lanes (bits 4-7)
    # but not past them, on rows of 8 not into them
    gate_pass = adtn_native.make_pass(-1, 0, ([0], 1, 4, 16, 16, 16, ((0, view, position),)))
    state = torch.zeros(256)
    with pytest.raises(RuntimeError, match="refused"):
        adtn_native.pass_forward(state, torch.empty_like(state), gate_pass, torch.zeros(16))


@needs_kernel
@pytest.mark.parametrize(
    "shapes",
    [
        [(1, 4), (2, 8), (2, 8), (2, 8), (2, 8), (2, 8), (2, 8)],  # the brick layout's
        [(1, 4), (2, 8), (2, 8)],  # fewer rows than one vector step
        [(1, 2), (2, 4), (4, 12), (3, 6), (2, 8)],  # other shapes: the plain loops
    ],
)
def test_native_growth_matches_matrix_products(shapes):
    torch.manual_seed(len(shapes))
    mats = [torch.randn(a, b) for a, b in shapes]
    numels = [1]
    for a, b in shapes:
        numels.append(numels[-1] // a * b)
    states = [torch.ones(1)] + [torch.empty(n) for n in numels[1:]]
    rows = (ctypes.c_int * len(shapes))(*(a for a, _ in shapes))
    columns = (ctypes.c_int * len(shapes))(*(b for _, b in shapes))
    adtn_native.grow_forward((rows, columns), mats, states)

    leaves = [m.double().requires_grad_() for m in mats]
    expected = [torch.ones(1, dtype=torch.float64)]
    for (a, _), m in zip(shapes, leaves):
        expected.append((expected[-1].view(-1, a) @ m).view(-1))
    for mine, exact in zip(states, expected):
        torch.testing.assert_close(mine.double(), exact.detach(), rtol=1e-5, atol=1e-6)
    # asked to, it also activates the last state and sums its squares
    activated = [torch.ones(1)] + [torch.empty(n) for n in numels[1:]]
    squares = adtn_native.grow_forward((rows, columns), mats, activated, 0.25, True)
    leaky = torch.nn.functional.leaky_relu(expected[-1].detach(), 0.25)
    torch.testing.assert_close(activated[-1].double(), leaky, rtol=1e-5, atol=1e-6)
    assert squares == pytest.approx(float(leaky.square().sum()), rel=1e-5)

    grad = torch.randn(numels[-1])
    (expected[-1] * grad.double()).sum().backward()
    grad_mats = [torch.empty(a, b) for a, b in shapes]
    adtn_native.grow_backward((rows, columns), mats, states, grad.clone(), grad_mats)
    for mine, leaf in zip(grad_mats, leaves):
        size = leaf.grad.abs().max().item()
        torch.testing.assert_close(mine.double(), leaf.grad, rtol=1e-4, atol=1e-5 * size)


CASES = [
    ((256, 784), 3, "relu", "interleaved"),
    ((10, 256), 3, "relu", "rows_first"),
    ((84, 120), 2, "leaky_relu", "interleaved"),
    ((10, 84), 4, "none", "rows_first"),
    ((16, 8, 3, 3), 3, "relu", "rows_first"),
]


@needs_kernel
@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("shape, depth, activation, index_order", CASES)
def test_adtn_through_native_passes_matches_matrix_products(
    shape, depth, activation, index_order, memory
):
    torch.manual_seed(0)
    native = ADTN(shape, depth, activation=activation, index_order=index_order, memory=memory)
    products = copy.deepcopy(native)
    products.kernel = "matmul"
    assert native._native_for(native.gate_values)
    assert native._compiled(True)[0][True].flat_gates  # the plan has native passes
    assert not products._native_for(products.gate_values)
    assert native.uses_low_memory() == (memory == "low")
    weight, reference = native(), products()
    torch.testing.assert_close(weight, reference, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(weight)
    (weight * grad).sum().backward()
    (reference * grad).sum().backward()
    for mine, theirs in zip(native.parameters(), products.parameters()):
        scale = theirs.grad.abs().max().item()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-5 * scale)
    with torch.no_grad():  # the inference path (no stored states) agrees too
        torch.testing.assert_close(native(), products(), rtol=1e-5, atol=1e-6)


@needs_kernel
def test_native_adtn_copies_and_pickles():
    adtn = ADTN((64, 64), 2)
    adtn().sum().backward()  # compiles the native plan (with its ctypes arrays)
    for clone in (copy.deepcopy(adtn), pickle.loads(pickle.dumps(adtn))):
        torch.testing.assert_close(clone(), adtn())


def test_disabled_kernel_leaves_the_matrix_products(monkeypatch):
    monkeypatch.setenv(adtn_native.DISABLE_ENV, "0")
    adtn = ADTN((64, 64), 2)
    assert not adtn._native_for(adtn.gate_values)
    assert adtn_native.describe().startswith("matrix products")
    adtn().sum().backward()
    assert all(p.grad is not None for p in adtn.parameters())


def test_without_a_compiler_the_engine_says_so_once_and_keeps_working(
    monkeypatch, tmp_path, caplog
):
    monkeypatch.setattr(adtn_native, "_state", {"library": None, "tried": False, "error": None})
    monkeypatch.setenv("ADTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="engine.adtn_native"):
        assert adtn_native.library() is None
        assert adtn_native.library() is None
        adtn = ADTN((64, 64), 2)
        adtn().sum().backward()
    messages = [r.getMessage() for r in caplog.records if r.name == "engine.adtn_native"]
    assert len(messages) == 1 and "not available" in messages[0]
    assert not adtn_native.enabled()
    assert adtn_native.describe().startswith("matrix products (native kernel not available: ")
    assert "no-such-compiler" in adtn_native.describe() or "compiling" in adtn_native.describe()


@needs_kernel
def test_build_is_cached_per_source_and_written_atomically(tmp_path, monkeypatch):
    first = adtn_native._build(tmp_path)
    assert first.exists() and first.parent == tmp_path
    calls = []
    monkeypatch.setattr(adtn_native.subprocess, "run", lambda *a, **k: calls.append(a))
    assert adtn_native._build(tmp_path) == first  # found, not compiled again
    assert calls == []
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


@needs_kernel
def test_a_cached_library_that_does_not_load_is_built_again(tmp_path):
    broken = adtn_native._build(tmp_path)
    broken.write_bytes(b"not a shared library")
    library = adtn_native._build_and_load(tmp_path)
    assert library.adtn_pass_forward is not None
    assert broken.read_bytes()[:4] != b"not "  # rebuilt in place


def test_a_pass_copies_its_gather_index_to_another_device_once():
    spec = ([0, 1], 1, 8, 16, 16, 16, ((0, 0, 0), (0, 0, 2)))
    gate_pass = adtn_native.make_pass(-1, 0, spec, [16, 48])
    assert gate_pass.gather.tolist() == list(range(16, 32)) + list(range(48, 64))
    assert gate_pass.gather_on(torch.device("cpu")) is gate_pass.gather
    elsewhere = gate_pass.gather_on(torch.device("meta"))
    assert elsewhere.device.type == "meta" and elsewhere.shape == (32,)
    assert gate_pass.gather_on(torch.device("meta")) is elsewhere
    assert adtn_native.make_pass(-1, 0, spec).gather_on(torch.device("meta")) is None


@needs_kernel
@pytest.mark.parametrize(
    "shape, index_order",
    [((256, 784), "interleaved"), ((10, 256), "rows_first"), ((16, 8, 3, 3), "interleaved")],
)
def test_weight_gather_by_row_and_column_tables_matches_the_index(shape, index_order):
    adtn = ADTN(shape, 2, index_order=index_order)
    order = adtn._weight_gather(torch.device("cpu"))
    assert order is not None and order.grid is not None
    row_at, column_at = order.grid
    assert torch.equal((row_at[:, None] + column_at[None, :]).reshape(-1), order.gather)

    torch.manual_seed(0)
    state = torch.randn(1 << adtn.Q)
    by_tables, by_index = torch.empty(shape), torch.empty(shape)
    squares = adtn_native.gather(state, order.gather, by_tables, order.grid)
    assert squares == pytest.approx(adtn_native.gather(state, order.gather, by_index), rel=1e-6)
    assert torch.equal(by_tables, by_index)

    grad, tensor = torch.randn(shape).view(-1), torch.randn(shape).view(-1)
    out_tables = torch.full_like(state, float("nan"))  # (padding entries must become 0)
    out_index = torch.empty_like(state)
    adtn_native.scatter_scaled(grad, tensor, order.scatter, 0.5, 0.25, out_tables, order.grid)
    adtn_native.scatter_scaled(grad, tensor, order.scatter, 0.5, 0.25, out_index)
    assert torch.equal(out_tables, out_index)


def test_a_weight_gather_that_is_not_a_grid_keeps_the_index():
    order = torch.arange(64)
    order[[1, 2]] = order[[2, 1]]  # row 0 swaps two columns, the other rows do not
    assert WeightGather.build(order, (8, 8), (8, 8)).grid is None
    assert WeightGather.build(torch.arange(64), (8, 8), (8, 8)).grid is not None


@needs_kernel
def test_a_brick_adtn_trains_from_its_flat_gates_without_building_matrices(monkeypatch):
    from engine.adtn_matrices import MatrixBuilder

    torch.manual_seed(0)
    adtn = ADTN((84, 120), 3, activation="leaky_relu", index_order="interleaved")
    reference = copy.deepcopy(adtn)
    reference.kernel = "matmul"
    assert adtn._compiled(True)[0][True].growth is not None
    assert ADTN((10, 84), 3)._compiled(True)[0][True].growth is None  # (odd Q: built matrices)

    def no_build(*_):
        raise AssertionError("the matrices were built")

    grad = torch.randn(84, 120)
    expected = reference()
    (expected * grad).sum().backward()
    with torch.no_grad():
        inferred = reference()
    monkeypatch.setattr(MatrixBuilder, "build", no_build)
    weight = adtn()
    (weight * grad).sum().backward()
    torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-6)
    scale = reference.gate_values.grad.abs().max().item()
    torch.testing.assert_close(
        adtn.gate_values.grad, reference.gate_values.grad, rtol=1e-4, atol=1e-5 * scale
    )
    with torch.no_grad():  # inference too
        torch.testing.assert_close(adtn(), inferred, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_gradients_from_flat_gates_use_the_values_of_their_forward_pass():
    torch.manual_seed(0)
    adtn = ADTN((84, 120), 3, index_order="interleaved")
    reference = copy.deepcopy(adtn)
    assert adtn._compiled(True)[0][True].growth is not None
    grad = torch.randn(84, 120)
    weight = adtn()
    with torch.no_grad():  # changed between the forward and the backward pass
        adtn.gate_values.mul_(0.5)
    (weight * grad).sum().backward()
    (reference() * grad).sum().backward()
    torch.testing.assert_close(adtn.gate_values.grad, reference.gate_values.grad)
