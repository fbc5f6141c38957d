"""Triton kernels of the ADTN's gate passes on the GPU (``engine.adtn_gpu`` launches them).

A pass (``adtn_native.GatePass``) views the state as ``(L, ROWS, R)``; a program takes one
tile of ``ROWS`` rows by ``T`` columns into registers, applies the pass's gates to it there and
writes it back: one trip through GPU memory for the whole pass. A tile's index has ``TB`` bits
(the row bits, then the column bits); gate ``k`` acts on tile bits ``p, p + 1`` (``p`` packed
five bits each in ``STEPS``; bit 0 the most significant), as a 4×4 matrix on
``2 * bit_p + bit_p+1``. Applying it is a reshape that isolates those two bits, two splits into
the four values of the pair, sixteen multiply-adds, and the inverse joins.

The backward pass holds no list of intermediate tiles (Triton has none): for each gate, from
the last, it recomputes that gate's input from the pass's input (a pass has few gates; the
arithmetic is cheap next to the memory trip), accumulates the gate's gradient over the tile
(one partial sum per program, summed afterwards) and turns the output's gradient into its
input's.

Under Triton's interpreter (``TRITON_INTERPRET=1`` before Triton is imported) the kernels run
on CPU tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pair_values(x, TB: tl.constexpr, P: tl.constexpr):
    """The four values of bits (P, P+1) of a flat tile of 2**TB numbers: (00, 01, 10, 11),
    each of shape (2**P, 2**(TB-P-2))."""
    A: tl.constexpr = 1 << P
    S: tl.constexpr = 1 << (TB - P - 2)
    x = tl.reshape(x, (A, 2, 2, S))
    x = tl.permute(x, (0, 3, 1, 2))  # (A, S, bit P, bit P+1)
    first0, first1 = tl.split(tl.permute(x, (0, 1, 3, 2)))  # split on bit P
    v00, v01 = tl.split(first0)
    v10, v11 = tl.split(first1)
    return v00, v01, v10, v11


@triton.jit
def _from_pair_values(v00, v01, v10, v11, TB: tl.constexpr, P: tl.constexpr):
    """The inverse of ``_pair_values``: a flat tile of 2**TB numbers."""
    first0 = tl.join(v00, v01)  # (A, S, bit P+1)
    first1 = tl.join(v10, v11)
    x = tl.join(first0, first1)  # (A, S, bit P+1, bit P)
    x = tl.permute(x, (0, 3, 2, 1))  # (A, bit P, bit P+1, S)
    return tl.reshape(x, (1 << TB,))


@triton.jit
def _gate(g_ptr, K: tl.constexpr):
    """Gate K's sixteen entries, row by row."""
    base = g_ptr + 16 * K
    return (
        tl.load(base + 0), tl.load(base + 1), tl.load(base + 2), tl.load(base + 3),
        tl.load(base + 4), tl.load(base + 5), tl.load(base + 6), tl.load(base + 7),
        tl.load(base + 8), tl.load(base + 9), tl.load(base + 10), tl.load(base + 11),
        tl.load(base + 12), tl.load(base + 13), tl.load(base + 14), tl.load(base + 15),
    )  # fmt: skip


@triton.jit
def _apply(x, g_ptr, K: tl.constexpr, TB: tl.constexpr, P: tl.constexpr):
    """Gate K applied to bits (P, P+1) of the flat tile x."""
    a0, a1, a2, a3 = _pair_values(x, TB, P)
    g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15 = _gate(g_ptr, K)
    r0 = g0 * a0 + g1 * a1 + g2 * a2 + g3 * a3
    r1 = g4 * a0 + g5 * a1 + g6 * a2 + g7 * a3
    r2 = g8 * a0 + g9 * a1 + g10 * a2 + g11 * a3
    r3 = g12 * a0 + g13 * a1 + g14 * a2 + g15 * a3
    return _from_pair_values(r0, r1, r2, r3, TB, P)


@triton.jit
def _apply_step(x, g_ptr, K: tl.constexpr, TB: tl.constexpr, STEPS: tl.constexpr):
    """Step K of the pass (gate K on the tile bits packed in STEPS) applied to the tile x."""
    P: tl.constexpr = (STEPS >> (5 * K)) & 31
    return _apply(x, g_ptr, K, TB, P)


