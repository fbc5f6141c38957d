"""The ADTN generator against a deliberately naive reference, its counts, gradients and init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.adtn import ADTN, build_gate_specs, mode_bits


def naive_network_tensor(adtn: ADTN, full_gates: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Every layer as an explicit 2^Q × 2^Q matrix built from Kronecker products."""
    q = adtn.Q
    state = torch.zeros(2**q, dtype=torch.float64)
    state[0] = 1.0  # v ⊗ v ⊗ … ⊗ v with v = [1, 0]
    for layer in range(adtn.depth):
        if layer > 0:
            if adtn.activation == "relu":
                state = torch.relu(state)
            elif adtn.activation == "leaky_relu":
                state = F.leaky_relu(state, 0.01)
        for k, spec in enumerate(adtn.gate_specs()):
            if spec.layer != layer:
                continue
            if full_gates is not None:
                local = full_gates[k]
            else:
                local = torch.zeros(4, 4, dtype=torch.float64)
                local[:, list(spec.columns)] = adtn.gates[k].detach().double()
            a = spec.pair[0]
            eye_left = torch.eye(2**a, dtype=torch.float64)
            eye_right = torch.eye(2 ** (q - a - 2), dtype=torch.float64)
            state = torch.kron(torch.kron(eye_left, local), eye_right) @ state
    tensor = state.reshape(adtn.padded_shape)
    return tensor[tuple(slice(0, d) for d in adtn.shape)]


def randomised(adtn: ADTN) -> ADTN:
    """Move the gates away from their orthogonal start so that nothing special hides bugs."""
    with torch.no_grad():
        for gate in adtn.gates:
            gate.add_(0.4 * torch.randn_like(gate))
    return adtn


def naive_weight(adtn: ADTN, gates, scale) -> torch.Tensor:
    """The weight by plain autograd operations from the gates: explicit 2^Q × 2^Q layer
    matrices, the division by the rms between layers, then ``scale * W / rms(W)``."""
    q = adtn.Q
    state = torch.zeros(2**q, dtype=torch.float64)
    state[0] = 1.0
    for layer in range(adtn.depth):
        if layer > 0:
            if adtn.activation == "relu":
                state = torch.relu(state)
            elif adtn.activation == "leaky_relu":
                state = F.leaky_relu(state, 0.01)
            state = state / state.square().mean().sqrt()
        for k, spec in enumerate(adtn.gate_specs()):
            if spec.layer == layer:
                local = gates[k].new_zeros(4, 4).index_copy(1, torch.tensor(spec.columns), gates[k])
                a = spec.pair[0]
                eye_left = torch.eye(2**a, dtype=torch.float64)
                eye_right = torch.eye(2 ** (q - a - 2), dtype=torch.float64)
                state = torch.kron(torch.kron(eye_left, local), eye_right) @ state
    tensor = state.reshape(adtn.padded_shape)[tuple(slice(0, d) for d in adtn.shape)]
    return scale * tensor / tensor.square().mean().sqrt()


MEMORY_MODES = ["fast", "low"]


@pytest.mark.parametrize(
    "shape", [(5, 3), (4, 4), (3, 2, 5, 5), (7, 9), (1, 8), (16, 1), (2, 2), (6, 1, 3, 3)]
)
@pytest.mark.parametrize("layout", ["brick", "stair"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "none"])
def test_contraction_matches_naive_reference(shape, layout, activation):
    torch.manual_seed(hash((shape, layout, activation)) % 2**31)
    for depth in (1, 2, 3):
        adtn = randomised(ADTN(shape, depth=depth, activation=activation, layout=layout).double())
        expected = naive_network_tensor(adtn)
        for memory in MEMORY_MODES:
            adtn.memory = memory
            got = adtn.contract()
            assert got.shape == torch.Size(shape)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 5, 5), (7, 9), (16, 1), (2, 2), (12, 20)])
