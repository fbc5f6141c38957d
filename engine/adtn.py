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
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("relu", "leaky_relu", "none")
LAYOUTS = ("brick", "stair")
LEAKY_RELU_SLOPE = 0.01
# 2**28 float32 entries are 1 GiB of state; larger weights are refused rather than attempted.
MAX_Q = 28
# Consecutive gates are merged into block matrices on this many binary indices (16×16): on the
# CPU the fewer operations of larger blocks do not pay for their extra arithmetic
# (benchmarks/adtn_overhead.py --block-bits compares sizes).
DEFAULT_BLOCK_BITS = 4


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


def _activate(state: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(state)
    if activation == "leaky_relu":
        return F.leaky_relu(state, LEAKY_RELU_SLOPE)
    return state


def _apply_on_axis(view: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
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


def _apply_pair(state: torch.Tensor, matrix: torch.Tensor, a: int, num_bits: int) -> torch.Tensor:
    """Apply a ``(4, c)`` matrix to indices ``(a, a+1)`` of a state over ``num_bits`` indices,
    whose pair axis holds the ``c`` input values the matrix expects."""
    view = state.reshape(1 << a, matrix.shape[1], 1 << (num_bits - a - 2))
    return _apply_on_axis(view, matrix)


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
    ) -> None:
        super().__init__()
        _check_arguments(shape, depth, activation, layout)
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
        self.gates = nn.ParameterList(
            nn.Parameter(_random_orthogonal_columns(spec.columns, generator)) for spec in self.specs
        )
        if init_std is None:
            fan_in = math.prod(self.shape[1:]) if len(self.shape) > 1 else self.shape[0]
            init_std = 1.0 / math.sqrt(3.0 * fan_in)
        self.scale = nn.Parameter(torch.tensor(float(init_std)))
        self._cache_key: tuple | None = None
        self._cache_value: torch.Tensor | None = None

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
        count = sum(g.numel() for g in self.gates)
        return count if tensors_only else count + 1

    def gate_specs(self) -> list[GateSpec]:
        """Per stored tensor (``gates[i]``), its layer, index pair and stored columns."""
        return list(self.specs)

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, Q={self.Q}, depth={self.depth}, layout={self.layout!r}, "
            f"activation={self.activation!r}, parameters={self.num_parameters()}"
        )

    # ---------------------------------------------------------------------------- contraction
    def contract(self) -> torch.Tensor:
        """The raw network tensor cropped to ``shape`` (no scale, no normalisation)."""
        return self._crop(self._network_state(normalise=False))

    def forward(self) -> torch.Tensor:
        """The weight: ``scale * W / rms(W)``. Cached while gradients are off (inference)."""
        if torch.is_grad_enabled():
            self._cache_key = self._cache_value = None
            return self._weight()
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self.parameters())
        if key != self._cache_key:
            self._cache_value = self._weight()
            self._cache_key = key
        return self._cache_value

    def _weight(self) -> torch.Tensor:
        # Matmuls in half precision would lose the weight's accuracy over many gates.
        device_type = self.scale.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            weight = self._crop(self._network_state(normalise=True))
            return weight * (self.scale / _rms(weight))

    def _crop(self, state: torch.Tensor) -> torch.Tensor:
        tensor = state.reshape(self.padded_shape)
        if self.padded_shape != self.shape:
            tensor = tensor[tuple(slice(0, d) for d in self.shape)]
        return tensor

    def _network_state(self, normalise: bool) -> torch.Tensor:
        """The 2**Q output vector of the network.

        The first layer acts on a product state (``_compile_first_layer``). In later layers, a half-layer of side-by-side gates
        is a Kronecker product: groups of its gates become block matrices, all built in one
        batched product, each applied in one matrix product. Other runs of gates (the stair
        layout) are merged into blocks one gate at a time.
        """
        state = self._first_layer()
        for layer in range(1, self.depth):
            state = _activate(state, self.activation)
            # Dividing by the rms keeps the numbers in range; it commutes with the (positively
            # homogeneous) activations, so it changes nothing else. It is folded into the
            # layer's first small matrix rather than costing a pass over the state.
            factor = 1.0 / _rms(state) if normalise else None
            for run, disjoint in self._layer_plan[layer]:
                if disjoint:
                    state = self._apply_disjoint_run(state, run, factor)
                else:
                    for lo, hi, block in self._blocks(run):
                        state = self._apply_block(state, lo, hi, block, factor)
                        factor = None
                factor = None
        return state

    def _first_layer(self) -> torch.Tensor:
        """Run the first layer's compiled steps (see ``_compile_first_layer``)."""
        ref = self.gates[0]
        state = torch.ones(1, dtype=ref.dtype, device=ref.device)
        fused_pairs = [(i, j) for op, i, j in self._first_steps if op == "fuse"]
        if fused_pairs:
            # All (gate, fresh-pair vector) products at once: (m, 2, 8) small matrices.
            gates = torch.stack([self.gates[i] for i, _ in fused_pairs]).reshape(-1, 2, 2, 2, 2)
            vectors = torch.stack([self.gates[j] for _, j in fused_pairs]).reshape(-1, 2, 2)
            fused = iter(torch.einsum("mxyab,mbt->maxyt", gates, vectors).reshape(-1, 2, 8).unbind(0))
        for op, i, j in self._first_steps:
            if op == "fuse":
                state = (state.reshape(-1, 2) @ next(fused)).reshape(-1)
            elif op == "outer":
                state = torch.outer(state, self.gates[i].reshape(4)).reshape(-1)
            elif op == "fresh_b":
                columns = self.specs[i].columns
                view = state.reshape(-1, 2)[:, [c // 2 for c in columns]]
                state = (view @ self.gates[i].T).reshape(-1)
            elif op == "grow":
                state = _grow_fresh(state, i)
            else:  # "pair": both indices already in the state; j is the number covered
                a, columns = self.specs[i].pair[0], self.specs[i].columns
                state = _apply_pair(_select_inputs(state, a, j, columns), self.gates[i], a, j)
        return state

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

    def _apply_disjoint_run(self, state: torch.Tensor, run: list[int], factor=None) -> torch.Tensor:
        """Gates side by side on (a, a+1), (a+2, a+3), … form one Kronecker product.

        Groups of ``block_bits // 2`` gates become block matrices that together cover all Q
        indices (an index outside the run joins its neighbouring block as an identity). Each
        block is applied to the last indices of the state by one matrix product whose result
        is laid out with those indices first; the next block's indices are then last. After
        the final block the order is back where it started, and no step, forward or backward,
        needs a transposing copy of the state.
        """
        per_block = max(1, self.block_bits // 2)
        gates = torch.stack([self._full_gate(i) for i in run])
        extra = len(run) % per_block  # the leftmost group takes the remainder
        blocks: list[torch.Tensor] = []
        if extra:
            blocks.append(_kron_groups(gates[:extra].unsqueeze(0))[0])
        if len(run) > extra:
            blocks.extend(_kron_groups(gates[extra:].reshape(-1, per_block, 4, 4)).unbind(0))
        first, last = self.specs[run[0]].pair[0], self.specs[run[-1]].pair[1]
        if first:
            blocks[0] = torch.kron(_identity(first, gates), blocks[0])
        if last < self.Q - 1:
            blocks[-1] = torch.kron(blocks[-1], _identity(self.Q - 1 - last, gates))
        if factor is not None:
            blocks[-1] = blocks[-1] * factor
        for block in reversed(blocks):
            state = torch.mm(block, state.reshape(-1, block.shape[0]).t())
        return state.reshape(-1)

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

    def _apply_block(self, state, lo: int, hi: int, run: list[int], factor=None) -> torch.Tensor:
        width = hi - lo
        if len(run) == 1:
            gate = self._full_gate(run[0])
            return _apply_pair(state, gate if factor is None else gate * factor, lo, self.Q)
        # The block's matrix: its gates applied, in order, to the identity on `width` indices.
        block = torch.eye(1 << width, dtype=state.dtype, device=state.device)
        for i in run:
            a = self.specs[i].pair[0]
            view = block.reshape(1 << (a - lo), 4, (1 << (hi - a - 2)) << width)
            block = _apply_on_axis(view, self._full_gate(i)).reshape(1 << width, 1 << width)
        block = block if factor is None else block * factor
        return _apply_on_axis(state.reshape(1 << lo, 1 << width, 1 << (self.Q - hi)), block)

    def _full_gate(self, i: int) -> torch.Tensor:
        columns = self.specs[i].columns
        gate = self.gates[i]
        if len(columns) == 4:
            return gate
        full = gate.new_zeros(4, 4)
        return full.index_copy(1, torch.tensor(columns, device=gate.device), gate)

    # ----------------------------------------------------------------------------- fitting
    def fit(
        self,
        target: torch.Tensor,
        steps: int = 500,
        lr: float = 0.05,
        tolerance: float = 1e-6,
    ) -> float:
        """Fit the network to ``target`` by least squares (Adam through the contraction).

        Returns the relative error ``||w - target|| / ||target||`` reached.
        """
        if tuple(target.shape) != self.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}, the ADTN {self.shape}")
        target = target.detach().to(self.scale.device, self.scale.dtype)
        norm = target.norm().clamp_min(1e-30)
        with torch.no_grad():
            self.scale.fill_(float(target.square().mean().sqrt()))
        optimiser = torch.optim.Adam(self.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
        best = float("inf")
        best_state = None
        with torch.enable_grad():
            for _ in range(max(0, steps)):
                optimiser.zero_grad(set_to_none=True)
                error = (self._weight() - target).norm() / norm
                if not torch.isfinite(error):
                    break
                if error.item() < best:
                    best = error.item()
                    best_state = [p.detach().clone() for p in self.parameters()]
                if best <= tolerance:
                    break
                error.backward()
                optimiser.step()
                schedule.step()
        if best_state is not None:
            with torch.no_grad():
                for p, saved in zip(self.parameters(), best_state):
                    p.copy_(saved)
        with torch.no_grad():
            return float((self._weight() - target).norm() / norm)


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


def _grow_fresh(state: torch.Tensor, bits: int) -> torch.Tensor:
    """Append ``bits`` fresh indices (in state [1, 0]) after the state's last index."""
    grown = state.new_zeros(state.numel(), 1 << bits)
    grown = torch.cat([state.reshape(-1, 1), grown[:, 1:]], dim=1)
    return grown.reshape(-1)


def _select_inputs(state: torch.Tensor, a: int, num_bits: int, columns: Sequence[int]):
    """The state's entries on the pair ``(a, a+1)`` for the stored input columns only."""
    if len(columns) == 4:
        return state
    view = state.reshape(1 << a, 4, -1)[:, list(columns), :]
    return view.reshape(-1)
