"""The deep, automatically differentiable tensor network (ADTN) that generates a weight.

A weight of shape ``(d_1, ..., d_k)`` is padded per mode to ``2**q_i`` and read as a tensor of
``Q = sum(q_i)`` binary indices (bit 0 is the most significant bit of the flat index). The
network starts from the product state ``v ⊗ … ⊗ v`` with ``v = [1, 0]``, applies ``depth``
layers of free 4×4 local tensors ("gates") on neighbouring index pairs with an elementwise
activation between layers, and is cropped back to the weight's shape.

Only numbers that can change the weight are stored: a gate whose input index is still in state
``[1, 0]`` ("fresh") multiplies zeros with half of its columns, so those columns are not kept.
Each gate is stored as a ``(4, c)`` tensor holding the columns listed in its ``GateSpec``.

The generated weight is ``scale * W / rms(W)``: the network fixes the weight's pattern and the
scale its size. That keeps the weight's statistics those of the dense layer at any depth and
makes the product of many free tensors harmless (it can neither explode nor vanish).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from engine import adtn_gpu, adtn_native, adtn_native_network
from engine.adtn_kernel import (
    App,
    BufferPool,
    FlatGates,
    NetworkState,
    Plan,
    WeightGather,
    apply_on_axis,
    finish,
    forward_state,
    grow_sizes,
    with_flat_gates,
)
from engine.adtn_matrices import MatrixBuilder, flat_layout, gate_views
from engine.choices import ACTIVATIONS, INDEX_ORDERS, LAYOUTS
from engine.choices import GATE_INITS as INITS

LEAKY_RELU_SLOPE = 0.01
# 2**28 float32 entries are 1 GiB of state; larger weights are refused rather than attempted.
MAX_Q = 28
# Consecutive gates are merged into block matrices on this many binary indices (16×16): on the
# CPU the fewer operations of larger blocks do not pay for their extra arithmetic
# (benchmarks/adtn_overhead.py --block-bits compares sizes).
DEFAULT_BLOCK_BITS = 4
# The backward pass keeps every block's input while they fit in this many bytes (on a GPU, at
# least an eighth of its memory); beyond it, it recomputes them and keeps about four states.
STORED_STATES_BUDGET_BYTES = 256 << 20
MEMORY_MODES = ("auto", "low", "fast")
# Gate initialisations (INITS, engine.choices.GATE_INITS): Haar-random orthogonal (the
# default), the identity plus noise (the network starts close to passing its product state
# through), or plain Gaussian noise. The weight's size is set by ``scale`` alone, so these only
# set its pattern and the size of the gates, against which the optimiser's step is measured:
# 0.5 is the entry size of a 4×4 orthogonal matrix.
NEAR_IDENTITY_NOISE = 0.1
NORMAL_INIT_STD = 0.5
# ``fit`` draws this many starts, descends from each for a short while, then continues the best.
FIT_RESTARTS = 8
FIT_RESTARTS_MAX_Q = 20


@dataclass(frozen=True)
class GateSpec:
    """Where a stored local tensor acts: its layer, index pair and stored input columns.

    ``columns`` are values ``2 * bit_a + bit_b`` of the input pair ``(a, b = a + 1)``; the
    stored tensor holds those columns of the 4×4 matrix ``M[out, in]``.
    """

    layer: int
    pair: tuple[int, int]
    columns: tuple[int, ...]

    @property
    def num_parameters(self) -> int:
        return 4 * len(self.columns)


def mode_bits(shape: Sequence[int]) -> tuple[int, ...]:
    """Binary indices per mode: the smallest ``q`` with ``2**q >= d`` (0 for ``d = 1``)."""
    return tuple((int(d) - 1).bit_length() for d in shape)


def layer_pairs(num_bits: int, layout: str) -> list[tuple[int, int]]:
    """Index pairs of one layer, in application order."""
    if layout == "brick":
        even = [(i, i + 1) for i in range(0, num_bits - 1, 2)]
        odd = [(i, i + 1) for i in range(1, num_bits - 1, 2)]
        return even + odd
    if layout == "stair":
        return [(i, i + 1) for i in range(num_bits - 1)]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def build_gate_specs(num_bits: int, depth: int, layout: str) -> list[GateSpec]:
    """Every gate of the network in application order, with the columns that matter."""
    fresh = set(range(num_bits))
    specs = []
    for layer in range(depth):
        for a, b in layer_pairs(num_bits, layout):
            bits_a = (0,) if a in fresh else (0, 1)
            bits_b = (0,) if b in fresh else (0, 1)
            columns = tuple(2 * ia + ib for ia in bits_a for ib in bits_b)
            specs.append(GateSpec(layer, (a, b), columns))
            fresh -= {a, b}
        # An activation maps 0 to 0, so an index that no gate touched stays fresh across it.
    return specs


def network_bit_order(bits: Sequence[int], index_order: str) -> list[tuple[int, int]]:
    """(mode, bit) for each binary index of the network, in order (see ``ADTN``)."""
    if index_order == "rows_first":
        return [(mode, bit) for mode, q in enumerate(bits) for bit in range(q)]
    if index_order == "interleaved":
        return [(mode, bit) for bit in range(max(bits)) for mode, q in enumerate(bits) if bit < q]
    raise ValueError(f"index_order must be one of {INDEX_ORDERS}, got {index_order!r}")


def _check_arguments(shape: Sequence[int], depth: int, activation: str, layout: str) -> None:
    if len(shape) == 0 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {tuple(shape)}")
    if int(depth) < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    q = sum(mode_bits(shape))
    if q < 2:
        raise ValueError(
            f"a weight of shape {tuple(shape)} has {math.prod(shape)} element(s); an ADTN needs "
            "at least two binary indices (a weight of 3 or more elements)"
        )
    if q > MAX_Q:
        raise ValueError(
            f"a weight of shape {tuple(shape)} needs {q} binary indices; at most {MAX_Q} are "
            f"supported (2**{q} entries would not fit in memory)"
        )


def _random_orthogonal_columns(columns: Sequence[int], generator=None) -> torch.Tensor:
    """Columns of a Haar-random 4×4 orthogonal matrix: keeps the state's norm at init."""
    gaussian = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q[:, list(columns)].to(torch.get_default_dtype())


