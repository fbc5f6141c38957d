"""The ADTN's gate passes in native code (``adtn_native.c``), for float32 states on the CPU.

A half-layer of side-by-side gates is a Kronecker product. The matrix-product kernel applies it
as blocks of two gates (16×16 matrices), one trip through memory per block and per backward
product, at four times a gate's arithmetic; the native kernel applies it in one or two *passes*,
each a trip through memory that applies all its gates to cache-sized tiles
(``adtn_native.c`` says how). ``plan_passes`` splits a run of gates into passes,
``plan_brick_layer`` puts a whole brick layer (both half-layers) into two passes (three
above ``Q = 20``),
``GatePass`` describes one, and ``pass_forward`` / ``pass_backward`` run it.

The C file, with ``adtn_native_network.c`` (a whole contraction in one call each way), is
compiled on first use with the machine's C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``;
``-O3 -march=native``) into one library in the user's cache folder, once per source and
machine, and loaded with ctypes. Where there is no compiler, or it fails, the engine keeps
the matrix products and says so once in the log. ``ADTN_NATIVE_KERNEL=0`` turns the native
kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import adtn_gpu
from engine.paths import default_cache_dir

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("adtn_native.c")
# Built into the same library: a brick ADTN's whole contraction in one call each way
# (``engine.adtn_native_network``).
SOURCES = (SOURCE, SOURCE.with_name("adtn_native_network.c"))
# The maths library (sqrt) by name where it is not part of the C library (Linux), so that the
# kernel loads without relying on the host process having loaded it.
LIBRARIES = ["-lm"] if sys.platform.startswith("linux") else []
DISABLE_ENV = "ADTN_NATIVE_KERNEL"  # "0": keep the matrix products
# Rows of a tile are 2**w of a pass's bits: 256 rows of 16 float32 columns are 16 KiB, which
# stays in the L1 cache while every gate of the pass is applied.
MAX_PASS_BITS = 8
TILE_ENTRIES = 1 << 12  # the last pass's tiles: 2**w rows of 2**b columns
# Tiles of the passes above the last: as many columns (at least one AVX-512 register of
# float32, at most 128) as fit this many numbers; a tile's rows lie far apart in memory, and
# longer runs of each keep the processor's prefetching ahead.
STRIDED_TILE_ENTRIES = 1 << 13
# Backward, a tile is held once per gate (each gate's input) and once more for the gradient:
# smaller tiles keep them all in the L1 cache (measured: a third faster than forward's).
BACKWARD_TILE_ENTRIES = 1 << 11
# A brick layer in few passes (``plan_brick_layer``): the first covers the state's last bits,
# a contiguous tile of at most 2**LOW_PASS_BITS numbers; each further one a range of at most
# MAX_HIGH_ROW_BITS bits above them (the tile's rows).
LOW_PASS_BITS = 12
MAX_HIGH_ROW_BITS = 10
# Below this many indices a state fits the cache anyway and the matrix products are as fast.
MIN_BITS = 8
COMPILE_TIMEOUT_S = 120
# A thread gets at least this many tiles of a pass (fewer do not pay for starting it).
MIN_TILES_PER_THREAD = 8

_lock = threading.Lock()
_state: dict = {"library": None, "tried": False, "error": None}


@dataclass(frozen=True)
class GatePass:
    """One pass: the state viewed as ``(L, 2**w, R)``, tiles of ``T`` columns forward and
    ``T_back`` backward (whose tiles are several at once: the input of every step), and its
    ``steps``, one per gate in order: ``(kind, view, p)``, kind 0 a gate on bits ``p, p+1`` of
    the tile viewed as rows of ``view`` numbers (0: the tile's own width; with 16, ``p`` may
    reach into the last 4 bits, where the kernel permutes the vectors' lanes), kind 1 a gate on
    bits ``p, p+1`` of the state's last ``log2(view)`` bits (consecutive ones make one
    Kronecker block). Its gates' 4×4 entries start at ``offset`` of the flat gate vector
    (``mats[m]``), one after the other, or at ``offsets`` where they are not contiguous."""

    m: int
    offset: int
    L: int
    w: int
    R: int
    T: int
    T_back: int
    steps: tuple[tuple[int, int, int], ...]
    offsets: tuple[int, ...] | None = None
    kind: str = "gates"
    # ctypes array of the steps, (with ``offsets``) the flat positions of the gates' entries,
    # their copies on other devices, and a ctypes array of where each gate starts, made once
    _arrays: tuple = field(default=(), compare=False, repr=False)

    @property
    def count(self) -> int:
        return len(self.steps)

    @property
    def gather(self) -> torch.Tensor | None:
        """Where the pass's gate entries lie in the flat gate vector (None: contiguous)."""
        return self._arrays[1]

    @property
    def gate_starts(self) -> tuple[int, ...]:
        """Where each gate's 16 entries start in the flat gate vector, in step order."""
        return tuple(self._arrays[3])

    def gather_on(self, device: torch.device) -> torch.Tensor | None:
        """``gather`` on ``device`` (copied there once)."""
        index = self._arrays[1]
        if index is None or index.device == device:
            return index
        copies = self._arrays[2]
        if device not in copies:
            copies[device] = index.to(device)
        return copies[device]


