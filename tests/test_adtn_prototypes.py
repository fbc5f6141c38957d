"""The research prototype (benchmarks/adtn_prototypes.py) builds the engine's ADTN exactly for
gates on pairs, and the naive explicit-matrix contraction for gates on three indices."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from engine.adtn import ADTN

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "adtn_prototypes.py"


@pytest.fixture(scope="module")
def prototypes():
    spec = importlib.util.spec_from_file_location("adtn_prototypes", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["adtn_prototypes"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("adtn_prototypes", None)


def network_class(prototypes, gate_bits: int, activation: str = ""):
    return type(
        "Probe",
        (prototypes.GateNetwork,),
        {"gate_bits": gate_bits, "activation_override": activation},
    )


@pytest.mark.parametrize("index_order", ["rows_first", "interleaved"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "none"])
def test_pairs_reproduce_the_engine(prototypes, index_order, activation):
    torch.manual_seed(0)
    shape, depth = (5, 12), 3
    engine = ADTN(shape, depth, activation, index_order=index_order)
    proto = network_class(prototypes, 2)(shape, depth, activation, index_order=index_order)
    assert [g.shape for g in proto.gates] == [g.shape for g in engine.gates]
    assert proto.num_parameters() == engine.num_parameters()
    assert type(proto).count_parameters(shape, depth) == ADTN.count_parameters(shape, depth)
    with torch.no_grad():
        for mine, theirs in zip(proto.gates, engine.gates):
            theirs.add_(0.3 * torch.randn_like(theirs))
            mine.copy_(theirs)
        proto.scale.copy_(engine.scale)
    torch.testing.assert_close(proto(), engine(), rtol=1e-5, atol=1e-6)


def naive_three_index(net) -> torch.Tensor:
    """Each gate as an explicit 2^Q × 2^Q matrix; rms normalised before and after a smooth
    activation; rows-first order."""
    q = net.Q
    state = torch.zeros(2**q, dtype=torch.float64)
    state[0] = 1.0
    previous = 0
    for spec, gate in zip(net.specs, net.gates):
        if spec.layer != previous:
            previous = spec.layer
            state = state / state.square().mean().sqrt()
            state = torch.tanh(state)
            state = state / state.square().mean().sqrt()
        size = 1 << spec.bits
        local = torch.zeros(size, size, dtype=torch.float64)
        local[:, list(spec.columns)] = gate.detach().double()
        left = torch.eye(2**spec.start, dtype=torch.float64)
        right = torch.eye(2 ** (q - spec.start - spec.bits), dtype=torch.float64)
        state = torch.kron(torch.kron(left, local), right) @ state
    tensor = state.reshape(net.padded_shape)[tuple(slice(0, d) for d in net.shape)]
    return float(net.scale.detach()) * tensor / tensor.square().mean().sqrt()


def test_three_index_gates_against_explicit_matrices(prototypes):
    torch.manual_seed(1)
    net = network_class(prototypes, 3, "tanh")((6, 7), 2, "relu")  # Q = 6: gates of 3 and 2
    assert {s.bits for s in net.specs} == {2, 3}
    # first layer: a gate on three fresh indices keeps one column; every cut is crossed
    assert net.specs[0].columns == (0,) and net.gates[0].shape == (8, 1)
    crossed = {c for s in net.specs if s.layer == 0 for c in range(s.start, s.start + s.bits - 1)}
    assert crossed == set(range(net.Q - 1))
    with torch.no_grad():
        for gate in net.gates:
            gate.add_(0.3 * torch.randn_like(gate))
    torch.testing.assert_close(net().double(), naive_three_index(net), rtol=1e-5, atol=1e-6)
    assert type(net).count_parameters((6, 7), 2) == net.num_parameters()


def test_gradients_reach_every_gate(prototypes):
    net = network_class(prototypes, 3, "gelu")((10, 30), 2, "relu", index_order="interleaved")
    net().square().sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in net.gates)


def test_annealing_goes_from_the_linear_network_to_the_relu_one(prototypes):
    torch.manual_seed(2)
    annealed = type("Annealed", (prototypes.GateNetwork,), {"anneal_steps": 4})((6, 10), 3)
    linear = network_class(prototypes, 2, "none")((6, 10), 3)
    relu = network_class(prototypes, 2, "relu")((6, 10), 3)
    with torch.no_grad():
        for gates in zip(annealed.gates, linear.gates, relu.gates):
            gates[0].add_(0.3 * torch.randn_like(gates[0]))
            for other in gates[1:]:
                other.copy_(gates[0])
    with torch.no_grad():  # passes without gradients (evaluation) do not advance the schedule
        torch.testing.assert_close(annealed(), linear())
    assert annealed.annealed_slope() == 1.0
    slopes = []
    for _ in range(5):
        slopes.append(annealed.annealed_slope())
        weight = annealed()
    assert slopes == [1.0, 0.75, 0.5, 0.25, None]
    torch.testing.assert_close(weight, relu())
    assert not torch.allclose(weight, linear())


def test_residual_layers_add_their_input(prototypes):
    torch.manual_seed(3)
    net = type("Residual", (prototypes.GateNetwork,), {"residual": True})((5, 6), 3)
    with torch.no_grad():
        for gate in net.gates:
            gate.add_(0.3 * torch.randn_like(gate))
    q = net.Q
    state = torch.zeros(2**q, dtype=torch.float64)
    state[0] = 1.0
    for layer in range(net.depth):
        matrix = torch.eye(2**q, dtype=torch.float64)
        for spec, gate in zip(net.specs, net.gates):
            if spec.layer == layer:
                local = torch.zeros(4, 4, dtype=torch.float64)
                local[:, list(spec.columns)] = gate.detach().double()
                left = torch.eye(2**spec.start, dtype=torch.float64)
                right = torch.eye(2 ** (q - spec.start - 2), dtype=torch.float64)
                matrix = torch.kron(torch.kron(left, local), right) @ matrix
        if layer:
            state = torch.relu(state)
            state = state / state.square().mean().sqrt()
            state = state + matrix @ state
        else:
            state = matrix @ state
    tensor = state.reshape(net.padded_shape)[tuple(slice(0, d) for d in net.shape)]
    expected = float(net.scale.detach()) * tensor / tensor.square().mean().sqrt()
    torch.testing.assert_close(net().double(), expected, rtol=1e-5, atol=1e-6)