@triton.jit
def _tile_offsets(R, ROWS: tl.constexpr, T: tl.constexpr):
    """Where this program's tile lies in the state, as a flat index of ROWS * T numbers."""
    pid = tl.program_id(0).to(tl.int64)
    per_l = R // T
    start = (pid // per_l) * ROWS * R + (pid % per_l) * T
    rows = tl.arange(0, ROWS).to(tl.int64)
    cols = tl.arange(0, T)
    return tl.reshape(start + rows[:, None] * R + cols[None, :], (ROWS * T,))


@triton.jit
def _backward_step(x, grad, g_ptr, row, K: tl.constexpr, TB: tl.constexpr, STEPS: tl.constexpr):
    """Back through step K: its gate's partial gradient into ``row`` (16 numbers at 16 * K),
    and the gradient of its input, returned. The gate's input is recomputed from the pass's
    input x."""
    P: tl.constexpr = (STEPS >> (5 * K)) & 31
    gate_input = x
    for m in tl.static_range(K):
        gate_input = _apply_step(gate_input, g_ptr, m, TB, STEPS)
    x0, x1, x2, x3 = _pair_values(gate_input, TB, P)
    y0, y1, y2, y3 = _pair_values(grad, TB, P)
    base = row + 16 * K
    tl.store(base + 0, tl.sum(tl.sum(y0 * x0, axis=1), axis=0))
    tl.store(base + 1, tl.sum(tl.sum(y0 * x1, axis=1), axis=0))
    tl.store(base + 2, tl.sum(tl.sum(y0 * x2, axis=1), axis=0))
    tl.store(base + 3, tl.sum(tl.sum(y0 * x3, axis=1), axis=0))
    tl.store(base + 4, tl.sum(tl.sum(y1 * x0, axis=1), axis=0))
    tl.store(base + 5, tl.sum(tl.sum(y1 * x1, axis=1), axis=0))
    tl.store(base + 6, tl.sum(tl.sum(y1 * x2, axis=1), axis=0))
    tl.store(base + 7, tl.sum(tl.sum(y1 * x3, axis=1), axis=0))
    tl.store(base + 8, tl.sum(tl.sum(y2 * x0, axis=1), axis=0))
    tl.store(base + 9, tl.sum(tl.sum(y2 * x1, axis=1), axis=0))
    tl.store(base + 10, tl.sum(tl.sum(y2 * x2, axis=1), axis=0))
    tl.store(base + 11, tl.sum(tl.sum(y2 * x3, axis=1), axis=0))
    tl.store(base + 12, tl.sum(tl.sum(y3 * x0, axis=1), axis=0))
    tl.store(base + 13, tl.sum(tl.sum(y3 * x1, axis=1), axis=0))
    tl.store(base + 14, tl.sum(tl.sum(y3 * x2, axis=1), axis=0))
    tl.store(base + 15, tl.sum(tl.sum(y3 * x3, axis=1), axis=0))
    g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15 = _gate(g_ptr, K)
    r0 = g0 * y0 + g4 * y1 + g8 * y2 + g12 * y3  # the gate's transpose
    r1 = g1 * y0 + g5 * y1 + g9 * y2 + g13 * y3
    r2 = g2 * y0 + g6 * y1 + g10 * y2 + g14 * y3
    r3 = g3 * y0 + g7 * y1 + g11 * y2 + g15 * y3
    return _from_pair_values(r0, r1, r2, r3, TB, P)


@triton.jit
def pass_forward_kernel(
    x_ptr,
    out_ptr,
    g_ptr,
    squares_ptr,
    R,
    slope,
    ROWS: tl.constexpr,
    T: tl.constexpr,
    TB: tl.constexpr,
    STEPS: tl.constexpr,
    N: tl.constexpr,
    ACTIVATE: tl.constexpr,
    SQUARES: tl.constexpr,
):
    """out = the pass's N gates applied to x (then the activation, slope 0 for ReLU, where
    ACTIVATE); with SQUARES, each program's sum of the squares of its output tile."""
    offsets = _tile_offsets(R, ROWS, T)
    x = tl.load(x_ptr + offsets)
    for k in tl.static_range(N):
        x = _apply_step(x, g_ptr, k, TB, STEPS)
    if ACTIVATE:
        x = tl.where(x > 0.0, x, x * slope)
    tl.store(out_ptr + offsets, x)
    if SQUARES:
        tl.store(squares_ptr + tl.program_id(0), tl.sum(x * x, axis=0))


@triton.jit
def pass_backward_kernel(
    x_ptr,
    grad_out_ptr,
    grad_in_ptr,
    g_ptr,
    d_gates_ptr,
    dot_ptr,
    R,
    ROWS: tl.constexpr,
    T: tl.constexpr,
    TB: tl.constexpr,
    STEPS: tl.constexpr,
    N: tl.constexpr,
    DOT: tl.constexpr,
):
    """From the pass's input x and its output's gradient: the input's gradient into
    grad_in (which may be grad_out), this program's partial sums of every gate's gradient
    into row ``program_id`` of d_gates (N × 16 each), and with DOT its partial
    <x, the input's gradient> into dot."""
    offsets = _tile_offsets(R, ROWS, T)
    x = tl.load(x_ptr + offsets)
    grad = tl.load(grad_out_ptr + offsets)
    row = d_gates_ptr + tl.program_id(0).to(tl.int64) * (16 * N)
    for j in tl.static_range(N):
        grad = _backward_step(x, grad, g_ptr, row, N - 1 - j, TB, STEPS)
    tl.store(grad_in_ptr + offsets, grad)
    if DOT:
        tl.store(dot_ptr + tl.program_id(0), tl.sum(x * grad, axis=0))
