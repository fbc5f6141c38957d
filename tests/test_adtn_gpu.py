"""The GPU's gate passes (engine/adtn_gpu.py, Triton kernels), without a GPU: run under Triton's
interpreter on CPU tensors against a plain reference and through a whole ADTN, and compiled for
an H100 (sm_90a) to prove that the real compiler takes them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine import adtn_native

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def run_interpreted(script: str) -> str:
    """Runs ``script`` in a fresh interpreter with Triton's interpreter on (it must be set
    before Triton is first imported); returns its output."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_passes_match_the_reference_forward_and_backward_under_the_interpreter():
    output = run_interpreted(
        """
        import torch
        from engine import adtn_gpu, adtn_native

        def reference(state, gates, starts, bits):
            tensor = state.double().view([2] * bits)
            for gate, a in zip(gates, starts):
                pair = gate.double().view(2, 2, 2, 2)
                tensor = torch.tensordot(pair, tensor, dims=([2, 3], [a, a + 1]))
                tensor = torch.movedim(tensor, (0, 1), (a, a + 1))
            return tensor.reshape(-1)

        for bits, layout in ((8, "brick"), (11, "brick"), (13, "brick"), (14, "halves")):
            torch.manual_seed(bits)
            first = [(a, a + 1) for a in range(0, bits - 1, 2)]
            second = [(a, a + 1) for a in range(1, bits - 1, 2)]
            if layout == "brick":
                plan = adtn_native.plan_brick_layer(first, second, bits)
            else:
                plan = list(adtn_native.plan_passes(first, bits)) + [
                    ([k + len(first) for k in spec[0]], *spec[1:])
                    for spec in adtn_native.plan_passes(second, bits)
                ]
            starts = [a for a, _ in first + second]
            gates = 0.6 * torch.randn(len(starts), 4, 4)
            state, grad_out = torch.randn(1 << bits), torch.randn(1 << bits)
            inputs, current = [], state.clone()
            for spec in plan:
                inputs.append(current)
                out = torch.empty_like(current)
                gate_pass = adtn_native.make_pass(-1, 0, spec)
                adtn_gpu.pass_forward(current, out, gate_pass, gates[spec[0]].contiguous())
                current = out
            leaf_state = state.double().requires_grad_()
            leaf_gates = gates.double().requires_grad_()
            exact = reference(leaf_state, leaf_gates, starts, bits)
            (exact * grad_out.double()).sum().backward()
            grad, grad_gates = grad_out.clone(), torch.zeros_like(gates)
            for spec, pass_input in zip(reversed(plan), reversed(inputs)):
                part = torch.empty(len(spec[0]), 16)
                gate_pass = adtn_native.make_pass(-1, 0, spec)
                adtn_gpu.pass_backward(
                    pass_input, grad, grad, gate_pass, gates[spec[0]].contiguous(), part
                )
                grad_gates[spec[0]] = part.view(-1, 4, 4)
            errors = [
                float((mine.double() - ref).abs().max() / ref.abs().max())
                for mine, ref in (
                    (current, exact.detach()),
                    (grad, leaf_state.grad),
                    (grad_gates, leaf_gates.grad),
                )
            ]
            print(bits, layout, len(plan), *errors)
        # (the kernels ran: a failed launch would have fallen back to tensor contractions)
        assert adtn_gpu._state["error"] is None, adtn_gpu._state["error"]
        """
    )
    lines = [line.split() for line in output.strip().splitlines()]
    assert [(line[0], line[1]) for line in lines] == [
        ("8", "brick"),
        ("11", "brick"),
        ("13", "brick"),
        ("14", "halves"),
    ]
    assert [int(line[2]) for line in lines] == [1, 1, 2, 4]  # (two passes per half-layer)
    for line in lines:
        assert all(float(error) < 1e-5 for error in line[3:]), line


def test_an_adtn_through_the_gpu_passes_matches_the_matrix_products():
    """The whole contraction (both memory modes) with its passes routed to the GPU's kernels,
    run by the interpreter; the tensors stay on the CPU, so only the routing is forced."""
    output = run_interpreted(
        """
        import copy
        import torch
        from engine import adtn_native
        from engine.adtn import ADTN

        from engine import adtn_gpu

        adtn_native.on_gpu = lambda tensor: True  # every pass to engine.adtn_gpu
        for shape, memory in (((10, 256), "fast"), ((84, 120), "fast"), ((84, 120), "low")):
            torch.manual_seed(0)
            gpu = ADTN(shape, 3, index_order="interleaved", memory=memory)
            products = copy.deepcopy(gpu)
            products.kernel = "matmul"
            assert gpu._native_for(gpu.gate_values)
            upstream = torch.randn(shape)
            errors = []
            weights = []
            for adtn in (gpu, products):
                weight = adtn()
                (weight * upstream).sum().backward()
                weights.append(weight.detach())
            errors.append(float((weights[0] - weights[1]).abs().max() / weights[1].abs().max()))
            for a, b in zip(gpu.parameters(), products.parameters()):
                errors.append(float((a.grad - b.grad).abs().max() / b.grad.abs().max()))
            print(shape[0], memory, *errors)
        assert adtn_gpu._state["error"] is None, adtn_gpu._state["error"]  # (no fallback)
        """
    )
    lines = [line.split() for line in output.strip().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert all(float(error) < 1e-4 for error in line[2:]), line


@pytest.mark.parametrize("layout", ["brick", "halves"])
def test_the_kernels_compile_for_an_h100(layout):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from engine import adtn_gpu, adtn_gpu_kernels

    bits = 10
    first = [(a, a + 1) for a in range(0, bits - 1, 2)]
    second = [(a, a + 1) for a in range(1, bits - 1, 2)]
    if layout == "brick":
        spec = adtn_native.plan_brick_layer(first, second, bits)[0]
    else:
        spec = adtn_native.plan_passes(first, bits)[-1]
    gate_pass = adtn_native.make_pass(-1, 0, spec)
    _, rows, columns, tile_bits = adtn_gpu.launch_shape(gate_pass)
    shape = {
        "ROWS": rows,
        "T": columns,
        "TB": tile_bits,
        "STEPS": adtn_gpu.packed_positions(gate_pass, tile_bits),
        "N": gate_pass.count,
    }
    pointers = {"x_ptr": "*fp32", "g_ptr": "*fp32", "R": "i64"}
    kernels = (
        (
            adtn_gpu_kernels.pass_forward_kernel,
            {**pointers, "out_ptr": "*fp32", "squares_ptr": "*fp32", "slope": "fp32"},
            {**shape, "ACTIVATE": True, "SQUARES": True},
        ),
        (
            adtn_gpu_kernels.pass_backward_kernel,
            {**pointers, "grad_out_ptr": "*fp32", "grad_in_ptr": "*fp32", "d_gates_ptr": "*fp32"}
            | {"dot_ptr": "*fp32"},
            {**shape, "DOT": True},
        ),
    )
    for kernel, signature, constants in kernels:
        signature = {**signature, **{name: "constexpr" for name in constants}}
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constants),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": adtn_gpu.NUM_WARPS},
        )
        assert compiled.asm["cubin"]  # (ptxas took the PTX: the kernel builds for sm_90a)


