"""The ADTN's contraction with a hand-written backward pass.

The network is compiled once into a list of *applications* per layer: each multiplies the
``2**Q`` state by one small matrix (a grown first-layer step, or a block of gates). The small
matrices are built from the gates by ordinary autograd (a few batched operations on tiny
tensors); everything that touches the big state happens inside ``NetworkState``, one
``torch.autograd.Function`` whose backward computes each matrix's gradient with one matrix
product instead of going through hundreds of autograd nodes.

Two ways to pay for the backward pass:

* *stored* (``low_memory=False``): the forward pass keeps the input of every application, so
  the backward pass is exactly two products per application (the input's gradient and the
  matrix's gradient). Used when those states fit the memory budget (small and mid-size layers).
* *low memory*: only the last layer's input is kept. The backward pass recomputes each
  layer's input from the start, and inside a layer recomputes the input of each application
  from the layer's input, working in place on preallocated states. At most four states of
  ``2**Q`` numbers are alive (the incoming gradient, the running gradient, the layer's input
  and a work state), whatever the depth and the number of gates.

Applications are of three kinds. ``tail``: the state viewed as ``(n, c_in)`` times a
``(c_in, c_out)`` matrix (the first layer grows the product state this way). ``rot``: a
``K × K`` block on the last ``log2 K`` indices, computed as ``B @ X.T`` so that the result has
those indices first (a sweep of such products over a Kronecker product of blocks needs no
transposing copy). ``mid``: a ``K × K`` block on indices ``[lo, lo + w)`` of the state.

On the CPU in float32 a plan's Kronecker half-layers are instead native gate passes
(``adtn_native.GatePass``, kind ``"gates"``), which read the gates laid end to end (the last of
``mats``) and apply whole runs of 4×4 gates per trip through memory; a layer's last pass also
applies the activation, and its backward pass leaves what the transition between layers needs.
A first layer of ``tail`` applications only is grown there too, in one call each way
(``adtn_native.grow_forward``): as matrix products its steps of one or two inner indices cost
a BLAS call each, and the Python around them, more than the arithmetic.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from engine import adtn_native
from engine.adtn_native import GatePass

# Entries processed per in-place chunk: a quarter of a 4 MiB L2 cache in float32 on the CPU;
# on a GPU the chunk only bounds the temporary's size.
CPU_CHUNK = 1 << 18
GPU_CHUNK = 1 << 22
# States smaller than this (in entries) skip the ``BufferPool``: the allocator hands such
# tensors out from its own cache, and the pool's bookkeeping would cost more than it saves.
POOL_MIN_NUMEL = 1 << 15


@dataclass(frozen=True)
class App:
    """One application of ``mats[m]`` to the state (see the module docstring)."""

    kind: str  # "tail", "rot" or "mid"
    m: int
    a: int = 0  # tail: c_in; mid: lo
    b: int = 0  # tail: c_out; mid: width
    c: int = 0  # mid: number of indices of the state


# An application: a matrix product, or a native pass of gates.
Step = App | GatePass


@dataclass(frozen=True)
class Plan:
    """The compiled network: applications per layer (layer 0 acts on the product state)."""

    num_bits: int
    shape: tuple[int, ...]  # the weight's
    padded_shape: tuple[int, ...]
    fast: tuple[tuple[Step, ...], ...]  # rotating sweeps, out of place
    low: tuple[tuple[Step, ...], ...]  # the same products as in-place ``mid`` applications
    slope: float | None  # activation between layers: None identity, 0.0 ReLU, else leaky
    normalise: bool
    # Some applications are native gate passes (``adtn_native.GatePass``), which read the
    # gates laid end to end: ``mats`` then ends with that flat vector (``with_flat_gates``).
    flat_gates: bool = False
    # Where every later application is a native pass: the first layer as the native kernel
    # grows it from the flat gates on the CPU (``adtn_native.GateGrowth``), so that no small
    # matrix has to be built (``FlatGates``); None otherwise.
    growth: adtn_native.GateGrowth | None = None
    # ``grow_sizes`` of the first layer where the native kernel can grow it (native plans).
    grow: tuple | None = field(default=None, compare=False)
    # The whole plan packed for one native call each way (``adtn_native_network``), where
    # such a call can run it (a brick ADTN grown from its gates); None otherwise.
    network: object = field(default=None, compare=False)


# ------------------------------------------------------------------------------- kernels
def apply_on_axis(view: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (k_out × k_in) applied to the middle axis of ``view`` (L, k_in, R), flattened.

    The fastest kernel depends on the outer sizes (measured on CPU): plain matrix products when
    one side is 1, a broadcast batched product for long rows, einsum for short ones.
    """
    left, _, right = view.shape
    if right == 1:
        out = view.squeeze(2) @ matrix.T
    elif left == 1:
        out = matrix @ view.squeeze(0)
    elif right >= 16:
        out = torch.matmul(matrix, view)
    else:
        out = torch.einsum("ij,ljr->lir", matrix, view)
    return out.reshape(-1)


def _mid_view(state: torch.Tensor, app: App) -> torch.Tensor:
    return state.view(1 << app.a, 1 << app.b, -1)