def plan_passes(pairs: list[tuple[int, int]], num_bits: int) -> list[tuple] | None:
    """Passes for a Kronecker run of gates on disjoint neighbouring pairs (in bit order), or
    None where the run does not suit the native kernel (too few indices). Per pass:
    ``(gate numbers in the run, L, w, R, T, T_back, positions, low positions, b)``."""
    if num_bits < MIN_BITS:
        return None
    starts = [a for a, _ in pairs]
    # The last b bits (3 or 4, so that no gate straddles them) become one block per row.
    for b in (4, 3):
        if not any(a < num_bits - b < a + 2 for a in starts):
            break
    else:  # (cannot happen: pairs are two bits wide, so one of two parities fits)
        return None
    low = [k for k, a in enumerate(starts) if a >= num_bits - b]
    high = [k for k, a in enumerate(starts) if a < num_bits - b]
    # The last pass takes the low gates and the bits just above them, a tile of at most
    # TILE_ENTRIES numbers; the bits above it are split into about equal ranges of at most
    # MAX_PASS_BITS. No range boundary cuts a gate.
    end = num_bits - b

    def straddles(bit: int) -> bool:
        return any(a < bit < a + 2 for a in starts)

    cut = max(0, end - (TILE_ENTRIES.bit_length() - 1 - b))
    while straddles(cut):
        cut += 1
    bounds = [(cut, end)]
    count = -(-cut // MAX_PASS_BITS)
    hi = cut
    for k in range(count - 1, -1, -1):
        lo = (cut * k) // count
        while straddles(lo):
            lo -= 1
        bounds.insert(0, (lo, hi))
        hi = lo
    passes = []
    for index, (lo, hi) in enumerate(bounds):
        last = index == len(bounds) - 1
        members = [k for k in high if lo <= starts[k] < hi]
        width, rest = hi - lo, num_bits - hi
        lows = low if last else []
        if not members and not lows:
            continue
        passes.append(
            (
                members + lows,
                1 << lo,
                width,
                1 << rest,
                (1 << b) if last else max(16, min(128, STRIDED_TILE_ENTRIES >> width)),
                (1 << b) if last else max(16, min(128, BACKWARD_TILE_ENTRIES >> width)),
                tuple(starts[k] - lo for k in members),
                tuple(starts[k] - (num_bits - b) for k in lows),
                b,
            )
        )
    return passes


def plan_brick_layer(
    first: list[tuple[int, int]], second: list[tuple[int, int]], num_bits: int
) -> list[tuple] | None:
    """A brick layer (``first``: pairs (0, 1), (2, 3), …; then ``second``: (1, 2), (3, 4), …)
    in one pass per range of bits (two up to ``Q = 20``) instead of one or two per
    half-layer, or None where it is not such a layer.

    The *low* pass takes the bits from an even ``c`` on (a contiguous tile): the first
    half's gates there, then the second half's (each of which only needs first-half gates on
    bits from ``c`` on). Each further pass takes the bits from the next even ``c'`` up to and
    including ``c``, with columns from the last bits: the first half's gates from ``c'`` to
    below ``c``, then the second half's, including the one on ``(c - 1, c)``, whose
    first-half neighbour on ``(c, c + 1)`` the pass before applied. Gates on different bits
    commute, so this is the layer's product. Per pass: ``(gate numbers in first + second,
    L, w, R, T, T_back, steps)`` (see ``GatePass``)."""
    if num_bits < MIN_BITS:
        return None
    if [a for a, _ in first] != list(range(0, num_bits - 1, 2)) or [a for a, _ in second] != list(
        range(1, num_bits - 1, 2)
    ):
        return None
    starts = [a for a, _ in first] + [a for a, _ in second]
    n_first = len(first)
    cut = max(0, num_bits - LOW_PASS_BITS)
    cut += cut % 2  # even: no first-half gate straddles it
    size = num_bits - cut  # the low pass's bits
    if size < 5:
        return None
    low = [k for k, a in enumerate(starts) if (a >= cut if k < n_first else a > cut)]

    # The low tile viewed as rows of 16 numbers (one vector each): the kernel applies a gate
    # that reaches into the last 4 bits with permutations of the vectors' lanes.
    passes = [(low, 1 << cut, size - 4, 16, 16, 16, tuple((0, 16, starts[k] - cut) for k in low))]
    top = cut
    while top > 0:  # the next range of bits up: [bottom, top], at most MAX_HIGH_ROW_BITS
        bottom = max(0, top + 1 - MAX_HIGH_ROW_BITS)
        bottom += bottom % 2
        members = [
            k
            for k, a in enumerate(starts)
            if (bottom <= a < top if k < n_first else bottom < a < top)
        ]
        rows = top - bottom + 1
        rest = num_bits - top - 1
        columns = min(128, 1 << rest, max(16, STRIDED_TILE_ENTRIES >> rows))
        columns_back = min(columns, max(16, BACKWARD_TILE_ENTRIES >> rows))
        steps = tuple((0, 0, starts[k] - bottom) for k in members)
        passes.append((members, 1 << bottom, rows, 1 << rest, columns, columns_back, steps))
        top = bottom
    return passes


def make_pass(m: int, offset: int, spec: tuple, offsets: list[int] | None = None) -> GatePass:
    """A ``GatePass`` from a ``plan_passes`` or ``plan_brick_layer`` spec; ``offsets``: each
    gate's offset in the flat gate vector where they do not follow one another from
    ``offset``."""
    if len(spec) == 9:  # plan_passes: high gates on the tile's rows, then the low block
        _, L, w, R, T, T_back, positions, low_positions, b = spec
        steps = tuple((0, 0, p) for p in positions) + tuple((1, 1 << b, q) for q in low_positions)
    else:
        _, L, w, R, T, T_back, steps = spec
    flat = [value for step in steps for value in step]
    gather = None
    if offsets is not None:
        gather = (torch.tensor(offsets)[:, None] + torch.arange(16)).reshape(-1)
    starts = list(offsets) if offsets is not None else [offset + 16 * k for k in range(len(steps))]
    copies: dict = {}
    arrays = (
        (ctypes.c_int * max(1, len(flat)))(*flat), gather, copies,
        (ctypes.c_int * max(1, len(starts)))(*starts),
    )  # fmt: skip
    return GatePass(
        m, offset, L, w, R, T, T_back, tuple(steps),
        None if offsets is None else tuple(offsets), _arrays=arrays,
    )  # fmt: skip


def switched_on() -> bool:
    """Whether ``ADTN_NATIVE_KERNEL`` leaves the native passes (CPU and GPU) on."""
    return os.environ.get(DISABLE_ENV, "1") != "0"


def enabled() -> bool:
    """Whether contractions may use the native kernel: not turned off, and it could be built."""
    return switched_on() and library() is not None


def on_gpu(tensor: torch.Tensor) -> bool:
    """Whether a pass on this tensor runs the GPU's kernels (``engine.adtn_gpu``)."""
    return tensor.is_cuda


def describe() -> str:
    """How CPU contractions run here, in words (for the self-test and the log)."""
    if enabled():
        return "native gate passes"
    if library() is None:
        return f"matrix products (native kernel not available: {_state.get('error')})"
    return f"matrix products (native kernel turned off: {DISABLE_ENV}=0)"


def library():
    """The loaded kernel, built on first call; None where it cannot be built."""
    if _state["tried"]:
        return _state["library"]
    with _lock:
        if not _state["tried"]:
            try:
                _state["library"] = _build_and_load(default_cache_dir() / "native")
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _state["error"] = str(error)
                logger.warning(
                    "The native ADTN kernel is not available (%s); using matrix products.",
                    error,
                )
            _state["tried"] = True
    return _state["library"]


def _build_and_load(folder: Path):
    """The library in ``folder``, built if missing; one that does not load (a truncated or
    foreign file) is removed and built again, once."""
    path = _build(folder)
    try:
        return _load(path)
    except OSError:
        path.unlink(missing_ok=True)
        return _load(_build(folder))


def _compiler() -> list[str] | None:
    override = os.environ.get("CC")
    if override:
        return override.split()
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _build(folder: Path) -> Path:
    """The compiled library in ``folder``, compiling it when this source and machine have no
    library there yet (written to a temporary name, then renamed: a reader never sees half)."""
    source = b"".join(path.read_bytes() for path in SOURCES)
    suffix = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
    key = hashlib.sha256(
        source + f"{platform.machine()}|{platform.processor()}|{sys.platform}".encode()
    ).hexdigest()[:16]
    target = folder / f"adtn_native-{key}{suffix}"
    if target.exists():
        return target
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("Compiling the native ADTN kernel into %s (once per machine).", folder)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        errors = ""
        # -march=native where the compiler knows it (not every clang on arm64 does), and
        # OpenMP where it has it (Apple's clang has not): without, passes run on one thread.
        for tuning in (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []):
            command = [*compiler, "-O3", *tuning, "-shared", "-fPIC", "-o", temporary]
            done = subprocess.run(
                [*command, *(str(path) for path in SOURCES), *LIBRARIES],
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
            )
            if done.returncode == 0:
                os.replace(temporary, target)
                return target
            errors = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise RuntimeError(f"compiling {SOURCE.name} failed: {errors}")
    finally:
        Path(temporary).unlink(missing_ok=True)


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    ints = ctypes.POINTER(ctypes.c_int)
    f32, doubles = ctypes.c_float, ctypes.POINTER(ctypes.c_double)
    lib.adtn_pass_forward.argtypes = [
        pointer, pointer, i64, i32, i64, i32, pointer, ints, f32, ints, i32, i32, f32, doubles,
        i32,
    ]  # fmt: skip
    lib.adtn_pass_forward.restype = i32
    lib.adtn_pass_backward.argtypes = [
        pointer, pointer, pointer, i64, i32, i64, i32, pointer, ints, f32, ints, i32, pointer,
        doubles, i32, f32, i32,
    ]  # fmt: skip
    lib.adtn_pass_backward.restype = i32
    lib.adtn_transition.argtypes = [pointer, pointer, i64, f32, i32, f32, i32]
    lib.adtn_transition.restype = None
    lib.adtn_gather.argtypes = [pointer, pointer, i64, pointer, i32]
    lib.adtn_gather.restype = ctypes.c_double
    lib.adtn_scatter_scaled.argtypes = [pointer, pointer, pointer, i64, i64, f32, f32, pointer, i32]
    lib.adtn_scatter_scaled.restype = None
    lib.adtn_gather_grid.argtypes = [pointer, pointer, i64, pointer, i64, pointer, i32]
    lib.adtn_gather_grid.restype = ctypes.c_double
    lib.adtn_scatter_grid.argtypes = [
        pointer, pointer, pointer, i64, pointer, i64, i64, f32, f32, pointer, i32,
    ]  # fmt: skip
    lib.adtn_scatter_grid.restype = i32
    lib.adtn_grow_gates_forward.argtypes = [
        i32, ints, ints, ints, pointer, pointer, i32, f32, doubles,
    ]  # fmt: skip
    lib.adtn_grow_gates_forward.restype = i32
    lib.adtn_grow_gates_backward.argtypes = [
        i32, ints, ints, ints, pointer, pointer, pointer, pointer,
    ]  # fmt: skip
    lib.adtn_grow_gates_backward.restype = i32
    lib.adtn_grow_forward.argtypes = [i32, pointer, pointer, pointer, pointer, i32, f32, doubles]
    lib.adtn_grow_forward.restype = i32
    lib.adtn_grow_backward.argtypes = [i32, pointer, pointer, pointer, pointer, pointer, pointer]
    lib.adtn_grow_backward.restype = i32
    lib.adtn_network_forward.argtypes = [
        pointer, i64, pointer, i64, pointer, i64, pointer, pointer, f32, f32, pointer, pointer,
        pointer, i32,
    ]  # fmt: skip
    lib.adtn_network_forward.restype = i32
    lib.adtn_network_backward.argtypes = [
        pointer, i64, pointer, i64, i64, pointer, pointer, f32, f32, pointer, f32, pointer,
        ctypes.c_double, pointer, i32,
    ]  # fmt: skip
    lib.adtn_network_backward.restype = i32
    return lib


def _threads(gate_pass: GatePass, columns: int) -> int:
    """PyTorch's intra-op thread count, for passes with enough tiles (of ``columns``) to
    share out."""
    tiles = gate_pass.L * (gate_pass.R // columns)
    return max(1, min(torch.get_num_threads(), tiles // MIN_TILES_PER_THREAD))


def _check(code: int) -> None:
    if code == -2:
        raise MemoryError("the native ADTN kernel ran out of memory")
    if code:
        raise RuntimeError(f"the native ADTN kernel refused a pass (code {code})")


def _own_gates(gate_pass: GatePass, gates: torch.Tensor, scale) -> torch.Tensor:
    """The pass's gates from the flat vector, side by side, the first one times ``scale``
    (where the GPU's kernels want them so)."""
    gather = gate_pass.gather_on(gates.device)
    if gather is None:
        own = gates[gate_pass.offset : gate_pass.offset + 16 * gate_pass.count]
    else:
        own = gates.index_select(0, gather)
    if scale is None:
        return own
    if gather is None:
        own = own.clone()
    own[:16].mul_(scale)
    return own


def pass_forward(
    state: torch.Tensor,
    out: torch.Tensor,
    gate_pass: GatePass,
    gates: torch.Tensor,
    slope: float | None = None,
    squares: bool = False,
    scale=None,
) -> float | None:
    """``out`` = the pass applied to ``state`` (flat, contiguous float32 CPU tensors), then the
    activation where ``slope`` is given (0: ReLU, else leaky). ``gates``: the flat gate vector
    (16 numbers per gate, at ``offset`` one after another or at ``offsets``); ``scale``
    multiplies the first gate. Returns the sum of the squares of ``out`` when ``squares``."""
    if on_gpu(state):
        own = _own_gates(gate_pass, gates, scale)
        return adtn_gpu.pass_forward(state, out, gate_pass, own, slope, squares)
    p = gate_pass
    total = ctypes.c_double()
    _check(
        library().adtn_pass_forward(
            state.data_ptr(), out.data_ptr(), p.L, p.w, p.R, p.T, gates.data_ptr(),
            p._arrays[3], 1.0 if scale is None else float(scale), p._arrays[0], p.count,
            slope is not None, slope or 0.0, ctypes.byref(total) if squares else None,
            _threads(p, p.T),
        )
    )  # fmt: skip
    return total.value if squares else None


def pass_backward(
    state: torch.Tensor,
    grad_out: torch.Tensor,
    grad_in: torch.Tensor | None,
    gate_pass: GatePass,
    gates: torch.Tensor,
    grad_gates: torch.Tensor,
    dot: bool = False,
    slope: float | None = None,
    scale=None,
) -> float | None:
    """From the pass's input ``state`` and its output's gradient: the input's gradient into
    ``grad_in`` (None: not wanted; it may be ``grad_out`` itself) and each gate's into its
    place in ``grad_gates`` (laid out as ``gates``, see ``pass_forward``; the first gate's
    is that of its values before ``scale``). Returns ``<state, the input's gradient>`` when
    ``dot``. With ``slope``, the input's gradient is then taken back through the activation
    (0: ReLU, else leaky) whose output ``state`` is."""
    p = gate_pass
    if on_gpu(state):
        own = _own_gates(p, gates, scale)
        own_grads = grad_gates.new_empty(16 * p.count)
        value = adtn_gpu.pass_backward(state, grad_out, grad_in, p, own, own_grads, dot)
        if scale is not None:
            own_grads[:16].mul_(scale)
        gather = p.gather_on(grad_gates.device)
        if gather is None:
            grad_gates[p.offset : p.offset + 16 * p.count].copy_(own_grads)
        else:
            grad_gates.index_copy_(0, gather, own_grads)
        if slope is not None and grad_in is not None:
            grad_in.mul_(torch.where(state > 0, 1.0, slope))
        return value
    total = ctypes.c_double()
    _check(
        library().adtn_pass_backward(
            state.data_ptr(), grad_out.data_ptr(),
            None if grad_in is None else grad_in.data_ptr(),
            p.L, p.w, p.R, p.T_back, gates.data_ptr(), p._arrays[3],
            1.0 if scale is None else float(scale), p._arrays[0], p.count,
            grad_gates.data_ptr(), ctypes.byref(total) if dot else None,
            slope is not None, slope or 0.0, _threads(p, p.T_back),
        )
    )  # fmt: skip
    return total.value if dot else None


def transition(
    grad: torch.Tensor, activated: torch.Tensor, coefficient: float, slope: float | None
) -> None:
    """In place, back through an activation and a normalisation between layers:
    ``grad - coefficient * activated``, times the activation's slope where ``activated <= 0``
    (``slope`` None: no activation)."""
    if on_gpu(grad):  # (tensor operations: one pass each over the state is the GPU's cost)
        grad.sub_(activated, alpha=coefficient)
        if slope is not None:
            grad.mul_(torch.where(activated > 0, 1.0, slope))
        return
    threads = _elementwise_threads(grad.numel())
    library().adtn_transition(
        grad.data_ptr(), activated.data_ptr(), grad.numel(), coefficient,
        slope is not None, slope or 0.0, threads,
    )  # fmt: skip


def _elementwise_threads(numel: int) -> int:
    return max(1, min(torch.get_num_threads(), numel // (1 << 16)))


def gather(state: torch.Tensor, index: torch.Tensor, out: torch.Tensor, grid=None) -> float:
    """``out = state[index]`` (int64 index, contiguous float32); returns the sum of the squares
    of ``out``. ``grid``: None, or (``row_at``, ``column_at``) with ``index`` equal to
    ``row_at[r] + column_at[c]`` for ``out`` viewed as rows of ``len(column_at)``."""
    if on_gpu(state):
        torch.index_select(state, 0, index, out=out.view(-1))
        return float(torch.dot(out.view(-1), out.view(-1)))
    threads = _elementwise_threads(index.numel())
    if grid is not None:
        row_at, column_at = grid
        squares = library().adtn_gather_grid(
            state.data_ptr(), row_at.data_ptr(), row_at.numel(), column_at.data_ptr(),
            column_at.numel(), out.data_ptr(), threads,
        )  # fmt: skip
        if squares < 0:
            _check(-2)
        return squares
    return library().adtn_gather(
        state.data_ptr(), index.data_ptr(), index.numel(), out.data_ptr(), threads
    )


def scatter_scaled(
    grad: torch.Tensor,
    tensor: torch.Tensor,
    scatter: torch.Tensor,
    a: float,
    b: float,
    out,
    grid=None,
) -> None:
    """``out[i] = a * grad[scatter[i]] - b * tensor[scatter[i]]``, 0 where ``scatter[i]`` is
    ``grad``'s number of entries (flat, contiguous float32; int64 ``scatter``). ``grid``: as
    for ``gather``, the same map from the other side."""
    if on_gpu(grad):
        values = torch.cat([grad * a - tensor * b, grad.new_zeros(1)])
        torch.index_select(values, 0, scatter, out=out)
        return
    threads = _elementwise_threads(scatter.numel())
    if grid is not None:
        row_at, column_at = grid
        _check(
            library().adtn_scatter_grid(
                grad.data_ptr(), tensor.data_ptr(), row_at.data_ptr(), row_at.numel(),
                column_at.data_ptr(), column_at.numel(), out.numel(), a, b, out.data_ptr(),
                threads,
            )
        )  # fmt: skip
        return
    library().adtn_scatter_scaled(
        grad.data_ptr(), tensor.data_ptr(), scatter.data_ptr(), scatter.numel(), grad.numel(),
        a, b, out.data_ptr(), threads,
    )  # fmt: skip


def _pointers(tensors: Sequence[torch.Tensor]):
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def grow_forward(
    sizes, mats: Sequence[torch.Tensor], states: Sequence[torch.Tensor], slope=None, squares=False
) -> float | None:
    """The first layer's growth (``sizes``: a ctypes pair of int arrays, the matrices' rows
    and columns): ``states[k + 1]`` = ``states[k]`` viewed as rows of ``a[k]`` numbers times
    ``mats[k]``; ``states[0]`` holds the number 1 (contiguous float32 CPU tensors). Then the
    activation on the last state where ``slope`` is given (0: ReLU, else leaky); returns the
    sum of its squares when ``squares``."""
    rows, columns = sizes
    total = ctypes.c_double()
    pointers = _pointers(mats), _pointers(states)
    _check(
        library().adtn_grow_forward(
            len(mats), rows, columns, *pointers, slope is not None, slope or 0.0,
            ctypes.byref(total) if squares else None,
        )
    )  # fmt: skip
    return total.value if squares else None


def grow_backward(
    sizes,
    mats: Sequence[torch.Tensor],
    states: Sequence[torch.Tensor],
    grad: torch.Tensor,
    grad_mats: Sequence[torch.Tensor],
) -> None:
    """Back through ``grow_forward``: every matrix's gradient into ``grad_mats`` (contiguous),
    from the gradient of the last state, ``grad`` (used as work space: overwritten)."""
    rows, columns = sizes
    _check(
        library().adtn_grow_backward(
            len(mats), rows, columns, _pointers(mats), _pointers(states[: len(mats)]),
            grad.data_ptr(), _pointers(grad_mats),
        )
    )  # fmt: skip


@dataclass(frozen=True)
class GateGrowth:
    """A first layer that the kernel grows straight from the flat gates: per step, ``kinds``
    0 (a gate's stored column, 4 numbers at ``u_at``, as a 1×4 matrix) or 1 (the 4×4 gate at
    ``g_at`` after the column at ``u_at``: a 2×8 matrix)."""

    kinds: tuple[int, ...]
    g_at: tuple[int, ...]
    u_at: tuple[int, ...]
    _arrays: tuple = field(default=(), compare=False, repr=False)

    @staticmethod
    def make(kinds, g_at, u_at) -> GateGrowth:
        arrays = tuple((ctypes.c_int * len(kinds))(*column) for column in (kinds, g_at, u_at))
        return GateGrowth(tuple(kinds), tuple(g_at), tuple(u_at), arrays)


def grow_gates_forward(
    growth: GateGrowth,
    values: torch.Tensor,
    states: Sequence[torch.Tensor],
    slope=None,
    squares=False,
) -> float | None:
    """``grow_forward`` with the matrices made from the gates (``values``: the flat gates,
    contiguous float32 CPU)."""
    total = ctypes.c_double()
    _check(
        library().adtn_grow_gates_forward(
            len(growth.kinds), *growth._arrays, values.data_ptr(), _pointers(states),
            slope is not None, slope or 0.0, ctypes.byref(total) if squares else None,
        )
    )  # fmt: skip
    return total.value if squares else None


def grow_gates_backward(
    growth: GateGrowth,
    values: torch.Tensor,
    states: Sequence[torch.Tensor],
    grad: torch.Tensor,
    grad_values: torch.Tensor,
) -> None:
    """Back through ``grow_gates_forward``: the gates' gradients added into ``grad_values``
    (laid out as ``values``), from the last state's gradient ``grad`` (overwritten)."""
    _check(
        library().adtn_grow_gates_backward(
            len(growth.kinds), *growth._arrays, values.data_ptr(),
            _pointers(states[: len(growth.kinds)]), grad.data_ptr(), grad_values.data_ptr(),
        )
    )  # fmt: skip
