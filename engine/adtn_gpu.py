"""The ADTN's gate passes on the GPU: the same passes as the CPU's native kernel
(``adtn_native.GatePass``), run by Triton kernels (``adtn_gpu_kernels``) that keep a tile in
registers while every gate of the pass is applied to it, instead of one matrix product (one trip
through GPU memory, at four times a gate's arithmetic) per block of gates.

``available()`` says whether CUDA contractions may use them: Triton imports, a GPU is there,
and a first small pass on it agrees with a plain reference (otherwise the engine keeps its
matrix products and says why once in the log). ``ADTN_NATIVE_KERNEL=0`` turns them off with
the CPU's kernel. Under Triton's interpreter (``TRITON_INTERPRET=1``) the same kernels run on
CPU tensors: that is how the tests check them on a machine without a GPU
(``tests/test_adtn_gpu.py``, which also compiles them for an H100).
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

# A program's tile: at most this many numbers, held in the registers of NUM_WARPS warps.
MAX_TILE = 4096
MIN_COLUMNS = 16  # (consecutive numbers per row of a tile: coalesced loads)
NUM_WARPS = 8
POSITION_BITS = 5  # (steps' tile-bit positions packed into one integer)
# Smaller states stay on the matrix products: there a GPU step is kernel launches and host
# synchronisations (each pass returns its sums to Python), which the passes do not reduce.
# A first guess, not measured on a GPU yet (benchmarks/adtn_overhead.py --device cuda).
MIN_BITS = 16

_lock = threading.Lock()
_state: dict = {"checked": None, "error": None}


def kernels() -> ModuleType:
    """The kernels module (ImportError where Triton is missing). Under Triton's interpreter
    (``TRITON_INTERPRET=1`` before Triton is first imported) its kernels run on CPU tensors."""
    return importlib.import_module("engine.adtn_gpu_kernels")


def launch_shape(gate_pass) -> tuple[int, int, int, int]:
    """(programs, rows, columns, tile bits) of a pass on the GPU: the pass's own tile where
    its steps read the tile's columns (the last bits of the state), else as many columns as
    keep the tile within ``MAX_TILE`` numbers."""
    p = gate_pass
    columns = p.T
    if all(kind == 0 and view == 0 for kind, view, _ in p.steps):
        columns = max(MIN_COLUMNS, min(p.T, MAX_TILE >> p.w))
    bits = p.w + columns.bit_length() - 1
    return p.L * (p.R // columns), 1 << p.w, columns, bits


def tile_positions(gate_pass, tile_bits: int) -> list[int]:
    """Each step's first bit within the tile's flat index (bit 0 the most significant): a
    gate on rows of the tile viewed at any width keeps its position (the rows' bits lead); a
    gate of a Kronecker block on the last ``b`` bits sits ``tile_bits - b`` further on."""
    positions = []
    for k, (kind, view, position) in enumerate(gate_pass.steps):
        if kind == 1:
            position += tile_bits - (view.bit_length() - 1)
        if not 0 <= position <= tile_bits - 2:
            raise ValueError(f"step {k} of the pass leaves its tile")
        positions.append(position)
    return positions


def packed_positions(gate_pass, tile_bits: int) -> int:
    """``tile_positions`` packed ``POSITION_BITS`` bits each, as the kernels read them."""
    return sum(p << (POSITION_BITS * k) for k, p in enumerate(tile_positions(gate_pass, tile_bits)))


def pass_forward(state, out, gate_pass, gates, slope=None, squares=False) -> float | None:
    """As ``adtn_native.pass_forward``, on the GPU (CPU tensors under the interpreter)."""
    programs, rows, columns, bits = launch_shape(gate_pass)
    sums = state.new_empty(programs if squares else 1)
    try:
        kernels().pass_forward_kernel[(programs,)](
            state, out, gates, sums, gate_pass.R, float(slope or 0.0),
            ROWS=rows, T=columns, TB=bits, STEPS=packed_positions(gate_pass, bits),
            N=gate_pass.count, ACTIVATE=slope is not None, SQUARES=squares,
            num_warps=NUM_WARPS,
        )  # fmt: skip
    except Exception as failure:  # noqa: BLE001 (a pass this device cannot compile or run)
        _give_up(failure)
        result = _reference(state, gate_pass, gates)
        if slope is not None:
            result = torch.where(result > 0, result, result * slope)
        out.copy_(result.to(out.dtype))
        return float(out.double().square().sum()) if squares else None
    return float(sums.double().sum()) if squares else None


def pass_backward(
    state, grad_out, grad_in, gate_pass, gates, grad_gates, dot=False
) -> float | None:
    """As ``adtn_native.pass_backward``, on the GPU (CPU tensors under the interpreter)."""
    programs, rows, columns, bits = launch_shape(gate_pass)
    partial = state.new_empty(programs, 16 * gate_pass.count)
    dots = state.new_empty(programs if dot else 1)
    target = grad_in if grad_in is not None else torch.empty_like(grad_out)
    try:
        kernels().pass_backward_kernel[(programs,)](
            state, grad_out, target, gates, partial, dots, gate_pass.R,
            ROWS=rows, T=columns, TB=bits, STEPS=packed_positions(gate_pass, bits),
            N=gate_pass.count, DOT=dot, num_warps=NUM_WARPS,
        )  # fmt: skip
    except Exception as failure:  # noqa: BLE001 (a pass this device cannot compile or run)
        _give_up(failure)
        with torch.enable_grad():
            leaf_state = state.detach().double().requires_grad_()
            leaf_gates = gates.detach().double().requires_grad_()
            _reference(leaf_state, gate_pass, leaf_gates).backward(grad_out.double())
        assert leaf_state.grad is not None and leaf_gates.grad is not None
        target.copy_(leaf_state.grad)
        grad_gates.view(-1).copy_(leaf_gates.grad.view(-1))
        return float(torch.dot(leaf_state.detach(), leaf_state.grad)) if dot else None
    grad_gates.view(-1).copy_(partial.sum(0, dtype=torch.float64))
    return float(dots.double().sum()) if dot else None


def _give_up(failure: Exception) -> None:
    """A pass failed to compile or launch: this one is computed by tensor contractions
    instead, and later contractions use the matrix products (said once in the log)."""
    if _state["checked"] is not False:
        first_line = (str(failure).splitlines() or [""])[0]
        logger.warning(
            "A Triton gate pass failed (%s: %s); ADTNs on the GPU use matrix products from the "
            "next step on.", type(failure).__name__, first_line,
        )  # fmt: skip
    _state["checked"], _state["error"] = False, f"a pass failed: {type(failure).__name__}"


def available() -> bool:
    """Whether CUDA contractions may run as Triton gate passes (checked once: Triton, a GPU,
    and a small pass that agrees with a plain reference)."""
    if _state["checked"] is None:
        with _lock:
            checked, error = False, None
            try:
                checked, error = _check_on_gpu()
            except Exception as failure:  # noqa: BLE001 (any failure means: not available)
                error = f"{type(failure).__name__}: {failure}"
            if error and torch.cuda.is_available():
                logger.warning("Triton gate passes are not available (%s); the GPU uses "
                               "matrix products.", error)  # fmt: skip
            _state["checked"], _state["error"] = checked, error
    return bool(_state["checked"])


def describe() -> str:
    """How CUDA contractions run here, in words (for the self-test)."""
    if available():
        return "Triton gate passes"
    return f"matrix products ({_state['error']})"


def _check_on_gpu() -> tuple[bool, str | None]:
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    kernels()  # (ImportError where Triton is missing)
    from engine import adtn_native

    bits = 10
    first = [(a, a + 1) for a in range(0, bits - 1, 2)]
    second = [(a, a + 1) for a in range(1, bits - 1, 2)]
    planned = adtn_native.plan_brick_layer(first, second, bits)
    assert planned is not None
    generator = torch.Generator().manual_seed(0)
    gates = torch.randn(len(first) + len(second), 16, generator=generator) / 2
    state = torch.randn(1 << bits, generator=generator)
    expected, current = state.clone(), state.cuda()
    for spec in planned:
        gate_pass = adtn_native.make_pass(-1, 0, spec)
        chosen = gates[list(spec[0])].contiguous()
        out = torch.empty_like(current)
        pass_forward(current, out, gate_pass, chosen.cuda())
        current = out
        reference = torch.empty_like(expected)
        reference_pass(expected, reference, gate_pass, chosen)
        expected = reference
    error = float((current.cpu() - expected).abs().max() / expected.abs().max())
    if error > 1e-4:
        return False, f"a test pass differs from the reference by {error:.1e}"
    return True, None


def reference_pass(state, out, gate_pass, gates) -> None:
    """``out`` = the pass applied to ``state`` by plain tensor contractions in float64: the
    reference the kernels are checked against."""
    out.copy_(_reference(state, gate_pass, gates).to(out.dtype))


def _reference(state, gate_pass, gates) -> torch.Tensor:
    """The pass applied to ``state`` by tensor contractions, in float64 (differentiable)."""
    _, _, columns, bits = launch_shape(gate_pass)
    tile = state.double().view(gate_pass.L, 1 << gate_pass.w, gate_pass.R // columns, columns)
    tile = tile.permute(0, 2, 1, 3).reshape(-1, *([2] * bits))
    matrices = gates.double().reshape(-1, 4, 4)
    for k, position in enumerate(tile_positions(gate_pass, bits)):
        pair = matrices[k].view(2, 2, 2, 2)
        axes = (position + 1, position + 2)
        tile = torch.tensordot(tile, pair, dims=(axes, (2, 3)))
        tile = torch.movedim(tile, (-2, -1), axes)
    tile = tile.reshape(gate_pass.L, gate_pass.R // columns, 1 << gate_pass.w, columns)
    return tile.permute(0, 2, 1, 3).reshape(-1)