class BufferPool:
    """Flat tensors that the stored-mode backward pass has finished with, handed to the next
    forward and backward passes as outputs (``out=``). A fresh CPU tensor of a few MiB is
    mapped page by page by the system on first touch: reusing these spares that cost (about
    a third of an FC-2 training step). Only tensors that nothing outside this module can
    reference are put here."""

    def __init__(self, limit: int = 64) -> None:
        self.free: list[torch.Tensor] = []
        self.limit = limit
        self.scratches: dict = {}

    def take(self, like: torch.Tensor, numel: int) -> torch.Tensor | None:
        if self.free:
            buffer = self.free[-1]
            if (
                buffer.numel() == numel
                and buffer.dtype == like.dtype
                and buffer.device == like.device
            ):
                return self.free.pop()
        return None

    def scratch(self, like: torch.Tensor, numel: int) -> torch.Tensor:
        """A flat tensor of ``numel`` entries kept for temporary use inside one call (the
        same one every step, so that its pages stay mapped)."""
        key = (numel, like.dtype, like.device)
        buffer = self.scratches.get(key)
        if buffer is None:
            buffer = self.scratches[key] = like.new_empty(numel)
        return buffer

    def give(self, *tensors) -> None:
        for tensor in tensors:
            if tensor is not None and len(self.free) < self.limit and tensor.is_contiguous():
                self.free.append(tensor)


def _out(pool: BufferPool | None, like: torch.Tensor, rows: int, cols: int):
    buffer = None if pool is None else pool.take(like, rows * cols)
    return None if buffer is None else buffer.view(rows, cols)