def test_without_a_gpu_the_gpu_passes_are_not_available():
    from engine import adtn_gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert not adtn_gpu.available()
    assert "no CUDA device" in adtn_gpu.describe()


def test_a_step_outside_its_tile_is_refused():
    from engine import adtn_gpu

    gate_pass = adtn_native.make_pass(-1, 0, ([0], 1, 4, 16, 16, 16, ((0, 0, 7),)))
    with pytest.raises(ValueError, match="leaves its tile"):
        adtn_gpu.packed_positions(gate_pass, 8)


@pytest.mark.parametrize("bits", [10, 13])
def test_the_self_checks_reference_is_the_brick_layer(bits):
    """``available()`` on a GPU compares a pass with ``reference_pass``: that reference must
    itself be the layer (checked against plain contractions over the whole state)."""
    from engine import adtn_gpu

    torch.manual_seed(bits)
    first = [(a, a + 1) for a in range(0, bits - 1, 2)]
    second = [(a, a + 1) for a in range(1, bits - 1, 2)]
    gates = torch.randn(len(first) + len(second), 4, 4)
    state = torch.randn(1 << bits)
    current = state
    for spec in adtn_native.plan_brick_layer(first, second, bits):
        out = torch.empty_like(current)
        gate_pass = adtn_native.make_pass(-1, 0, spec)
        adtn_gpu.reference_pass(current, out, gate_pass, gates[spec[0]].reshape(-1, 16))
        current = out
    expected = state.double().view([2] * bits)
    for gate, (a, _) in zip(gates, first + second):
        pair = gate.double().view(2, 2, 2, 2)
        expected = torch.tensordot(pair, expected, dims=([2, 3], [a, a + 1]))
        expected = torch.movedim(expected, (0, 1), (a, a + 1))
    size = expected.abs().max().item()  # (the passes store float32 between them)
    torch.testing.assert_close(current.double(), expected.reshape(-1), rtol=1e-5, atol=1e-6 * size)


def test_a_pass_that_fails_to_launch_is_computed_anyway_and_the_gpu_gives_up(monkeypatch, caplog):
    from engine import adtn_gpu

    def broken():
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(adtn_gpu, "kernels", broken)
    monkeypatch.setitem(adtn_gpu._state, "checked", True)
    monkeypatch.setitem(adtn_gpu._state, "error", None)
    torch.manual_seed(0)
    bits = 10
    first = [(a, a + 1) for a in range(0, bits - 1, 2)]
    second = [(a, a + 1) for a in range(1, bits - 1, 2)]
    (spec,) = adtn_native.plan_brick_layer(first, second, bits)
    gate_pass = adtn_native.make_pass(-1, 0, spec)
    gates = 0.5 * torch.randn(gate_pass.count * 16)
    state, grad_out = torch.randn(1 << bits), torch.randn(1 << bits)
    out = torch.empty_like(state)
    with caplog.at_level("WARNING", logger="engine.adtn_gpu"):
        squares = adtn_gpu.pass_forward(state, out, gate_pass, gates, slope=0.0, squares=True)
    expected = torch.empty_like(state)
    adtn_gpu.reference_pass(state, expected, gate_pass, gates)
    torch.testing.assert_close(out, expected.relu())
    assert squares == pytest.approx(float(expected.relu().double().square().sum()), rel=1e-5)
    assert "Triton gate pass failed" in caplog.text and not adtn_gpu.available()

    grad_in, grad_gates = torch.empty_like(state), torch.empty(gate_pass.count, 16)
    dot = adtn_gpu.pass_backward(state, grad_out, grad_in, gate_pass, gates, grad_gates, True)
    leaf_state, leaf_gates = state.double().requires_grad_(), gates.double().requires_grad_()
    (adtn_gpu._reference(leaf_state, gate_pass, leaf_gates) * grad_out.double()).sum().backward()
    torch.testing.assert_close(grad_in.double(), leaf_state.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_gates.view(-1).double(), leaf_gates.grad, rtol=1e-5, atol=1e-4)
    assert dot == pytest.approx(float(state.double() @ leaf_state.grad), rel=1e-5)