@pytest.mark.parametrize("layout", ["brick", "stair"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "none"])
def test_hand_written_backward_matches_autograd_of_the_naive_reference(shape, layout, activation):
    """Gradients of every gate and of the scale, in both memory modes, against autograd
    through the naive reference (odd Q among the shapes: (5, 3), (7, 9), (16, 1))."""
    torch.manual_seed(hash((shape, layout, activation, "grad")) % 2**31)
    for depth in (1, 2, 3):
        while True:  # a tiny ReLU network can die (an all-zero state has no rms): redraw
            adtn = randomised(
                ADTN(shape, depth=depth, activation=activation, layout=layout).double()
            )
            with torch.no_grad():
                adtn.scale.fill_(0.8)
            upstream = torch.randn(shape, dtype=torch.float64)
            gates = [g.detach().clone().requires_grad_(True) for g in adtn.gates]
            scale = adtn.scale.detach().clone().requires_grad_(True)
            (naive_weight(adtn, gates, scale) * upstream).sum().backward()
            if all(torch.isfinite(g.grad).all() for g in gates):
                break
        for memory in MEMORY_MODES:
            adtn.memory = memory
            adtn.zero_grad(set_to_none=True)
            (adtn() * upstream).sum().backward()
            for k, (got, ref) in enumerate(zip(adtn.gate_grads(), gates)):
                torch.testing.assert_close(
                    got,
                    ref.grad,
                    rtol=0,
                    atol=1e-10,
                    msg=f"{memory}, depth {depth}, gate {k}",
                )
            torch.testing.assert_close(adtn.scale.grad, scale.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("memory", MEMORY_MODES)
@pytest.mark.parametrize(
    "layout, activation, shape",
    [
        ("brick", "relu", (3, 2, 3)),
        ("stair", "leaky_relu", (5, 3)),
        ("brick", "none", (4, 8)),
    ],
)
def test_gradcheck_of_the_hand_written_backward(memory, layout, activation, shape):
    torch.manual_seed(9)
    adtn = randomised(
        ADTN(shape, depth=3, activation=activation, layout=layout, memory=memory).double()
    )
    names = [n for n, _ in adtn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in adtn.parameters())

    def weight(*values):
        return torch.func.functional_call(adtn, dict(zip(names, values)), ())

    assert torch.autograd.gradcheck(weight, params, eps=1e-6, atol=1e-7)

    raw = RawTensor(adtn)  # contract(): no normalisation, no scale
    raw_names = [n for n, _ in raw.named_parameters()]

    def network_tensor(*values):
        return torch.func.functional_call(raw, dict(zip(raw_names, values)), ())

    assert torch.autograd.gradcheck(
        network_tensor, params[:-1] + (params[-1].detach(),), eps=1e-6, atol=1e-7
    )


class RawTensor(torch.nn.Module):
    def __init__(self, adtn: ADTN) -> None:
        super().__init__()
        self.adtn = adtn

    def forward(self) -> torch.Tensor:
        return self.adtn.contract()


def test_low_memory_mode_is_chosen_for_large_states_and_both_modes_agree():
    torch.manual_seed(10)
    small = ADTN((64, 64), depth=3)
    assert not small.uses_low_memory()
    big = ADTN((4096, 4096), depth=4)
    assert big.uses_low_memory()
    fast = randomised(ADTN((32, 64), depth=4, layout="brick", memory="fast").double())
    low = ADTN((32, 64), depth=4, layout="brick", memory="low").double()
    low.load_state_dict(fast.state_dict())
    upstream = torch.randn(32, 64, dtype=torch.float64)
    for adtn in (fast, low):
        (adtn() * upstream).sum().backward()
    for a, b in zip(fast.parameters(), low.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_memory_mode_is_checked():
    with pytest.raises(ValueError, match="memory"):
        ADTN((4, 4), memory="some")


@pytest.mark.parametrize("block_bits", [2, 3, 6])
def test_block_size_does_not_change_the_result(block_bits):
    torch.manual_seed(1)
    reference = randomised(ADTN((12, 20), depth=3).double())
    other = ADTN((12, 20), depth=3, block_bits=block_bits).double()
    other.load_state_dict(reference.state_dict())
    torch.testing.assert_close(other.contract(), reference.contract(), rtol=0, atol=1e-12)


def test_weight_is_scale_times_normalised_network_tensor():
    torch.manual_seed(2)
    adtn = randomised(ADTN((9, 13), depth=3).double())
    with torch.no_grad():
        adtn.scale.fill_(-0.7)
    raw = naive_network_tensor(adtn)
    expected = -0.7 * raw / raw.square().mean().sqrt()
    torch.testing.assert_close(adtn(), expected, rtol=0, atol=1e-10)
    assert adtn().square().mean().sqrt().item() == pytest.approx(0.7)


def test_gradcheck_through_the_generator():
    torch.manual_seed(3)
    adtn = randomised(ADTN((3, 2, 3), depth=3, activation="leaky_relu").double())
    names = [n for n, _ in adtn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in adtn.parameters())

    def weight(*values):
        return torch.func.functional_call(adtn, dict(zip(names, values)), ())

    assert torch.autograd.gradcheck(weight, params, eps=1e-6, atol=1e-7)


def test_gradients_reach_every_local_tensor():
    torch.manual_seed(4)
    adtn = ADTN((30, 40), depth=4)
    (adtn() * torch.randn(30, 40)).sum().backward()
    for k, grad in enumerate(adtn.gate_grads()):
        assert grad is not None, f"gate {k} has no gradient"
        assert grad.abs().sum() > 0, f"gate {k} has a zero gradient"
    assert adtn.scale.grad is not None and adtn.scale.grad != 0


# ------------------------------------------------------------------------------ counting
def brick_count(q: int, depth: int) -> int:
    """Closed form for the brick layout with Q even: the first half-layer holds 4 numbers a
    gate, everything else 16."""
    assert q % 2 == 0
    return 4 * (q // 2) + 16 * (q // 2 - 1) + 16 * (q - 1) * (depth - 1)


def test_paper_vgg16_counts():
    assert ADTN((4096, 4096), depth=1).num_parameters(tensors_only=True) == 224
    assert ADTN((4096, 4096), depth=1).num_parameters() == 225  # plus the scale


def test_odd_q_stores_only_the_numbers_that_can_change_the_weight():
    # 4096×512 has Q = 21: the first half-layer leaves index 20 in state [1, 0], so the
    # second half-layer's gate on (19, 20) uses 8 of its 16 numbers. The paper counts all 16
    # (200 for this weight); 192 is what can change the weight.
    assert ADTN.count_parameters((4096, 512), 1, tensors_only=True) == 10 * 4 + 9 * 16 + 8
    specs = build_gate_specs(21, 1, "brick")
    assert specs[-1].pair == (19, 20) and specs[-1].columns == (0, 2)


def test_unstored_numbers_cannot_change_the_weight():
    """The reference with full 4×4 gates: changing the columns the engine does not store
    leaves the network tensor unchanged (Q = 5, odd, like 4096×512)."""
    torch.manual_seed(5)
    adtn = randomised(ADTN((8, 4), depth=2).double())
    full = []
    for spec, gate in zip(adtn.gate_specs(), adtn.gates):
        local = torch.randn(4, 4, dtype=torch.float64)  # junk in the unstored columns
        local[:, list(spec.columns)] = gate.detach()
        full.append(local)
    torch.testing.assert_close(
        naive_network_tensor(adtn, full), adtn.contract(), rtol=0, atol=1e-12
    )
    assert any(len(s.columns) < 4 for s in adtn.gate_specs() if s.layer == 0)


@pytest.mark.parametrize(
    "shape, depth",
    [
        ((4, 4), 1),
        ((16, 16), 2),
        ((64, 64), 3),
        ((6, 1, 5, 5), 2),
        ((16, 6, 5, 5), 1),
        ((120, 400), 3),
    ],
)
def test_counts_agree_with_stored_tensors_and_closed_form(shape, depth):
    adtn = ADTN(shape, depth=depth)
    stored = sum(g.numel() for g in adtn.gates)
    assert adtn.num_parameters(tensors_only=True) == stored
    assert adtn.num_parameters() == stored + 1
    assert ADTN.count_parameters(shape, depth) == adtn.num_parameters()
    assert sum(p.numel() for p in adtn.parameters()) == adtn.num_parameters()
    if adtn.Q % 2 == 0:
        assert stored == brick_count(adtn.Q, depth)


def test_stair_layout_counts():
    # (0,1) acts on v⊗v (4 numbers); each later gate of the first layer meets one fresh
    # index (8 numbers); later layers store full gates.
    q, depth = 10, 2
    expected = 4 + 8 * (q - 2) + 16 * (q - 1)
    assert ADTN.count_parameters((32, 32), depth, "stair", tensors_only=True) == expected


def test_sizes_one_and_non_powers_of_two():
    assert mode_bits((1, 784)) == (0, 10)
    assert mode_bits((6, 1, 5, 5)) == (3, 0, 3, 3)
    adtn = ADTN((1, 784), depth=2)
    assert adtn.Q == 10 and adtn().shape == (1, 784)
    adtn = ADTN((5, 3, 1, 1))
    assert adtn.padded_shape == (8, 4, 1, 1) and adtn().shape == (5, 3, 1, 1)


@pytest.mark.parametrize("shape", [(1,), (1, 1), (2, 1), (1, 1, 1, 1)])
def test_weights_too_small_to_encode_are_refused(shape):
    with pytest.raises(ValueError, match="at least"):
        ADTN(shape)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(4, 4), depth=0), "depth"),
        (dict(shape=(4, 4), activation="tanh"), "activation"),
        (dict(shape=(4, 4), layout="ring"), "layout"),
        (dict(shape=(4, 0)), "positive"),
        (dict(shape=(2**15, 2**15)), "binary indices"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ADTN(**kwargs)


# ------------------------------------------------------------------------- initialisation
def pytorch_default_std(shape) -> float:
    fan_in = math.prod(shape[1:])
    return 1.0 / math.sqrt(3.0 * fan_in)  # kaiming_uniform_(a=sqrt(5)): U(±1/sqrt(fan_in))


@pytest.mark.parametrize("q", [4, 7, 12, 17, 20])
def test_initial_weight_has_dense_statistics(q):
    shape = (2 ** (q // 2), 2 ** (q - q // 2))
    for depth in range(1, 9):
        torch.manual_seed(depth)
        with torch.no_grad():
            weight = ADTN(shape, depth=depth)()
        assert torch.isfinite(weight).all()
        ratio = weight.std().item() / pytorch_default_std(shape)
        assert 0.5 < ratio < 2.0, (q, depth, ratio)


@pytest.mark.parametrize("depth", [1, 8])
def test_initial_weight_statistics_at_q24(depth):
    with torch.no_grad():
        weight = ADTN((4096, 4096), depth=depth)()
    assert torch.isfinite(weight).all()
    ratio = weight.std().item() / pytorch_default_std((4096, 4096))
    assert 0.5 < ratio < 2.0


def test_seeded_generator_makes_initialisation_reproducible():
    a = ADTN((8, 8), depth=2, generator=torch.Generator().manual_seed(7))
    b = ADTN((8, 8), depth=2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.contract(), b.contract())


# -------------------------------------------------------------------------------- running
def test_weight_is_cached_for_inference_and_refreshed_after_an_update():
    adtn = ADTN((16, 16), depth=2)
    with torch.no_grad():
        first = adtn()
        assert adtn() is first  # the cached tensor, not a second materialisation
    with torch.no_grad():
        adtn.gates[0].add_(0.5)  # (a rescaled gate would give the same normalised weight)
        second = adtn()
    assert second is not first and not torch.equal(first, second)
    assert adtn() is not adtn()  # with gradients on, every call builds the weight afresh


def test_materialisation_stays_in_float32_under_autocast():
    adtn = ADTN((16, 32), depth=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight = adtn()
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, adtn(), rtol=0, atol=0)


def test_fit_reaches_a_weight_another_adtn_generates():
    torch.manual_seed(8)
    teacher = randomised(ADTN((8, 16), depth=1, activation="none"))
    target = teacher().detach()
    student = ADTN((8, 16), depth=1, activation="none")
    with torch.no_grad():
        before = ((student() - target).norm() / target.norm()).item()
    after = student.fit(target, steps=600)
    assert after < 0.05 < before


# ------------------------------------------------------------------- options (issue 15)
def naive_interleaved(adtn: ADTN) -> torch.Tensor:
    """The network tensor for ``index_order="interleaved"``, entry by entry: weight index
    (i_0, …, i_k) → its bits, most significant first → the network's flat index with one bit
    of each mode in turn while the modes have bits left."""
    state = naive_network_tensor_flat(adtn)
    bits = mode_bits(adtn.shape)
    out = torch.empty(adtn.shape, dtype=state.dtype)
    for index in (
        torch.cartesian_prod(*[torch.arange(d) for d in adtn.shape])
        .reshape(-1, len(adtn.shape))
        .tolist()
    ):
        mode_bit_values = [[(i >> (q - 1 - b)) & 1 for b in range(q)] for i, q in zip(index, bits)]
        flat = 0
        for b in range(max(bits)):
            for mode, q in enumerate(bits):
                if b < q:
                    flat = 2 * flat + mode_bit_values[mode][b]
        out[tuple(index)] = state[flat]
    return out


def naive_network_tensor_flat(adtn: ADTN) -> torch.Tensor:
    """The naive reference's 2^Q output state, before any reordering or cropping."""
    q = adtn.Q
    state = torch.zeros(2**q, dtype=torch.float64)
    state[0] = 1.0
    for layer in range(adtn.depth):
        if layer > 0:
            if adtn.activation == "relu":
                state = torch.relu(state)
            elif adtn.activation == "leaky_relu":
                state = F.leaky_relu(state, 0.01)
        for k, spec in enumerate(adtn.gate_specs()):
            if spec.layer == layer:
                local = torch.zeros(4, 4, dtype=torch.float64)
                local[:, list(spec.columns)] = adtn.gates[k].detach().double()
                a = spec.pair[0]
                state = (
                    torch.kron(
                        torch.kron(torch.eye(2**a, dtype=torch.float64), local),
                        torch.eye(2 ** (q - a - 2), dtype=torch.float64),
                    )
                    @ state
                )
    return state


@pytest.mark.parametrize("shape", [(5, 3), (8, 8), (3, 2, 5, 5), (6, 1, 3, 3), (16, 2), (1, 8)])
@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_interleaved_index_order_matches_naive_reference(shape, memory):
    torch.manual_seed(hash((shape, "interleaved")) % 2**31)
    for depth in (1, 2):
        adtn = randomised(
            ADTN(shape, depth=depth, index_order="interleaved", memory=memory).double()
        )
        torch.testing.assert_close(adtn.contract(), naive_interleaved(adtn), rtol=0, atol=1e-10)
        rows_first = ADTN(shape, depth=depth, memory=memory).double()
        rows_first.load_state_dict(adtn.state_dict())
        if len([d for d in shape if d > 1]) > 1 and depth > 1:
            assert not torch.allclose(rows_first.contract(), adtn.contract())


def test_interleaved_order_of_bits_and_its_gradients():
    assert ADTN((4, 8), index_order="interleaved").network_bit_order() == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (1, 2),
    ]
    assert ADTN((4, 8)).network_bit_order() == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    torch.manual_seed(11)
    adtn = randomised(
        ADTN((6, 10), depth=2, activation="leaky_relu", index_order="interleaved").double()
    )
    upstream = torch.randn(6, 10, dtype=torch.float64)
    gates = [g.detach().clone().requires_grad_(True) for g in adtn.gates]
    scale = adtn.scale.detach().clone().requires_grad_(True)
    # The naive weight in the rows-first order, reordered by the same map as the reference.
    order = adtn.state_index_order(torch.device("cpu"))
    state = naive_weight_state(adtn, gates)
    weight = state[order].reshape(adtn.padded_shape)[:6, :10]
    (scale * weight / weight.square().mean().sqrt() * upstream).sum().backward()
    (adtn() * upstream).sum().backward()
    for got, ref in zip(adtn.gate_grads(), gates):
        torch.testing.assert_close(got, ref.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(adtn.scale.grad, scale.grad, rtol=0, atol=1e-10)


def naive_weight_state(adtn: ADTN, gates) -> torch.Tensor:
    """The 2^Q state of ``naive_weight`` (normalised between layers), differentiable."""
    q = adtn.Q
    state = torch.zeros(2**q, dtype=torch.float64)
    state[0] = 1.0
    for layer in range(adtn.depth):
        if layer > 0:
            state = (
                F.leaky_relu(state, 0.01)
                if adtn.activation == "leaky_relu"
                else (torch.relu(state) if adtn.activation == "relu" else state)
            )
            state = state / state.square().mean().sqrt()
        for k, spec in enumerate(adtn.gate_specs()):
            if spec.layer == layer:
                local = gates[k].new_zeros(4, 4).index_copy(1, torch.tensor(spec.columns), gates[k])
                a = spec.pair[0]
                state = (
                    torch.kron(
                        torch.kron(torch.eye(2**a, dtype=torch.float64), local),
                        torch.eye(2 ** (q - a - 2), dtype=torch.float64),
                    )
                    @ state
                )
    return state


def test_index_order_and_init_are_checked():
    with pytest.raises(ValueError, match="index_order"):
        ADTN((4, 4), index_order="columns_first")
    with pytest.raises(ValueError, match="init"):
        ADTN((4, 4), init="zeros")


@pytest.mark.parametrize("init", ["orthogonal", "near_identity", "normal"])
def test_initialisations_give_finite_weights_of_the_dense_layers_size(init):
    shape = (64, 128)
    for depth in (1, 3, 6):
        torch.manual_seed(depth)
        adtn = ADTN(shape, depth=depth, init=init)
        with torch.no_grad():
            weight = adtn()
        assert torch.isfinite(weight).all()
        ratio = weight.std().item() / pytorch_default_std(shape)
        assert 0.5 < ratio < 2.0, (init, depth, ratio)
        assert all(g.shape == (4, len(s.columns)) for g, s in zip(adtn.gates, adtn.gate_specs()))


def test_initialisations_differ_as_described():
    torch.manual_seed(12)
    near = ADTN((16, 16), depth=2, init="near_identity")
    normal = ADTN((16, 16), depth=2, init="normal")
    for spec, gate in zip(near.gate_specs(), near.gates):
        identity = torch.eye(4)[:, list(spec.columns)]
        assert (gate - identity).abs().max() < 0.6  # identity plus small noise
        assert not torch.equal(gate, identity)
    # Near the identity the network passes most of its product state through: the weight's
    # first entry (all bits 0) dominates.
    with torch.no_grad():
        weight = near.contract()
    assert weight.abs().argmax().item() == 0
    entries = torch.cat([g.detach().reshape(-1) for g in normal.gates])
    assert 0.3 < entries.std().item() < 0.7 and abs(entries.mean().item()) < 0.2
    # reset_parameters draws again with the same scheme and keeps the scale
    before = [g.detach().clone() for g in near.gates]
    near.reset_parameters(torch.Generator().manual_seed(1))
    assert all(not torch.equal(a, b) for a, b in zip(before, near.gates))


def generated_weight(shape, depth, seed):
    """A weight that an ADTN of the same structure (randomised gates) generates."""
    generator = torch.Generator().manual_seed(seed)
    teacher = ADTN(shape, depth=depth, generator=generator)
    with torch.no_grad():
        for gate in teacher.gates:
            gate.add_(0.4 * torch.randn(gate.shape, generator=generator))
        return teacher().detach()


@pytest.mark.parametrize("shape, depth, seed", [((16, 32), 2, 101), ((8, 8, 3, 3), 2, 102)])
def test_fit_with_restarts_reaches_generated_weights(shape, depth, seed):
    target = generated_weight(shape, depth, seed)
    torch.manual_seed(seed)
    student = ADTN(shape, depth=depth)
    with torch.no_grad():
        before = ((student() - target).norm() / target.norm()).item()
    after = student.fit(target, steps=500)
    assert after < 0.1 < before
    with torch.no_grad():  # the ADTN keeps the parameters that reached it
        assert ((student() - target).norm() / target.norm()).item() == pytest.approx(after)


def test_repeated_steps_reusing_buffers_give_the_same_gradients_as_fresh_modules(monkeypatch):
    """The CPU backward pass hands its states on to the next step (BufferPool): steps with
    updates in between must match a module that has never run."""
    monkeypatch.setattr("engine.adtn_kernel.POOL_MIN_NUMEL", 0)  # pool even these small states
    torch.manual_seed(13)
    used = randomised(ADTN((20, 24), depth=3, memory="fast").double())
    upstream = torch.randn(20, 24, dtype=torch.float64)
    for _ in range(3):
        fresh = ADTN((20, 24), depth=3, memory="fast").double()
        fresh.load_state_dict(used.state_dict())
        used.zero_grad(set_to_none=True)
        weight = used()
        (weight * upstream).sum().backward()
        (fresh() * upstream).sum().backward()
        torch.testing.assert_close(weight, fresh(), rtol=0, atol=0)
        for a, b in zip(used.parameters(), fresh.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
        with torch.no_grad():
            for gate, grad in zip(used.gates, used.gate_grads()):
                gate.sub_(0.1 * grad)
    assert used.buffer_pool.free  # the buffers were indeed reused
    assert len(used.buffer_pool.free) <= used.buffer_pool.limit


def test_contract_keeps_its_result_when_the_network_runs_again():
    torch.manual_seed(14)
    adtn = randomised(ADTN((16, 16), depth=3).double())
    first = adtn.contract()
    kept = first.detach().clone()
    first.sum().backward()
    for _ in range(2):
        (adtn() * 2).sum().backward()
    torch.testing.assert_close(first.detach(), kept, rtol=0, atol=0)


def test_copies_leave_the_reused_buffers_behind(monkeypatch):
    import copy

    monkeypatch.setattr("engine.adtn_kernel.POOL_MIN_NUMEL", 0)  # pool even these small states

    torch.manual_seed(15)
    adtn = ADTN((32, 32), depth=3)
    (adtn() * torch.randn(32, 32)).sum().backward()
    assert adtn.buffer_pool.free
    clone = copy.deepcopy(adtn)
    assert not clone.buffer_pool.free
    with torch.no_grad():
        torch.testing.assert_close(clone(), adtn(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "shape, layout, block_bits, index_order",
    [
        ((120, 400), "brick", 4, "interleaved"),
        ((7, 9, 5), "brick", 2, "rows_first"),
        ((32, 64), "brick", 6, "interleaved"),
        ((64, 64), "brick", 5, "rows_first"),
        ((12, 20), "stair", 3, "rows_first"),
    ],
)
def test_hand_written_matrix_gradients_match_autograd(shape, layout, block_bits, index_order):
    """The gates' gradients through ``MatrixBuilder`` equal autograd through the
    differentiable reference builder ``ADTN._matrices``."""
    from engine.adtn_kernel import NetworkState

    torch.manual_seed(16)
    adtn = ADTN(shape, depth=3, layout=layout, block_bits=block_bits, index_order=index_order)
    adtn = randomised(adtn.double())
    target = torch.randn(shape, dtype=torch.float64)
    (adtn() * target).sum().backward()
    built = [p.grad.clone() for p in adtn.parameters()]
    adtn.zero_grad()
    plan, recipe = adtn._compiled()[0][True], adtn._compiled()[1]
    mats = adtn._matrices(recipe)
    order = adtn._weight_gather(torch.device("cpu"))
    weight = NetworkState.apply(plan, False, order, None, None, adtn.scale, *mats)
    (weight * target).sum().backward()
    for mine, reference in zip(built, [p.grad for p in adtn.parameters()]):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)


def test_a_backward_pass_uses_its_own_forward_pass_matrices_after_a_later_forward_pass():
    """The builder's matrices live in one buffer that each forward pass rewrites: a backward
    pass whose forward pass was followed by another (here with other gates) must still give
    the gradients of its own forward pass, and a kept graph the same gradients twice."""
    import copy

    torch.manual_seed(17)
    adtn = randomised(ADTN((12, 20), depth=3, index_order="interleaved").double())
    reference = copy.deepcopy(adtn)
    upstream = torch.randn(12, 20, dtype=torch.float64)
    (reference() * upstream).sum().backward()
    weight = adtn()
    with torch.no_grad():
        for gate in adtn.gates:
            gate.mul_(1.5)
        adtn()  # rewrites the shared matrices with the changed gates
    (weight * upstream).sum().backward(retain_graph=True)
    for got, ref in zip(adtn.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, ref.grad, rtol=1e-12, atol=1e-12)
    first = [p.grad.clone() for p in adtn.parameters()]
    adtn.zero_grad(set_to_none=True)
    (weight * upstream).sum().backward()
    for got, ref in zip(adtn.parameters(), first):
        torch.testing.assert_close(got.grad, ref, rtol=0, atol=0)


def test_gates_are_one_parameter_with_per_gate_views():
    adtn = ADTN((12, 20), depth=3)
    named = dict(adtn.named_parameters())
    assert list(named) == ["gate_values", "scale"]
    assert adtn.gate_values.numel() == adtn.num_parameters(tensors_only=True)
    assert [tuple(g.shape) for g in adtn.gates] == [(4, len(s.columns)) for s in adtn.specs]
    with torch.no_grad():
        adtn.gates[3].mul_(2.0)  # a view: the change reaches the parameter
    assert torch.equal(adtn.gates[3], adtn._views_of(adtn.gate_values.detach())[3])
    assert all(g is None for g in adtn.gate_grads())
    (adtn() * torch.randn(12, 20)).sum().backward()
    flat_grad = torch.cat([g.reshape(-1) for g in adtn.gate_grads()])
    assert torch.equal(flat_grad.sort().values, adtn.gate_values.grad.sort().values)


def test_state_dict_keeps_one_entry_per_gate_and_loads_back():
    torch.manual_seed(0)
    source = ADTN((12, 20), depth=3)
    state = source.state_dict()
    assert list(state) == [f"gates.{i}" for i in range(len(source.specs))] + ["scale"]
    assert all(tuple(state[f"gates.{i}"].shape) == (4, len(s.columns)) for i, s in
               enumerate(source.specs))  # fmt: skip
    target = ADTN((12, 20), depth=3)
    assert not torch.equal(target(), source())
    target.load_state_dict(state)
    torch.testing.assert_close(target(), source(), rtol=0, atol=0)
    # inside a model, under a prefix
    model, other = torch.nn.Sequential(ADTN((6, 9), 2)), torch.nn.Sequential(ADTN((6, 9), 2))
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other[0](), model[0](), rtol=0, atol=0)


def test_state_dict_with_a_wrong_gate_shape_or_a_missing_gate_is_refused():
    source = ADTN((12, 20), depth=2)
    bad_shape = source.state_dict()
    bad_shape["gates.2"] = torch.zeros(2, 8)
    with pytest.raises(RuntimeError, match=r"size mismatch for gates.2"):
        ADTN((12, 20), depth=2).load_state_dict(bad_shape)
    missing = source.state_dict()
    del missing["gates.0"]
    with pytest.raises(RuntimeError, match="gate_values"):
        ADTN((12, 20), depth=2).load_state_dict(missing)