def _apply(app: App, matrix: torch.Tensor, state: torch.Tensor, pool=None) -> torch.Tensor:
    """Out-of-place application (into a buffer of ``pool`` when it has one)."""
    if app.kind == "tail":
        inputs = state.view(-1, app.a)
        out = _out(pool, state, inputs.shape[0], app.b)
        return (
            torch.mm(inputs, matrix, out=out).view(-1)
            if out is not None
            else (inputs @ matrix).view(-1)
        )
    if app.kind == "rot":
        k = matrix.shape[1]
        out = _out(pool, state, k, state.numel() // k)
        inputs = state.view(-1, k).t()
        return (
            torch.mm(matrix, inputs, out=out) if out is not None else torch.mm(matrix, inputs)
        ).view(-1)
    return apply_on_axis(_mid_view(state, app), matrix)


def _backward(
    app: App,
    matrix: torch.Tensor,
    state: torch.Tensor,
    grad: torch.Tensor,
    need_input: bool = True,
    pool=None,
):
    """(gradient of the application's input, gradient of its matrix)."""
    if app.kind == "tail":
        inputs, grads = state.view(-1, app.a), grad.view(-1, app.b)
        d_input = None
        if need_input:
            out = _out(pool, grad, grads.shape[0], app.a)
            d_input = (
                torch.mm(grads, matrix.t(), out=out) if out is not None else grads @ matrix.t()
            ).view(-1)
        return d_input, inputs.t() @ grads
    if app.kind == "rot":
        k = matrix.shape[0]
        grads = grad.view(k, -1)
        d_input = None
        if need_input:
            out = _out(pool, grad, grads.shape[1], k)
            d_input = (
                torch.mm(grads.t(), matrix, out=out)
                if out is not None
                else torch.mm(grads.t(), matrix)
            ).view(-1)
        return d_input, grads @ state.view(-1, k)
    d_input = apply_on_axis(_mid_view(grad, app), matrix.t()) if need_input else None
    return d_input, _mid_gram(_mid_view(grad, app), _mid_view(state, app), CPU_CHUNK)


def _mid_gram(grad: torch.Tensor, state: torch.Tensor, chunk: int) -> torch.Tensor:
    """``sum_{l,r} grad[l, i, r] * state[l, j, r]`` without a temporary the size of the state."""
    left, k, right = grad.shape
    if right == 1:
        return grad.squeeze(2).t() @ state.squeeze(2)
    if left == 1:
        return grad.squeeze(0) @ state.squeeze(0).t()
    step = max(1, chunk // (k * right))
    total = torch.einsum("lir,ljr->ij", grad[:step], state[:step])
    for lo in range(step, left, step):
        total = total + torch.einsum("lir,ljr->ij", grad[lo : lo + step], state[lo : lo + step])
    return total


def _apply_inplace(app: App, matrix: torch.Tensor, state: torch.Tensor, chunk: int) -> None:
    """A ``mid`` application computed chunk by chunk into the state's own memory."""
    view = _mid_view(state, app)
    left, k, right = view.shape
    if right == 1:
        rows = view.squeeze(2)
        step = max(1, chunk // k)
        for lo in range(0, left, step):
            part = rows[lo : lo + step]
            part.copy_(part @ matrix.T)
    elif k * right <= chunk:
        step = max(1, chunk // (k * right))
        for lo in range(0, left, step):
            part = view[lo : lo + step]
            part.copy_(apply_on_axis(part, matrix).view_as(part))
    else:
        step = max(1, chunk // k)
        for row in range(left):
            for lo in range(0, right, step):
                part = view[row, :, lo : lo + step]
                part.copy_(matrix @ part)


def with_flat_gates(plan: Plan, mats: Sequence[torch.Tensor], built) -> list:
    """The matrices a plan's applications read: ``mats``, then the flat gates where the plan
    has native passes (``built``: what ``MatrixBuilder.build`` returned with them)."""
    return [*mats, built.flat] if plan.flat_gates else list(mats)


def _pass_forward(app, gates, state, pool, slope=None, squares=False, scale=None):
    """(the native pass's output, then activated where ``slope`` is given; with ``squares``,
    the sum of its squares, else None); ``gates``: the flat gates, the first of the pass's
    times ``scale``."""
    state = state.reshape(-1)
    out = _out(pool, state, 1, state.numel())
    out = torch.empty_like(state) if out is None else out.view(-1)
    return out, adtn_native.pass_forward(state, out, app, gates, slope, squares, scale)


def _native_transition(grad, layer_input, dot, factor, plan: Plan) -> None:
    """``_transition_backward_`` in one native pass, in place on ``grad``, with
    ``dot = <layer_input, grad>`` from the pass that produced ``grad`` (None: no
    normalisation)."""
    coefficient = 0.0
    if dot is not None and factor is not None:
        coefficient = dot * float(factor) ** 2 / layer_input.numel()
    adtn_native.transition(grad, layer_input, coefficient, plan.slope)


def _inverse_rms_of(squares: float, numel: int, like: torch.Tensor) -> torch.Tensor:
    """``_inverse_rms`` from a sum of squares that a native pass returned."""
    root = numel**0.5
    norm = max(squares**0.5, torch.finfo(like.dtype).tiny * root)
    return torch.tensor(root / norm, dtype=like.dtype)


# --------------------------------------------------------------------------- the network
def _activate_(state: torch.Tensor, slope: float | None) -> torch.Tensor:
    if slope is None:
        return state
    if slope == 0.0:
        return state.relu_()
    return torch.nn.functional.leaky_relu_(state, slope)


def _inverse_rms(state: torch.Tensor) -> torch.Tensor:
    """``1 / max(rms, tiny)``, as ``sqrt(N) / max(norm, tiny * sqrt(N))`` in place on the
    norm (a few operations on a number; each costs microseconds)."""
    root = state.numel() ** 0.5
    norm = torch.linalg.vector_norm(state)
    return norm.clamp_min_(torch.finfo(state.dtype).tiny * root).reciprocal_().mul_(root)


def _transition_backward_(grad, layer_input, inverse_rms, plan: Plan, chunk: int | None = None):
    """Gradient through ``activation`` and the division by the rms (``grad`` may be edited).

    ``grad`` arrives as the gradient with respect to the activated state ``a`` through the
    layer's products (whose first matrix carries the factor ``1/rms(a)``); the factor's own
    dependence on ``a`` adds ``-a * <a, grad> / (N * rms(a)**2)``. Each step is one fused
    pass (a multiply-add in place, then the activation's own backward kernel); with ``chunk``
    the latter runs chunk by chunk in place, so that no temporary as big as the state exists.
    """
    if plan.normalise:
        coefficient = torch.dot(layer_input, grad) * (inverse_rms.square() / layer_input.numel())
        grad.addcmul_(layer_input, coefficient, value=-1.0)
    if plan.slope is None:
        return grad

    # a > 0 exactly where the pre-activation is > 0 (the slopes are positive), so the
    # activations' backward kernels can read the activated state.
    def backward(g, a):
        if plan.slope == 0.0:
            return torch.ops.aten.threshold_backward(g, a, 0.0)
        return torch.ops.aten.leaky_relu_backward(g, a, plan.slope, True)

    if chunk is None:
        # In place (the kernels' out= forms accept their own input): a fresh state-sized
        # output would cost the system's page faults on a CPU.
        if plan.slope == 0.0:
            return torch.ops.aten.threshold_backward.grad_input(
                grad, layer_input, 0.0, grad_input=grad
            )
        return torch.ops.aten.leaky_relu_backward.grad_input(
            grad, layer_input, plan.slope, True, grad_input=grad
        )
    for lo in range(0, grad.numel(), chunk):
        part = grad[lo : lo + chunk]
        part.copy_(backward(part, layer_input[lo : lo + chunk]))
    return grad


def _first_layer(plan: Plan, mats, keep: list | None = None, inputs_only: bool = False):
    """The first layer's output state; ``keep`` collects each application's input (with
    ``inputs_only``, only those are computed, not the output)."""
    ref = mats[plan.fast[0][0].m]
    state = torch.ones(1, dtype=ref.dtype, device=ref.device)
    apps = plan.fast[0]
    for j, app in enumerate(apps):
        if keep is not None:
            keep.append(state)
        if inputs_only and j == len(apps) - 1:
            return None
        assert isinstance(app, App)  # (the first layer grows the product state: no passes)
        state = _apply(app, mats[app.m], state)
    return state


@dataclass(frozen=True)
class GrownStates:
    """What the backward pass of a natively grown first layer needs: the input of each of its
    applications (the first one the number 1), flat; where it was grown from the gates (the
    last of ``mats``), the plan's ``growth``."""

    states: tuple[torch.Tensor, ...]
    growth: adtn_native.GateGrowth | None = None


@dataclass
class FlatBuilt:
    """What ``FlatGates.build`` hands on: the flat gates are the gates' values themselves."""

    flat: torch.Tensor
    gate_values: torch.Tensor


class FlatGates:
    """The matrix builder of a plan that needs no matrices (``Plan.growth`` on the CPU: the
    first layer grown from the gates, native passes after it): the kernel reads the gates'
    flat values and writes their gradient in the same layout, so building and its backward
    pass are no work (``NetworkState``'s ``builder``)."""

    fallback_slots = ()

    def __init__(self, slots: int) -> None:
        self.slots = slots  # (the plan's matrix slots, left empty; the flat gates follow)

    def build(self, gate_values: torch.Tensor):
        # A copy (a few thousand numbers): the backward pass must read the values this
        # forward pass used, even if the parameter is changed in place in between.
        return [None] * self.slots, FlatBuilt(gate_values.detach().clone(), gate_values)

    def matrices(self, built, mats: list) -> list:
        return mats

    def grad_outputs(self, like: torch.Tensor) -> None:
        return None

    def backward(self, gate_values, built, grads, outs=None, extra=None):
        return extra


def grow_sizes(apps: Sequence) -> tuple | None:
    """For a first layer made of ``tail`` applications only: the ctypes arrays of their
    matrices' rows and columns, and each application's input size then the output's (the
    native kernel grows such a layer in one call; ``Plan.grow``); None for any other layer."""
    if not apps or not all(isinstance(app, App) and app.kind == "tail" for app in apps):
        return None
    numels = [1]
    for app in apps:
        numels.append(numels[-1] // app.a * app.b)
    rows = (ctypes.c_int * len(apps))(*(app.a for app in apps))
    columns = (ctypes.c_int * len(apps))(*(app.b for app in apps))
    return (rows, columns), tuple(numels)


def _grow_native(grow, apps, mats, pool, saved, slope=None, squares=False, growth=None):
    """(The first layer's output state, grown by the native kernel, then activated where
    ``slope`` is given; the sum of its squares when ``squares``, else None): from its
    matrices, or with ``growth`` from the flat gates (the last of ``mats``). ``grow``:
    ``Plan.grow``; CPU float32. ``saved`` gets a ``GrownStates``."""
    sizes, numels = grow
    ref = mats[-1] if growth is not None else mats[apps[0].m]
    inner = ref.new_empty(sum(numels[1:-1]))
    out = None if pool is None else pool.take(ref, numels[-1])
    out = ref.new_empty(numels[-1]) if out is None else out.view(-1)
    states = [ref.new_ones(1), *inner.split(list(numels[1:-1])), out]
    if growth is None:
        matrices = [mats[app.m] for app in apps]
        total = adtn_native.grow_forward(sizes, matrices, states, slope, squares)
    else:
        total = adtn_native.grow_gates_forward(growth, ref, states, slope, squares)
    if saved is not None:
        saved.append(GrownStates(tuple(states[:-1]), growth))
    return out, total


def _grow_backward(plan, mats, grown: GrownStates, grad, grads, outs, flat_grads) -> None:
    """The first layer's matrices' gradients into ``grads`` (written where ``outs`` says),
    or, grown from the gates, the gates' gradients added into ``flat_grads``; from its
    output's gradient ``grad`` (overwritten)."""
    if grown.growth is not None:
        adtn_native.grow_gates_backward(
            grown.growth, mats[-1], grown.states, grad.reshape(-1), flat_grads
        )
        return
    apps, sizes = plan.fast[0], plan.grow[0]
    targets = []
    for app in apps:
        target = None if outs is None else outs[app.m]
        if target is None or not target.is_contiguous():
            target = grad.new_empty(app.a, app.b)
        grads[app.m] = target
        targets.append(target)
    matrices = [mats[app.m].contiguous() for app in apps]
    adtn_native.grow_backward(sizes, matrices, grown.states, grad.reshape(-1), targets)


def _chunk_for(state: torch.Tensor) -> int:
    return CPU_CHUNK if state.device.type == "cpu" else GPU_CHUNK


def forward_state(
    plan: Plan,
    mats: Sequence[torch.Tensor],
    low_memory: bool = False,
    saved: list | None = None,
    inverse_rms: list | None = None,
    stop_layer: int | None = None,
    pool: BufferPool | None = None,
    scaled: list | None = None,
) -> torch.Tensor:
    """The network's output state (or, with ``stop_layer``, the activated input of that
    layer). ``saved`` collects what the backward pass needs (every application's input,
    or in low-memory mode the last layer's input), ``inverse_rms`` the layers' factors and
    ``scaled`` (stored mode) each later layer's first matrix times its factor (where that is a
    matrix product; a native pass scales its first gate itself)."""
    if not low_memory and stop_layer is None:
        return _forward_stored(plan, mats, saved, inverse_rms, pool, scaled)
    stop = len(plan.fast) if stop_layer is None else stop_layer
    state = _first_layer(plan, mats, saved if (saved is not None and not low_memory) else None)
    chunk = _chunk_for(state)
    for layer in range(1, stop + (stop_layer is not None)):
        state = _activate_(state, plan.slope)
        if layer == stop:
            return state
        factor = _inverse_rms(state) if plan.normalise else None
        if inverse_rms is not None:
            inverse_rms.append(factor)
        if low_memory:
            if saved is not None and layer == len(plan.fast) - 1:
                saved.append(state)
                state = state.clone()
            for j, app in enumerate(plan.low[layer]):
                scaling = None if j else factor
                if isinstance(app, GatePass):  # (tile by tile, so in place is fine)
                    adtn_native.pass_forward(state, state, app, mats[app.m], scale=scaling)
                    continue
                matrix = mats[app.m] if scaling is None else mats[app.m] * scaling
                _apply_inplace(app, matrix, state, chunk)
        else:
            for j, app in enumerate(plan.fast[layer]):
                if saved is not None:
                    saved.append(state)
                if isinstance(app, GatePass):
                    scaling = None if j else factor
                    state = _pass_forward(app, mats[app.m], state, pool, scale=scaling)[0]
                    continue
                matrix = mats[app.m] if (j or factor is None) else mats[app.m] * factor
                state = _apply(app, matrix, state, pool)
    return state


def _forward_stored(plan: Plan, mats, saved, inverse_rms, pool, scaled) -> torch.Tensor:
    """``forward_state`` without recomputation: one loop over every application, each a
    single matrix product on a view of the previous output (kept 2-D between products; a
    small layer's step is mostly this loop's own overhead)."""
    ref = mats[-1] if plan.flat_gates else mats[plan.fast[0][0].m]  # (FlatGates: no matrices)
    state = torch.ones(1, 1, dtype=ref.dtype, device=ref.device)
    if pool is not None and (1 << plan.num_bits) < POOL_MIN_NUMEL:
        pool = None
    slope, normalise = plan.slope, plan.normalise
    last_layer = len(plan.fast) - 1
    # Whether a native pass or the growth ended the previous layer (then it applied the
    # activation and, when normalising, summed the squares: two passes fewer over the state).
    fused, squares = False, None
    grow = plan.grow if (plan.flat_gates and state.device.type == "cpu") else None
    growth = plan.growth if grow else None
    for layer, apps in enumerate(plan.fast):
        first = pass_scale = None
        if grow and not layer:  # (the whole first layer in one native call, activated)
            fused = last_layer > 0
            state, squares = _grow_native(
                grow, apps, mats, pool, saved, slope if fused else None, fused and normalise,
                growth,
            )  # fmt: skip
            continue
        if layer:
            if slope is not None and not fused:
                state = state.relu_() if slope == 0.0 else _activate_(state, slope)
            if normalise:
                if squares is None:
                    factor = _inverse_rms(state)
                else:
                    factor = _inverse_rms_of(squares, state.numel(), state)
                if inverse_rms is not None:
                    inverse_rms.append(factor)
                if isinstance(apps[0], GatePass):  # (the pass scales its first gate)
                    pass_scale = factor
                else:
                    first = mats[apps[0].m] * factor
                    if scaled is not None:
                        scaled.append(first)
        fused, squares = False, None
        for index, app in enumerate(apps):
            if isinstance(app, GatePass):
                if saved is not None:
                    saved.append(state.reshape(-1))
                fused = index == len(apps) - 1 and layer < last_layer
                state, squares = _pass_forward(
                    app, mats[app.m], state, pool, slope if fused else None,
                    fused and normalise, pass_scale if index == 0 else None,
                )  # fmt: skip
                continue
            fused, squares = False, None
            kind = app.kind
            matrix = mats[app.m] if first is None else first
            first = None
            # The input is kept as the 2-D view the backward pass multiplies by.
            if kind == "rot":
                k = matrix.shape[1]
                inputs = state.view(-1, k)
                if saved is not None:
                    saved.append(inputs)
                out = None if pool is None else _out(pool, state, k, inputs.shape[0])
                inputs = inputs.t()
                state = (
                    torch.mm(matrix, inputs) if out is None else torch.mm(matrix, inputs, out=out)
                )
            elif kind == "tail":
                inputs = state.view(-1, app.a)
                if saved is not None:
                    saved.append(inputs)
                out = None if pool is None else _out(pool, state, inputs.shape[0], app.b)
                state = (
                    torch.mm(inputs, matrix) if out is None else torch.mm(inputs, matrix, out=out)
                )
            else:
                if saved is not None:
                    saved.append(state)
                state = apply_on_axis(_mid_view(state, app), matrix)
    return state.view(-1)


@dataclass(frozen=True)
class WeightGather:
    """Where the weight's entries sit in the output state, when that is not simply a prefix
    order (an interleaved index order, or a weight cropped from its padded shape): one gather
    each way instead of a reorder, a crop and a scatter over the whole state.

    ``gather[j]``: the state's entry that becomes the weight's flat entry ``j``;
    ``scatter[i]``: the weight's flat entry that state entry ``i`` holds, or the weight's
    number of entries for a padding entry (it reads a zero appended to the gradient).
    ``grid``: where ``gather`` is ``row_at[r] + column_at[c]`` for the weight viewed as rows of
    its last dimension (each index's bits are their own bits of the state, so the two add), those
    two tables (int64 and int32; the native kernel then reads a few KiB instead of the index
    arrays); else None."""

    gather: torch.Tensor
    scatter: torch.Tensor
    grid: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def build(order: torch.Tensor, padded_shape, shape) -> WeightGather:
        """From ``order`` (the state's entry of each padded weight entry, rows first)."""
        gather = order.view(padded_shape)[tuple(slice(0, d) for d in shape)].reshape(-1)
        scatter = torch.full_like(order, gather.numel())
        scatter[gather] = torch.arange(gather.numel(), device=order.device)
        table = gather.view(-1, shape[-1])
        row_at, column_at = table[:, 0].contiguous(), table[0] - table[0, 0]
        grid = None
        if torch.equal(table, row_at[:, None] + column_at[None, :]):
            grid = (row_at, column_at.to(torch.int32).contiguous())
        return WeightGather(gather.contiguous(), scatter, grid)


def finish(plan: Plan, state: torch.Tensor, scale: torch.Tensor | None, order=None):
    """The weight from the output state: gathered by ``order`` (a ``WeightGather``; None:
    the state in the weight's order, cropped), then ``scale * W / rms(W)`` (the raw tensor
    when ``scale`` is None). Returns (weight, 1 / rms(W) or None, the raw tensor)."""
    squares = None
    if order is not None and plan.flat_gates:  # (native: the gather sums the squares too)
        tensor = state.new_empty(plan.shape)
        squares = adtn_native.gather(state, order.gather, tensor, order.grid)
    elif order is not None:
        tensor = state.index_select(0, order.gather).view(plan.shape)
    else:
        tensor = _cropped(plan, state)
    if scale is None:
        return tensor, None, tensor
    if squares is None:
        inverse_rms = _inverse_rms(tensor)
    else:
        inverse_rms = _inverse_rms_of(squares, tensor.numel(), tensor)
    return tensor * (scale * inverse_rms), inverse_rms, tensor


def _cropped(plan: Plan, state: torch.Tensor) -> torch.Tensor:
    tensor = state.view(plan.padded_shape)
    if plan.padded_shape != plan.shape:
        tensor = tensor[tuple(slice(0, d) for d in plan.shape)]
    return tensor


def _finish_backward(plan: Plan, tensor, scale, inverse_rms, grad_weight, order, pool=None):
    """(gradient of the output state as a fresh flat tensor, gradient of the scale);
    ``tensor`` is the raw tensor that ``finish`` returned."""
    size = 1 << plan.num_bits
    numel = tensor.numel()
    if order is not None and plan.flat_gates:
        return _finish_backward_native(tensor, scale, inverse_rms, grad_weight, order, pool, size)
    if order is not None:
        # The weight's gradient goes into a flat buffer with one zero after it, which the
        # scatter reads for the padding entries.
        if pool is None:
            flat = grad_weight.new_empty(numel + 1)
        else:  # (read only by the scatter below, so one buffer serves every step)
            flat = pool.scratch(grad_weight, numel + 1)
        flat[numel:].zero_()
        grad = flat[:numel].view(plan.shape)
    else:
        grad = grad_weight.new_empty(plan.shape)
    grad_scale = None
    if scale is None:
        grad.copy_(grad_weight)
    else:
        if tensor.is_contiguous():
            dot = torch.dot(tensor.view(-1), grad_weight.reshape(-1))
        else:
            dot = (tensor * grad_weight).sum()
        grad_scale = dot * inverse_rms
        # d/dW of scale * W / rms(W): scale/rms * (g - W <W, g> / (N rms**2)).
        torch.mul(grad_weight, scale * inverse_rms, out=grad)
        grad.addcmul_(tensor, scale * inverse_rms**3 * dot / numel, value=-1.0)
    if order is not None:
        out = None if pool is None else pool.take(flat, size)
        if out is None:
            return flat.index_select(0, order.scatter), grad_scale
        return torch.index_select(flat, 0, order.scatter, out=out.view(-1)), grad_scale
    if plan.padded_shape != plan.shape:
        full = grad.new_zeros(plan.padded_shape)
        full[tuple(slice(0, d) for d in plan.shape)] = grad
        grad = full
    return grad.view(-1), grad_scale


def _finish_backward_native(tensor, scale, inverse_rms, grad_weight, order, pool, size):
    """``_finish_backward`` where the weight is gathered, in one pass of the native kernel
    (the scale's correction and the scatter together) after the dot product."""
    flat_grad = grad_weight.reshape(-1)
    if not flat_grad.is_contiguous():
        flat_grad = flat_grad.contiguous()
    out = None if pool is None else pool.take(flat_grad, size)
    out = flat_grad.new_empty(size) if out is None else out.view(-1)
    if scale is None:
        adtn_native.scatter_scaled(
            flat_grad, tensor.view(-1), order.scatter, 1.0, 0.0, out, order.grid
        )
        return out, None
    dot = torch.dot(tensor.view(-1), flat_grad)
    factor = float(scale) * float(inverse_rms)
    # d/dW of scale * W / rms(W): scale/rms * (g - W <W, g> / (N rms**2)).
    correction = factor * float(inverse_rms) ** 2 * float(dot) / tensor.numel()
    adtn_native.scatter_scaled(
        flat_grad, tensor.view(-1), order.scatter, factor, correction, out, order.grid
    )
    return out, dot * inverse_rms


def _graph_is_kept() -> bool:
    """Whether this backward pass was asked to keep the graph (``retain_graph=True``; a
    private query, so when it is missing the states are kept, which is always correct)."""
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    try:
        return True if query is None else bool(query())
    except RuntimeError:
        return True


class NetworkState(torch.autograd.Function):
    """``apply(plan, low_memory, order, pool, builder, scale, *inputs)`` → the weight
    (``finish`` of the network's output state); ``pool``: a ``BufferPool`` or None.

    ``builder``: None, and ``inputs`` are the applications' matrices; or an object whose
    ``build(values)`` returns (the matrices, what its ``backward(values, that, grads of the
    matrices)`` needs to return the gradient of ``values``), and ``inputs`` is the one flat
    tensor of the gates' values, so that building the matrices from the gates records no
    autograd graph either (``engine.adtn_matrices``)."""

    @staticmethod
    def forward(ctx, plan: Plan, low_memory: bool, order, pool, builder, scale, *inputs):
        mats: Sequence[torch.Tensor]
        if builder is None:
            mats, built = inputs, None
        else:
            (values,) = inputs
            mats, built = builder.build(values)
            mats = with_flat_gates(plan, mats, built)
        ctx.builder, ctx.built, ctx.num_inputs = builder, built, len(inputs)
        saved: list = []
        inverse_rms: list = []
        scaled: list = []
        pool = None if low_memory else pool
        state = forward_state(plan, mats, low_memory, saved, inverse_rms, pool=pool, scaled=scaled)
        weight, final_inverse_rms, raw = finish(plan, state, scale, order)
        if pool is not None and order is not None and state.numel() >= POOL_MIN_NUMEL:
            pool.give(state)  # gathered: nothing refers to the output state any more
        state = raw
        ctx.plan, ctx.low_memory, ctx.order = plan, low_memory, order
        ctx.pool = pool
        # Big states are kept as attributes, not saved tensors, so that the backward pass
        # can let go of each as soon as it is used (saved tensors live until it returns).
        # So are the matrices built here, what the builder needs (the gates' gathered values)
        # and the layers' factors: the gradients are those of the values this pass used.
        # The inputs themselves are saved only where the backward pass reads them again
        # (no builder: they are the matrices; a builder that rebuilds some under autograd).
        ctx.state, ctx.saved, ctx.scaled = state, saved, scaled
        ctx.inverse_rms = inverse_rms
        ctx.mats = None if builder is None else mats
        ctx.saves_inputs = builder is None or bool(getattr(builder, "fallback_slots", True))
        if ctx.saves_inputs:
            ctx.save_for_backward(scale, final_inverse_rms, *inputs)
        else:
            ctx.save_for_backward(scale, final_inverse_rms)
        return weight

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_weight):
        plan = ctx.plan
        scale, final_inverse_rms, *inputs = ctx.saved_tensors
        pool, built = None, ctx.built
        if not ctx.saves_inputs:
            inputs = [built.gate_values]
        mats = inputs if ctx.mats is None else ctx.builder.matrices(built, ctx.mats)
        inverse_rms, scaled = ctx.inverse_rms, ctx.scaled
        saved, state = list(ctx.saved), ctx.state
        if not _graph_is_kept():
            ctx.saved = ctx.state = ctx.built = None  # let each go as soon as it is used
            pool = ctx.pool  # and, on the CPU, reuse the big states' memory
        if pool is not None and (1 << plan.num_bits) < POOL_MIN_NUMEL:
            pool = None
        grad, grad_scale = _finish_backward(
            plan, state, scale, final_inverse_rms, grad_weight, ctx.order, pool
        )
        if pool is not None and scale is not None and state.numel() == 1 << plan.num_bits:
            pool.give(state)  # (the state itself; unscaled, the caller holds a view of it)
        del state
        grads: list = [None] * len(mats)
        # Where the builder wants the matrices' gradients (views of one buffer), if anywhere.
        outs = ctx.builder.grad_outputs(grad) if ctx.builder is not None else None
        # The native passes' gate gradients, laid out as the flat gates.
        flat_grads = grad.new_zeros(built.flat.numel()) if plan.flat_gates else None
        if ctx.low_memory:
            _backward_low_memory(plan, mats, saved, inverse_rms, grad, grads, flat_grads)
        else:
            _backward_stored(
                plan, mats, saved, inverse_rms, grad, grads, pool, list(scaled), outs, flat_grads
            )
        if ctx.builder is not None:
            grads = [ctx.builder.backward(inputs[0], built, grads, outs, flat_grads)]
        needs = ctx.needs_input_grad
        return (
            None,
            None,
            None,
            None,
            None,
            grad_scale,
            *(g if need else None for g, need in zip(grads, needs[6:])),
        )


def _backward_stored(
    plan, mats, saved, inverse_rms, grad, grads, pool=None, scaled=None, outs=None, flat_grads=None
):
    """``grad`` (the output state's) and the saved states are owned here: each goes to
    ``pool`` once used. ``scaled``: the forward pass's scaled first matrices (consumed);
    ``outs``: per matrix, None or where to write its gradient; ``flat_grads``: where native
    passes write their gates' gradients (laid out as the flat gates)."""
    size = 1 << plan.num_bits
    normalise = plan.normalise
    for layer in range(len(plan.fast) - 1, -1, -1):
        apps = plan.fast[layer]
        if not layer and saved and isinstance(saved[-1], GrownStates):
            _grow_backward(plan, mats, saved.pop(), grad, grads, outs, flat_grads)
            if pool is not None and grad.numel() == size:
                pool.give(grad)
            return
        factor = inverse_rms[layer - 1] if (layer and normalise) else None
        for j in range(len(apps) - 1, -1, -1):
            app, state = apps[j], saved.pop()
            grad_in = None
            kind = app.kind
            scaled_here = bool(j == 0 and factor is not None)
            if isinstance(app, GatePass):
                # The input's gradient overwrites the output's, tile by tile: one state serves
                # the whole backward pass and stays in the cache.
                grad = grad.reshape(-1)
                grad_in = grad if (layer or j) else None
                # A layer's first pass also takes the gradient back through the activation
                # before it. The normalisation there is left out of the gradient: the rms
                # factors only scale the weight, and the final division by its rms undoes any
                # scale (the activations are positively homogeneous), so its exact gradient
                # equals the one through constant factors.
                slope = plan.slope if (layer and not j) else None
                adtn_native.pass_backward(
                    state, grad, grad_in, app, mats[app.m], flat_grads, slope=slope,
                    scale=factor if scaled_here else None,
                )  # fmt: skip
                if pool is not None and state.numel() == size:
                    pool.give(state)
                grad = grad_in
                del state
                continue
            if not scaled_here:
                matrix = mats[app.m]
            else:
                matrix = scaled.pop() if scaled else mats[app.m] * factor
            if kind == "rot":
                k = matrix.shape[0]
                grads2 = grad.view(k, -1)
                target = None if outs is None else outs[app.m]
                grad_matrix = (
                    torch.mm(grads2, state)
                    if target is None
                    else torch.mm(grads2, state, out=target)
                )
                if layer or j:
                    out = None if pool is None else _out(pool, grad, grads2.shape[1], k)
                    grad_in = (
                        torch.mm(grads2.t(), matrix)
                        if out is None
                        else torch.mm(grads2.t(), matrix, out=out)
                    )
            elif kind == "tail":
                grads2 = grad.view(-1, app.b)
                target = None if outs is None else outs[app.m]
                grad_matrix = (
                    torch.mm(state.t(), grads2)
                    if target is None
                    else torch.mm(state.t(), grads2, out=target)
                )
                if layer or j:
                    out = None if pool is None else _out(pool, grad, grads2.shape[0], app.a)
                    grad_in = (
                        torch.mm(grads2, matrix.t())
                        if out is None
                        else torch.mm(grads2, matrix.t(), out=out)
                    )
            else:
                grad_in, grad_matrix = _backward(app, matrix, state, grad, layer > 0 or j > 0)
            if not j and factor is not None:
                grad_matrix = grad_matrix.mul_(factor)
            grads[app.m] = grad_matrix
            # grad_in is a fresh tensor (never the incoming gradient): safe to edit in place.
            if layer and not j:
                assert grad_in is not None  # (only the very first application has none)
                grad_in = _transition_backward_(grad_in.view(-1), state.view(-1), factor, plan)
            if pool is not None:
                pool.give(*(t for t in (state, grad) if t.numel() == size))
            grad = grad_in
            del state


def _backward_low_memory(plan, mats, saved, inverse_rms, grad, grads, flat_grads=None):
    """``grad`` (the output state's, owned here) is transformed in place; ``flat_grads``:
    where native passes write their gates' gradients."""
    depth = len(plan.fast)
    chunk = _chunk_for(grad)
    for layer in range(depth - 1, 0, -1):
        if layer == depth - 1 and saved:
            layer_input = saved.pop()
        else:
            layer_input = forward_state(plan, mats, low_memory=True, stop_layer=layer)
        factor = inverse_rms[layer - 1] if plan.normalise else None
        apps = plan.low[layer]
        # (a native pass reads the flat gates and scales its first gate itself)
        effective = [
            mats[a.m] if (j or factor is None or isinstance(a, GatePass)) else mats[a.m] * factor
            for j, a in enumerate(apps)
        ]
        work = torch.empty_like(layer_input) if len(apps) > 1 else None
        dot = None
        for j in range(len(apps) - 1, -1, -1):
            if j == 0:
                state = layer_input
            else:
                # The input of application j, recomputed from the layer's input in place.
                assert work is not None  # allocated whenever the layer has a second application
                work.copy_(layer_input)
                for i in range(j):
                    if isinstance(apps[i], GatePass):
                        scaling = None if i else factor
                        adtn_native.pass_forward(work, work, apps[i], effective[i], scale=scaling)
                    else:
                        _apply_inplace(apps[i], effective[i], work, chunk)
                state = work
            app = apps[j]
            if isinstance(app, GatePass):
                scaling = None if j else factor
                dot = adtn_native.pass_backward(
                    state, grad, grad, app, effective[j], flat_grads, scaling is not None,
                    scale=scaling,
                )  # fmt: skip
                state = None
                continue
            grad_matrix = _mid_gram(_mid_view(grad, app), _mid_view(state, app), chunk)
            grads[app.m] = grad_matrix if (j or factor is None) else grad_matrix * factor
            _apply_inplace(app, effective[j].t(), grad, chunk)
            state = None
        del work
        if isinstance(apps[0], GatePass):
            _native_transition(grad, layer_input, dot, factor, plan)
        else:
            grad = _transition_backward_(grad, layer_input, factor, plan, chunk)
        del layer_input
    # The first layer: its states are at most a quarter of the output, recomputed and kept.
    keep: list = []
    _first_layer(plan, mats, keep, inputs_only=True)
    apps = plan.fast[0]
    for j in range(len(apps) - 1, -1, -1):
        grad, grads[apps[j].m] = _backward(apps[j], mats[apps[j].m], keep.pop(), grad, j > 0)
    return grad