def initial_gate(init: str, columns: Sequence[int], generator=None) -> torch.Tensor:
    """A gate's stored columns at initialisation (see ``INITS``)."""
    if init == "orthogonal":
        return _random_orthogonal_columns(columns, generator)
    noise = torch.randn(4, len(columns), generator=generator, dtype=torch.float64)
    if init == "near_identity":
        gate = torch.eye(4, dtype=torch.float64)[:, list(columns)] + NEAR_IDENTITY_NOISE * noise
    elif init == "normal":
        gate = NORMAL_INIT_STD * noise
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return gate.to(torch.get_default_dtype())


class ADTN(nn.Module):
    """A weight tensor of exactly ``shape`` generated by a deep tensor network.

    Args:
        shape: the weight's shape, any rank and sizes (padded to powers of two internally).
        depth: number of layers ``M`` of local tensors.
        activation: ``"relu"`` (the paper's), ``"leaky_relu"`` or ``"none"``, between layers.
        layout: ``"brick"`` (pairs (0,1),(2,3),… then (1,2),(3,4),…) or ``"stair"``
            (pairs (0,1),(1,2),…,(Q-2,Q-1)).
        init_std: standard deviation of the generated weight at initialisation; by default
            PyTorch's default for a dense layer of this weight, ``1/sqrt(3 * fan_in)``.
        generator: optional ``torch.Generator`` for reproducible initialisation.
        block_bits: indices a block of merged gates spans (default ``DEFAULT_BLOCK_BITS``).
        memory: what the backward pass keeps: ``"fast"`` every block's input, ``"low"``
            about four states of ``2**Q`` numbers (it recomputes the rest), ``"auto"`` the
            first while it fits ``STORED_STATES_BUDGET_BYTES``.
        init: the gates' initialisation, one of ``INITS``.
        index_order: how the network's binary indices map to the weight's: ``"rows_first"``
            (all bits of mode 0, most significant first, then mode 1, …) or ``"interleaved"``
            (one bit of each mode in turn, most significant first, while the modes have
            bits left: r0 c0 r1 c1 …, so that neighbouring gates couple rows and columns
            at the same scale, as a TT-matrix does).
    """

    def __init__(
        self,
        shape: Sequence[int],
        depth: int = 1,
        activation: str = "relu",
        layout: str = "brick",
        init_std: float | None = None,
        generator: torch.Generator | None = None,
        block_bits: int | None = None,
        memory: str = "auto",
        init: str = "orthogonal",
        index_order: str = "rows_first",
    ) -> None:
        super().__init__()
        _check_arguments(shape, depth, activation, layout)
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if index_order not in INDEX_ORDERS:
            raise ValueError(f"index_order must be one of {INDEX_ORDERS}, got {index_order!r}")
        self.memory = memory
        self.init = init
        self.index_order = index_order
        self.shape = tuple(int(d) for d in shape)
        self.mode_bits = mode_bits(self.shape)
        self.padded_shape = tuple(1 << q for q in self.mode_bits)
        self.Q = sum(self.mode_bits)
        self.depth = int(depth)
        self.activation = activation
        self.negative_slope = LEAKY_RELU_SLOPE if activation == "leaky_relu" else 0.0
        self.layout = layout
        self.block_bits = max(2, int(block_bits or DEFAULT_BLOCK_BITS))
        self.specs = build_gate_specs(self.Q, self.depth, layout)
        self._layer_plan = _plan_later_layers(self.specs, self.depth, self.Q)
        self._first_steps = self._compile_first_layer()
        # All gates in one parameter, laid out as ``flat_layout`` (grouped by stored columns):
        # one tensor for the optimiser and autograd instead of one per gate, whose per-tensor
        # bookkeeping cost more than a small network's contraction. ``gates`` gives the
        # per-gate views; state dicts keep one entry per gate (``gates.<i>``).
        _, self._gate_offsets, num_values = flat_layout(self.specs)
        values = torch.empty(num_values)
        for spec, offset in zip(self.specs, self._gate_offsets):
            gate = initial_gate(init, spec.columns, generator)
            values[offset : offset + gate.numel()] = gate.reshape(-1)
        self.gate_values = nn.Parameter(values)
        self.register_state_dict_post_hook(_per_gate_state_dict)
        self.register_load_state_dict_pre_hook(_flat_gates_on_load)
        if init_std is None:
            fan_in = math.prod(self.shape[1:]) if len(self.shape) > 1 else self.shape[0]
            init_std = 1.0 / math.sqrt(3.0 * fan_in)
        self.scale = nn.Parameter(torch.tensor(float(init_std)))
        self._cache_key: tuple | None = None
        self._cache_value: torch.Tensor | None = None
        # Per (block size, native passes or not): the compiled plans and recipe, its builder.
        self._compiled_cache: dict = {}
        self._builders: dict = {}
        self._order_cache: torch.Tensor | None = None
        self._gather_cache: WeightGather | None = None
        self._grid_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        # "auto": native gate passes where ``_native_for`` allows; "matmul": matrix products
        # only (the reference the native passes are tested against).
        self.kernel = "auto"
        # States the CPU backward pass hands on to the next step (``free``, at most ``limit``).
        self.buffer_pool = BufferPool()

    def __getstate__(self):
        # Copies (deepcopy, as engine.materialize makes) leave the reusable buffers, the
        # cached inference weight and the gather index behind: they are rebuilt on demand.
        state = self.__dict__.copy()
        state["buffer_pool"] = BufferPool()
        state["_cache_key"] = state["_cache_value"] = state["_order_cache"] = None
        state["_gather_cache"] = state["_grid_cache"] = None
        # (native passes hold ctypes arrays, which do not copy; the plans are cheap to redo)
        state["_compiled_cache"], state["_builders"] = {}, {}
        return state

    # ----------------------------------------------------------------------------- counting
    @staticmethod
    def count_parameters(
        shape: Sequence[int], depth: int = 1, layout: str = "brick", tensors_only: bool = False
    ) -> int:
        """Parameters of an ADTN of this structure, computed without building it."""
        _check_arguments(shape, depth, "none", layout)
        specs = build_gate_specs(sum(mode_bits(shape)), depth, layout)
        return sum(s.num_parameters for s in specs) + (0 if tensors_only else 1)

    def num_parameters(self, tensors_only: bool = False) -> int:
        """Numbers that can change the weight: the stored local tensors, plus the scale."""
        count = self.gate_values.numel()
        return count if tensors_only else count + 1

    def gate_specs(self) -> list[GateSpec]:
        """Per stored tensor (``gates[i]``), its layer, index pair and stored columns."""
        return list(self.specs)

    @property
    def gates(self) -> list[torch.Tensor]:
        """Each gate's stored ``(4, columns)`` tensor, a view of ``gate_values`` (in-place
        changes reach the parameter)."""
        return self._views_of(self.gate_values)

    def gate_grads(self) -> list[torch.Tensor | None]:
        """Each gate's gradient, a view of ``gate_values.grad`` (None before a backward)."""
        grad = self.gate_values.grad
        if grad is None:
            return [None] * len(self.specs)
        return list(self._views_of(grad))

    def _views_of(self, values: torch.Tensor) -> list[torch.Tensor]:
        return gate_views(values, self.specs, self._gate_offsets)

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, Q={self.Q}, depth={self.depth}, layout={self.layout!r}, "
            f"activation={self.activation!r}, parameters={self.num_parameters()}"
        )

    # ---------------------------------------------------------------------------- contraction
    def contract(self) -> torch.Tensor:
        """The raw network tensor cropped to ``shape`` (no scale, no normalisation)."""
        return self._generate(scaled=False)

    def forward(self) -> torch.Tensor:
        """The weight: ``scale * W / rms(W)``. Cached while gradients are off (inference)."""
        if torch.is_grad_enabled():
            self._cache_key = self._cache_value = None
            return self._weight()
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self.parameters())
        value = self._cache_value
        if key != self._cache_key or value is None:
            value = self._cache_value = self._weight()
            self._cache_key = key
        return value

    def _weight(self) -> torch.Tensor:
        # Matmuls in half precision would lose the weight's accuracy over many gates.
        device_type = self.scale.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._generate(scaled=True)

    def _generate(self, scaled: bool) -> torch.Tensor:
        """The weight (``scaled``: normalised between layers, times ``scale / rms``) or the
        raw network tensor, cropped to ``shape``; ``engine.adtn_kernel`` does the work.

        The first layer acts on a product state (``_compile_first_layer``). In later layers, a
        half-layer of side-by-side gates is a Kronecker product: groups of its gates become
        block matrices, all built in one batched product, each applied in one matrix product.
        Other runs of gates (the stair layout) are merged into blocks one gate at a time.
        Between layers the state is divided by its rms when ``scaled``; that commutes with
        the (positively homogeneous) activations, so it changes nothing but the numbers' range.
        """
        values = self.gate_values
        low_memory = self._low_memory_for(values)
        plans, recipe = self._compiled(self._native_for(values))
        plan = plans[scaled]
        scale = self.scale if scaled else None
        order = self._weight_gather(values.device)
        tracked = values.requires_grad or (scaled and self.scale.requires_grad)
        # (a plan the kernel grows from the gates needs no matrices: the stored mode on the CPU)
        flat_only = plan.growth is not None and values.device.type == "cpu" and not low_memory
        builder = FlatGates(len(recipe)) if flat_only else self._builder(plan.flat_gates)
        if torch.is_grad_enabled() and tracked:
            pool = self.buffer_pool if values.device.type == "cpu" else None
            self.buffer_pool.limit = sum(len(layer) for layer in plan.fast) + 4
            grid = self._weight_grid(values.device, order) if flat_only else None
            if adtn_native_network.runs(plan.network, values, scale, grid):
                return adtn_native_network.NetworkWeight.apply(
                    plan.network, plan.slope, grid, pool, scale, values
                )
            return NetworkState.apply(plan, low_memory, order, pool, builder, scale, values)
        mats, built = builder.build(values)
        mats = with_flat_gates(plan, mats, built)
        return finish(plan, forward_state(plan, mats, low_memory), scale, order)[0]

    def _native_for(self, ref: torch.Tensor) -> bool:
        """Whether this contraction (of gates like ``ref``) runs its Kronecker sweeps as
        native gate passes: float32, ``kernel`` not "matmul", and on the CPU the C kernel
        built (``engine.adtn_native``), on a GPU the Triton kernels working
        (``engine.adtn_gpu``). Either memory mode: in the low one, the passes work in place."""
        if self.kernel == "matmul" or ref.dtype != torch.float32 or self.Q < adtn_native.MIN_BITS:
            return False
        if ref.device.type == "cpu":
            return adtn_native.enabled()
        if ref.device.type == "cuda":  # the same passes as Triton kernels, for large states
            return (
                self.Q >= adtn_gpu.MIN_BITS and adtn_native.switched_on() and adtn_gpu.available()
            )
        return False

    def _builder(self, native: bool = False) -> MatrixBuilder:
        """The hand-differentiated builder of the contraction's matrices (one per plan)."""
        key = (self.block_bits, native)
        builder = self._builders.get(key)
        if builder is None:
            builder = self._builders[key] = MatrixBuilder(
                self._compiled(native)[1],
                self.specs,
                self._sweep_layout,
                lambda entry, gates: self._block_matrix(entry[1], entry[2], entry[3], gates),
            )
        return builder

    def _sweep_layout(self, run: list[int]) -> tuple[list[list[int]], int, int]:
        """A Kronecker run's groups, and its indices before the first and after the last gate."""
        before = self.specs[run[0]].pair[0]
        return self._sweep_groups(run), before, self.Q - 1 - self.specs[run[-1]].pair[1]

    def network_bit_order(self) -> list[tuple[int, int]]:
        """(mode, bit) of the weight that each of the network's binary indices stands for;
        bit 0 is a mode's most significant."""
        return network_bit_order(self.mode_bits, self.index_order)

    def state_index_order(self, device: torch.device) -> torch.Tensor | None:
        """For ``index_order="interleaved"``: the state's entry of each flat weight entry
        (one gather, cached per device; far faster than a permute of Q axes of size 2);
        None for ``"rows_first"``, where the two orders are the same."""
        if self.index_order == "rows_first":
            return None
        if self._order_cache is None or self._order_cache.device != device:
            network = self.network_bit_order()
            rows_first = [(mode, bit) for mode, q in enumerate(self.mode_bits) for bit in range(q)]
            axes = [network.index(key) for key in rows_first]
            flat = torch.arange(1 << self.Q, device=device).view([2] * self.Q)
            self._order_cache = flat.permute(axes).reshape(-1).contiguous()
        return self._order_cache

    def _weight_gather(self, device: torch.device) -> WeightGather | None:
        """The gather of the weight's entries from the output state (cached per device);
        None where the weight is the state itself (rows first, sizes powers of two)."""
        if self.index_order == "rows_first" and self.padded_shape == self.shape:
            return None
        cached = self._gather_cache
        if cached is None or cached.gather.device != device:
            order = self.state_index_order(device)
            if order is None:
                order = torch.arange(1 << self.Q, device=device)
            cached = self._gather_cache = WeightGather.build(order, self.padded_shape, self.shape)
        return cached

    def _weight_grid(self, device: torch.device, order: WeightGather | None):
        """(row_at, column_at): where the weight's entry (r, c) lies in the output state, as
        ``row_at[r] + column_at[c]`` with the weight viewed as rows of its last dimension;
        None where no such tables exist. Where the weight is the state itself, the tables of
        that identity (cached per device)."""
        if order is not None:
            return order.grid
        cached = self._grid_cache
        if cached is None or cached[0].device != device:
            columns = self.shape[-1]
            rows = math.prod(self.shape) // columns
            row_at = torch.arange(rows, device=device) * columns
            cached = self._grid_cache = (row_at, torch.arange(columns, device=device).int())
        return cached

    def uses_low_memory(self) -> bool:
        """Whether the backward pass recomputes states instead of keeping them: ``memory`` is
        "low", or "auto" and keeping every block's input would not fit."""
        return self._low_memory_for(self.gate_values)

    def _low_memory_for(self, ref: torch.Tensor) -> bool:
        """Recompute in the backward pass (of gates like ``ref``) when keeping every block's
        input would not fit."""
        if self.memory != "auto":
            return self.memory == "low"
        saved_states = sum(len(layer) for layer in self._compiled()[0][True].fast[1:])
        saved_bytes = saved_states * (1 << self.Q) * ref.element_size()
        budget = STORED_STATES_BUDGET_BYTES
        if ref.device.type == "cuda":
            budget = max(budget, torch.cuda.get_device_properties(ref.device).total_memory // 8)
        return saved_bytes > budget

    def _compiled(self, native: bool = False):
        """The contraction's plans (with and without normalisation) and matrix recipe, built
        once per block size (``block_bits`` may be changed after construction) and kind of
        sweep (native gate passes or matrix products)."""
        key = (self.block_bits, native)
        cached = self._compiled_cache.get(key)
        if cached is None:
            cached = self._compiled_cache[key] = self._compile(native)
        return cached

    def _compile(self, native: bool = False):
        """Applications per layer for ``adtn_kernel`` and the recipe of their matrices.

        Recipe entries, in matrix order: ("vector", i) gate i's stored column as a 1×4 row;
        ("fused", i, j) gate i after gate j's vector (a 2×8 matrix); ("fresh_b", i) gate i
        transposed (2×4); ("grow", bits) a constant 1×2**bits row [1, 0, …]; ("full", i) gate
        i as a 4×4 matrix; ("sweep", run) the blocks of a Kronecker run, bit 0's first;
        ("block", lo, hi, run) gates multiplied into one block on indices [lo, hi).
        """
        recipe: list[tuple | None] = []  # None: a slot a "sweep" entry fills
        first: list[App] = []
        for op, i, j in self._first_steps:
            m = len(recipe)
            if op == "fuse":
                recipe.append(("fused", i, j))
                first.append(App("tail", m, 2, 8))
            elif op == "outer":
                recipe.append(("vector", i))
                first.append(App("tail", m, 1, 4))
            elif op == "fresh_b":
                recipe.append(("fresh_b", i))
                first.append(App("tail", m, 2, 4))
            elif op == "grow":
                recipe.append(("grow", i))
                first.append(App("tail", m, 1, 1 << i))
            else:  # "pair" on a prefix of j indices
                recipe.append(("full", i))
                first.append(App("mid", m, self.specs[i].pair[0], 2, j))
        fast, low = [tuple(first)], [tuple(first)]
        offsets = flat_layout(self.specs)[1]
        for layer in range(1, self.depth):
            fast_layer, low_layer = [], []
            runs = self._layer_plan[layer]
            brick = self._native_brick_layer(runs, offsets) if native else None
            if brick:  # the whole layer in one pass per range of bits
                fast.append(tuple(brick))
                low.append(tuple(brick))
                continue
            for run, disjoint in runs:
                passes = self._native_passes(run, offsets) if (native and disjoint) else None
                if passes:
                    fast_layer.extend(passes)
                    low_layer.extend(passes)  # (never used: native plans keep every input)
                elif disjoint:
                    widths = self._sweep_widths(run)
                    m0 = len(recipe)
                    recipe.append(("sweep", tuple(run)))
                    recipe.extend(None for _ in widths[1:])  # the sweep fills these slots
                    offsets = [sum(widths[:g]) for g in range(len(widths))]
                    for g in reversed(range(len(widths))):
                        fast_layer.append(App("rot", m0 + g))
                        low_layer.append(App("mid", m0 + g, offsets[g], widths[g], self.Q))
                else:
                    for lo, hi, block in self._blocks(run):
                        app = App("mid", len(recipe), lo, hi - lo, self.Q)
                        recipe.append(("block", lo, hi, tuple(block)))
                        fast_layer.append(app)
                        low_layer.append(app)
            fast.append(tuple(fast_layer))
            low.append(tuple(low_layer))
        slope = {"relu": 0.0, "leaky_relu": LEAKY_RELU_SLOPE}.get(self.activation)
        flat_gates = any(app.kind == "gates" for layer in fast for app in layer)
        growth = grow = None
        if flat_gates:  # (the native kernel grows the first layer, from the gates where it can)
            grow = grow_sizes(fast[0])
            if all(app.kind == "gates" for layer in fast[1:] for app in layer):
                growth = self._gate_growth(offsets)
        plans = {
            normalise: Plan(
                self.Q,
                self.shape,
                self.padded_shape,
                tuple(fast),
                tuple(low),
                slope,
                normalise,
                flat_gates,
                growth,
                grow,
            )
            for normalise in (False, True)
        }
        if growth is not None:  # (a scaled weight in one native call each way)
            program = adtn_native_network.compile_program(plans[True], self.gate_values.numel())
            plans[True] = replace(plans[True], network=program)
        return plans, recipe

    def _gate_growth(self, offsets: list[int]) -> adtn_native.GateGrowth | None:
        """The first layer as the native kernel grows it from the flat gates, where it is made
        of gates' stored columns and gates fused after them (the brick layouts); else None."""
        kinds, g_at, u_at = [], [], []
        for op, i, j in self._first_steps:
            vector = j if op == "fuse" else i
            if op not in ("outer", "fuse") or len(self.specs[vector].columns) != 1:
                return None
            kinds.append(1 if op == "fuse" else 0)
            g_at.append(offsets[i] if op == "fuse" else 0)
            u_at.append(offsets[vector])
        return adtn_native.GateGrowth.make(kinds, g_at, u_at) if kinds else None

    def _native_passes(self, run: list[int], offsets: list[int]) -> list | None:
        """A Kronecker run as native gate passes (``adtn_native.plan_passes``), reading the
        flat gates (the last of ``mats``); None where the run does not suit them."""
        specs = [self.specs[i] for i in run]
        if any(len(spec.columns) != 4 for spec in specs):
            return None
        planned = adtn_native.plan_passes([spec.pair for spec in specs], self.Q)
        if planned is None:
            return None
        passes = []
        for members, *shape in planned:
            ids = [run[k] for k in members]
            start = offsets[ids[0]]
            if [offsets[i] for i in ids] != [start + 16 * k for k in range(len(ids))]:
                return None  # (the pass reads its gates as one contiguous slice)
            passes.append(adtn_native.make_pass(-1, start, (members, *shape)))
        return passes

    def _native_brick_layer(self, runs, offsets: list[int]) -> list | None:
        """A brick layer (two side-by-side runs, pairs from 0 then from 1) as native
        passes (``adtn_native.plan_brick_layer``); None where it is not one or does not fit."""
        if len(runs) != 2 or not all(disjoint for _, disjoint in runs):
            return None
        ids = runs[0][0] + runs[1][0]
        if any(len(self.specs[i].columns) != 4 for i in ids):
            return None
        planned = adtn_native.plan_brick_layer(
            [self.specs[i].pair for i in runs[0][0]],
            [self.specs[i].pair for i in runs[1][0]],
            self.Q,
        )
        if planned is None:
            return None
        passes = []
        for members, *shape in planned:
            gate_offsets = [offsets[ids[k]] for k in members]
            start = gate_offsets[0]
            contiguous = gate_offsets == [start + 16 * k for k in range(len(members))]
            spec = (members, *shape)
            passes.append(
                adtn_native.make_pass(-1, start, spec, None if contiguous else gate_offsets)
            )
        return passes

    def _sweep_groups(self, run: list[int]) -> list[list[int]]:
        """A Kronecker run's gates in groups of ``block_bits // 2``; the first takes the rest.
        (Smaller end groups, which would keep the end blocks within ``block_bits`` indices,
        were measured slower on the CPU: narrow products run at a lower rate.)"""
        per_block = max(1, self.block_bits // 2)
        extra = len(run) % per_block
        groups = [run[:extra]] if extra else []
        groups += [run[k : k + per_block] for k in range(extra, len(run), per_block)]
        return groups

    def _sweep_widths(self, run: list[int]) -> list[int]:
        """Indices each block of a Kronecker run covers (outside indices join the ends)."""
        widths = [2 * len(g) for g in self._sweep_groups(run)]
        widths[0] += self.specs[run[0]].pair[0]
        widths[-1] += self.Q - 1 - self.specs[run[-1]].pair[1]
        return widths

    def _matrices(self, recipe) -> list[torch.Tensor]:
        """The small matrices of every application, built from the gates by differentiable
        operations: the reference that ``MatrixBuilder``'s hand-written backward is tested
        against (the contraction itself uses the builder)."""
        gates_ = self.gates
        mats: list = [None] * len(recipe)
        fused = [(k, r[1], r[2]) for k, r in enumerate(recipe) if r is not None and r[0] == "fused"]
        if fused:
            # All (gate, fresh-pair vector) products at once: (m, 2, 8) small matrices.
            gates = torch.stack([gates_[i] for _, i, _ in fused]).reshape(-1, 2, 2, 2, 2)
            vectors = torch.stack([gates_[j] for _, _, j in fused]).reshape(-1, 2, 2)
            products = torch.einsum("mxyab,mbt->maxyt", gates, vectors).reshape(-1, 2, 8)
            for (k, _, _), matrix in zip(fused, products.unbind(0)):
                mats[k] = matrix
        ref = gates_[0]
        for k, entry in enumerate(recipe):
            if entry is None or entry[0] == "fused":
                continue
            kind = entry[0]
            if kind == "vector":
                mats[k] = gates_[entry[1]].reshape(1, 4)
            elif kind == "fresh_b":
                mats[k] = gates_[entry[1]].t()
            elif kind == "grow":
                row = torch.zeros(1, 1 << entry[1], dtype=ref.dtype, device=ref.device)
                row[0, 0] = 1.0
                mats[k] = row
            elif kind == "full":
                mats[k] = self._full_gate(entry[1], gates_)
            elif kind == "sweep":
                blocks = self._sweep_blocks(list(entry[1]), gates_)
                mats[k : k + len(blocks)] = blocks
            else:  # "block"
                _, lo, hi, run = entry
                mats[k] = self._block_matrix(lo, hi, run, gates_)
        return mats

    def _sweep_blocks(self, run: list[int], gates_) -> list[torch.Tensor]:
        """The block matrices of a Kronecker run, in index order (see ``_sweep_widths``)."""
        groups = self._sweep_groups(run)
        gates = torch.stack([gates_[i] for i in run])
        blocks: list[torch.Tensor] = []
        extra = len(groups[0]) if len(groups[0]) != len(groups[-1]) else 0
        if extra:
            blocks.append(_kron_groups(gates[:extra].unsqueeze(0))[0])
        if len(run) > extra:
            per_block = len(groups[-1])
            blocks.extend(_kron_groups(gates[extra:].reshape(-1, per_block, 4, 4)).unbind(0))
        first, last = self.specs[run[0]].pair[0], self.specs[run[-1]].pair[1]
        if first:
            blocks[0] = torch.kron(_identity(first, gates), blocks[0])
        if last < self.Q - 1:
            blocks[-1] = torch.kron(blocks[-1], _identity(self.Q - 1 - last, gates))
        return blocks

    def _blocks(self, indices: list[int]) -> list[tuple[int, int, list[int]]]:
        """Split a run of gates into consecutive groups acting within ``block_bits`` indices."""
        blocks: list[tuple[int, int, list[int]]] = []
        for i in indices:
            a, b = self.specs[i].pair
            if blocks:
                lo, hi, run = blocks[-1]
                new_lo, new_hi = min(lo, a), max(hi, b + 1)
                if new_hi - new_lo <= self.block_bits:
                    blocks[-1] = (new_lo, new_hi, run + [i])
                    continue
            blocks.append((a, b + 1, [i]))
        return blocks

    def _block_matrix(self, lo: int, hi: int, run: Sequence[int], gates_) -> torch.Tensor:
        """The gates of ``run``, applied in order, as one matrix on indices [lo, hi)."""
        if len(run) == 1:
            return self._full_gate(run[0], gates_)
        width = hi - lo
        ref = gates_[run[0]]
        block = torch.eye(1 << width, dtype=ref.dtype, device=ref.device)
        for i in run:
            a = self.specs[i].pair[0]
            view = block.reshape(1 << (a - lo), 4, (1 << (hi - a - 2)) << width)
            block = apply_on_axis(view, self._full_gate(i, gates_)).reshape(1 << width, 1 << width)
        return block

    def _full_gate(self, i: int, gates_=None) -> torch.Tensor:
        columns = self.specs[i].columns
        gate = (self.gates if gates_ is None else gates_)[i]
        if len(columns) == 4:
            return gate
        full = gate.new_zeros(4, 4)
        return full.index_copy(1, torch.tensor(columns, device=gate.device), gate)

    def _compile_first_layer(self) -> list[tuple[str, int, int]]:
        """The first layer as steps on a state that covers a prefix [0, k) of the indices,
        the rest being still fresh: it grows by one or two indices a step, so the layer costs
        about two passes over 2**Q entries instead of one per gate.

        Steps: ("outer", i, -) a gate on two fresh indices appends its vector M[:, 0];
        ("fuse", i, j) gate i on (k-1, k) right after gate j's vector on (k, k+1) (brick
        layouts): one small matrix product grows the state by two; ("fresh_b", i, -) a gate
        whose second index is fresh grows it by one; ("pair", i, k) a gate inside the prefix;
        ("grow", bits, -) fresh indices appended as zeros (for orders neither layout makes).
        """
        steps: list[tuple[str, int, int]] = []
        known, pending = 0, None
        first = [i for i, s in enumerate(self.specs) if s.layer == 0]
        for i in self._prefix_order(first):
            a, b = self.specs[i].pair
            if pending is not None:
                if (a, b) == (known - 1, known) and len(self.specs[i].columns) == 4:
                    steps.append(("fuse", i, pending))
                    known, pending = known + 2, None
                    continue
                steps.append(("outer", pending, -1))
                known, pending = known + 2, None
            if a > known:
                steps.append(("grow", a - known, -1))
                known = a
            if a == known:
                pending = i
            elif b == known:
                steps.append(("fresh_b", i, -1))
                known += 1
            else:
                steps.append(("pair", i, known))
        if pending is not None:
            steps.append(("outer", pending, -1))
            known += 2
        if known < self.Q:
            steps.append(("grow", self.Q - known, -1))
        return steps

    def _prefix_order(self, indices: list[int]) -> list[int]:
        """An order of one layer's gates that respects their dependencies and touches the
        lowest indices first, so that the contracted prefix grows one or two indices a step."""
        pending = list(indices)
        last_gate_on: dict[int, int] = {}
        depends: dict[int, set[int]] = {}
        for i in indices:
            a, b = self.specs[i].pair
            depends[i] = {last_gate_on[x] for x in (a, b) if x in last_gate_on}
            last_gate_on[a] = last_gate_on[b] = i
        done: set[int] = set()
        order = []
        while pending:
            ready = [i for i in pending if depends[i] <= done]
            nxt = min(ready, key=lambda i: self.specs[i].pair[1])
            order.append(nxt)
            done.add(nxt)
            pending.remove(nxt)
        return order

    # ----------------------------------------------------------------------------- fitting
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw the gates again with this ADTN's ``init`` (the scale is kept)."""
        with torch.no_grad():
            for spec, gate in zip(self.specs, self.gates):
                gate.copy_(initial_gate(self.init, spec.columns, generator))

    def fit(
        self,
        target: torch.Tensor,
        steps: int = 500,
        lr: float = 0.02,
        tolerance: float = 1e-6,
        restarts: int | None = None,
        restart_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> float:
        """Fit the network to ``target`` by least squares (Adam through the contraction).

        The error landscape of a deep network has many poor local minima, so ``restarts``
        starts (the current gates, then fresh draws; default ``FIT_RESTARTS`` up to
        ``Q = FIT_RESTARTS_MAX_Q``, one beyond, where a step costs too much) each descend
        ``restart_steps`` steps (default ``max(20, steps // 20)``), the better half twice as
        many, and so on; the best then descends ``steps`` more.
        Returns the relative error ``||w - target|| / ||target||`` reached; the ADTN keeps the
        best parameters seen.
        """
        if tuple(target.shape) != self.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}, the ADTN {self.shape}")
        target = target.detach().to(self.scale.device, self.scale.dtype)
        norm = target.norm().clamp_min(1e-30)
        with torch.no_grad():
            self.scale.fill_(float(target.square().mean().sqrt()))
        params = list(self.parameters())
        best, best_vector = float("inf"), None
        if restarts is None:
            restarts = FIT_RESTARTS if self.Q <= FIT_RESTARTS_MAX_Q else 1
        trial_steps = max(20, steps // 20) if restart_steps is None else int(restart_steps)
        if steps > 0 and restarts > 1 and trial_steps > 0:
            # Successive halving: every start descends a little, the better half continues
            # twice as long, and so on, so that a slow starter is not judged too early.
            candidates = []
            for start in range(int(restarts)):
                if start:
                    self.reset_parameters(generator)
                    with torch.no_grad():
                        self.scale.fill_(float(target.square().mean().sqrt()))
                candidates.append(torch.nn.utils.parameters_to_vector(params).detach().clone())
            budget = trial_steps
            while candidates:
                scored: list[tuple[float, int, torch.Tensor]] = []
                for vector in candidates:
                    torch.nn.utils.vector_to_parameters(vector, params)
                    error, reached = self._descend(target, norm, budget, lr, tolerance)
                    if reached is not None:
                        scored.append((error, len(scored), reached))
                scored.sort(key=lambda item: item[:2])
                if scored and scored[0][0] < best:
                    best, best_vector = scored[0][0], scored[0][2]
                if best <= tolerance or len(scored) <= 1:
                    break
                candidates = [vector for _, _, vector in scored[: len(scored) // 2]]
                budget *= 2
            if best_vector is not None:
                torch.nn.utils.vector_to_parameters(best_vector, params)
        if steps > 0 and best > tolerance:
            error, vector = self._descend(target, norm, steps, lr, tolerance)
            if vector is not None and error < best:
                best_vector = vector
            if best_vector is not None:
                torch.nn.utils.vector_to_parameters(best_vector, params)
        with torch.no_grad():
            return float((self._weight() - target).norm() / norm)

    def _descend(self, target, norm, steps: int, lr: float, tolerance: float):
        """Adam with a cosine schedule from the current parameters; returns the lowest
        relative error seen and the parameters (one flat vector) that gave it."""
        params = list(self.parameters())
        try:  # one kernel for all the small tensors where PyTorch has it
            optimiser = torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            optimiser = torch.optim.Adam(params, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
        best, best_vector = float("inf"), None
        with torch.enable_grad():
            for _ in range(max(0, steps)):
                optimiser.zero_grad(set_to_none=True)
                error = (self._weight() - target).norm() / norm
                value = error.item()
                if not math.isfinite(value):
                    break
                if value < best:
                    best = value
                    best_vector = torch.nn.utils.parameters_to_vector(params).detach().clone()
                if best <= tolerance:
                    break
                error.backward()
                optimiser.step()
                schedule.step()
        return best, best_vector


def _plan_later_layers(
    specs: list[GateSpec], depth: int, num_bits: int
) -> dict[int, list[tuple[list[int], bool]]]:
    """Per layer after the first: its gates split into runs, each flagged ``True`` when its
    gates sit side by side ((a, a+1), (a+2, a+3), …) covering all but at most two indices,
    so that they form a Kronecker product of small blocks."""
    plan: dict[int, list[tuple[list[int], bool]]] = {}
    for layer in range(1, depth):
        runs: list[list[int]] = []
        for i, spec in enumerate(specs):
            if spec.layer != layer:
                continue
            if runs and specs[runs[-1][-1]].pair[1] + 1 == spec.pair[0]:
                runs[-1].append(i)
            else:
                runs.append([i])
        merged: list[tuple[list[int], bool]] = []
        for run in runs:
            outside = specs[run[0]].pair[0] + (num_bits - 1 - specs[run[-1]].pair[1])
            if len(run) > 1 and outside <= 2:
                merged.append((run, True))
            elif merged and not merged[-1][1]:
                merged[-1][0].extend(run)
            else:
                merged.append((run, False))
        plan[layer] = merged
    return plan


def _per_gate_state_dict(module: ADTN, state_dict, prefix: str, local_metadata) -> None:
    """State dicts (checkpoints, exports) keep one ``(4, columns)`` entry per gate,
    ``gates.<i>``, then ``scale``: the file format does not depend on how they are stored."""
    values = state_dict.pop(prefix + "gate_values", None)
    if values is None:
        return
    for i, view in enumerate(module._views_of(values)):
        state_dict[f"{prefix}gates.{i}"] = view
    if prefix + "scale" in state_dict:
        state_dict[prefix + "scale"] = state_dict.pop(prefix + "scale")


def _flat_gates_on_load(
    module: ADTN, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
) -> None:
    """Per-gate entries (``gates.<i>``, as ``state_dict`` writes them) → ``gate_values``."""
    keys = [f"{prefix}gates.{i}" for i in range(len(module.specs))]
    if prefix + "gate_values" in state_dict or not all(key in state_dict for key in keys):
        return  # (missing entries are reported as ``gate_values`` missing)
    parts = []
    for key, spec in zip(keys, module.specs):
        tensor = state_dict[key]
        expected = (4, len(spec.columns))
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected:
            shape = tuple(getattr(tensor, "shape", ()))
            errors.append(
                f"size mismatch for {key}: copying a param with shape {shape}, the parameter "
                f"in the current model has shape {expected}."
            )
            return
        parts.append(tensor)
    values = torch.empty(module.gate_values.numel(), dtype=parts[0].dtype, device=parts[0].device)
    for part, offset in zip(parts, module._gate_offsets):
        values[offset : offset + part.numel()] = part.reshape(-1)
    for key in keys:
        del state_dict[key]
    state_dict[prefix + "gate_values"] = values


def _identity(bits: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(1 << bits, dtype=like.dtype, device=like.device)


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square in one pass, never zero (a dead state stays finite)."""
    norm = torch.linalg.vector_norm(tensor) / math.sqrt(tensor.numel())
    return norm.clamp_min(torch.finfo(tensor.dtype).tiny)


def _kron_groups(gates: torch.Tensor) -> torch.Tensor:
    """``(m, g, 4, 4)`` gates → ``(m, 4**g, 4**g)`` Kronecker products of each group."""
    out = gates[:, 0]
    for j in range(1, gates.shape[1]):
        m, rows, cols = out.shape
        out = torch.einsum("nab,ncd->nacbd", out, gates[:, j]).reshape(m, rows * 4, cols * 4)
    return out
