"""A brick ADTN's training-mode contraction on the CPU in one native call each way
(``adtn_native_network.c``): growth, gate passes, gather and scaling forward, and all of it
back, over the compiled plan packed once as a *program* of numbers.

This is ``adtn_kernel.NetworkState`` for the commonest case (brick layout, even ``Q``, stored
mode, a weight gathered by row and column tables or the state itself), with the same
arithmetic in the same order; what it leaves out is the interpreter's and the tensor
library's work between the kernels, a few dozen small operations per step. Every other case
keeps ``NetworkState``.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from engine import adtn_native
from engine.adtn_kernel import _graph_is_kept

ALIGN = 16  # floats: each region of the memory block starts on a 64-byte boundary


@dataclass(frozen=True)
class NetworkProgram:
    """A plan packed for the native network calls: ``code`` (a ctypes int64 array, see the
    C file's header), the size of the memory block both calls share, the number of layers
    after the first (each has a normalisation factor), and the weight's shape."""

    code: ctypes.Array
    numel: int
    layers: int
    shape: tuple[int, ...]
    raw_at: int  # where the raw weight lies in the block


def _aligned(numel: int) -> int:
    return -(-numel // ALIGN) * ALIGN


def compile_program(plan, gate_count: int) -> NetworkProgram | None:
    """The program of ``plan`` (an ``adtn_kernel.Plan``) for gates laid out in a flat vector
    of ``gate_count`` numbers, or None where the plan is not one the native calls run: its
    first layer grown from the gates (``Plan.growth``) and every later step a gate pass."""
    growth, grow = plan.growth, plan.grow
    if growth is None or grow is None or not plan.flat_gates:
        return None
    passes = [list(layer) for layer in plan.fast[1:]]
    if not passes or not all(
        layer and all(isinstance(step, adtn_native.GatePass) for step in layer) for layer in passes
    ):
        return None
    numels = grow[1]
    size = 1 << plan.num_bits
    if numels[-1] != size or len(growth.kinds) != len(numels) - 1:
        return None
    flat_passes = [step for layer in passes for step in layer]
    # The memory block: the number 1, the growth's inner states, every pass's input and the
    # output state, the raw weight, a copy of the gates.
    at = ALIGN
    grow_at = [0]
    for numel in numels[1:-1]:
        grow_at.append(at)
        at += _aligned(numel)
    state_at = []
    for _ in range(len(flat_passes) + 1):
        state_at.append(at)
        at += _aligned(size)
    grow_at.append(state_at[0])
    rows = math.prod(plan.shape[:-1])
    columns = plan.shape[-1]
    raw_at = at
    at += _aligned(rows * columns)
    gates_at = at
    at += _aligned(gate_count)
    code = [
        plan.num_bits, len(growth.kinds), len(passes), len(flat_passes),
        int(plan.slope is not None), int(plan.normalise), rows, columns,
    ]  # fmt: skip
    for kind, g_at, u_at in zip(growth.kinds, growth.g_at, growth.u_at):
        code += [kind, g_at, u_at]
    code += grow_at + state_at + [raw_at, gates_at]
    code += [len(layer) for layer in passes]
    for step in flat_passes:
        code += [step.L, step.w, step.R, step.T, step.T_back, step.count]
        code += [value for triple in step.steps for value in triple] + list(step.gate_starts)
    array = (ctypes.c_int64 * len(code))(*code)
    return NetworkProgram(array, at, len(passes), tuple(plan.shape), raw_at)


def runs(program: NetworkProgram | None, values: torch.Tensor, scale, grid) -> bool:
    """Whether the native calls can produce this weight: a program, float32 gates on the CPU,
    a scale, and a weight gathered by row and column tables (``grid``: see ``WeightGather``)."""
    return (
        program is not None
        and scale is not None
        and grid is not None
        and values.device.type == "cpu"
        and values.dtype == torch.float32
        and values.is_contiguous()
        and adtn_native.library() is not None
    )


class NetworkWeight(torch.autograd.Function):
    """``apply(program, slope, grid, pool, scale, values)`` → the weight, as
    ``NetworkState`` gives it for the same plan; ``slope``: the activation's (None: none),
    ``grid``: the weight's (row_at, column_at) gather tables (``WeightGather.grid``), ``pool``:
    a ``BufferPool`` (or None) that lends the memory block between steps."""

    @staticmethod
    def forward(ctx, program: NetworkProgram, slope, grid, pool, scale, values):
        memory = None if pool is None else pool.take(values, program.numel)
        if memory is None:
            memory = values.new_empty(program.numel)
        weight = values.new_empty(program.shape)
        factors = (ctypes.c_float * program.layers)()
        final = ctypes.c_float()
        row_at, column_at = grid
        scale_value = float(scale)
        adtn_native._check(
            adtn_native.library().adtn_network_forward(
                program.code, len(program.code), memory.data_ptr(), memory.numel(),
                values.data_ptr(), values.numel(), row_at.data_ptr(), column_at.data_ptr(),
                scale_value, slope or 0.0, weight.data_ptr(), factors, ctypes.byref(final),
                torch.get_num_threads(),
            )
        )  # fmt: skip
        ctx.program, ctx.slope, ctx.grid, ctx.pool = program, slope, grid, pool
        # The block holds every state the backward pass reads and the gates' values as this
        # pass used them; it is an attribute, so that it can go back to the pool at once.
        ctx.memory, ctx.factors, ctx.scale = memory, factors, scale_value
        ctx.gate_count = values.numel()
        ctx.inverse_rms = torch.tensor(final.value, dtype=values.dtype)  # 1 / rms(raw)
        return weight

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_weight):
        program, memory = ctx.program, ctx.memory
        if memory is None:
            raise RuntimeError(
                "Trying to backward through the ADTN weight a second time; "
                "pass retain_graph=True the first time"
            )
        grad_weight = grad_weight.contiguous()
        grad_values = grad_weight.new_empty(ctx.gate_count)
        # <raw, g> by torch, as NetworkState takes it: the same rounding, so that both paths
        # train alike to the last bit (a sum in double moved FC-2's trajectories apart).
        raw = memory[program.raw_at : program.raw_at + grad_weight.numel()]
        dot = torch.dot(raw, grad_weight.view(-1))
        row_at, column_at = ctx.grid
        adtn_native._check(
            adtn_native.library().adtn_network_backward(
                program.code, len(program.code), memory.data_ptr(), memory.numel(),
                ctx.gate_count, row_at.data_ptr(), column_at.data_ptr(), ctx.scale,
                ctx.slope or 0.0, ctx.factors, float(ctx.inverse_rms), grad_weight.data_ptr(),
                float(dot), grad_values.data_ptr(), torch.get_num_threads(),
            )
        )  # fmt: skip
        if not _graph_is_kept():
            ctx.memory = None
            if ctx.pool is not None:
                ctx.pool.give(memory)
        grad_scale = dot * ctx.inverse_rms
        needs = ctx.needs_input_grad
        return (
            None, None, None, None,
            grad_scale if needs[4] else None,
            grad_values if needs[5] else None,
        )  # fmt: skip
