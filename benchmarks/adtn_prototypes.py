"""A plain-autograd ADTN for screening structures the engine's kernel does not have.

``GateNetwork`` builds the same weight as ``engine.adtn.ADTN`` (product state, layers of local
tensors on neighbouring binary indices, activation between layers, rms normalisation between
layers and of the weight, interleaved or rows-first index order), with two generalisations
that the research of issue 15 screens:

* ``gate_bits``: local tensors on ``k`` neighbouring indices (``2**k × 2**k``), not only on
  pairs. A layer is two sub-layers: gates starting at indices ``0, k, 2k, …`` and at
  ``k // 2, k // 2 + k, …``; a gate that would run past the last index is shortened to the
  indices left (at least two), so every cut between neighbours is crossed in every layer.
* ``anneal_steps``: a continuation from a linear network to the ReLU one. The activation is
  a leaky ReLU whose negative slope falls linearly from 1 (no activation) to 0 (ReLU) over the
  first ``anneal_steps`` training passes (forward passes with gradients), then stays ReLU.
* ``residual``: every layer after the first adds its input to its output (``x + G x``, with
  ``G`` the layer's gates), as residual networks do to ease the descent of deep stacks; the
  same parameters, a sum of two tensor networks per layer.
* ``activation``: also ``tanh`` and ``gelu``. Those are not positively homogeneous, so the
  place of the normalisation matters: the state is divided by its rms *before* the activation
  (the activation sees numbers of size one whatever the gates' size) and again after it. For
  ReLU, leaky ReLU and none this is the engine's construction exactly.

Columns of a gate whose input indices are all still in the product state's ``[1, 0]`` are not
stored, as in the engine, so parameter counts compare like with like. It is slow (one einsum
per gate and autograd through all of them) and meant for the 2**18-entry weights of FC-2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.adtn import mode_bits, network_bit_order

ACTIVATIONS = ("relu", "leaky_relu", "none", "tanh", "gelu")
HOMOGENEOUS = ("relu", "leaky_relu", "none")


@dataclass(frozen=True)
class LocalTensor:
    """One stored gate: its layer, first index, number of indices and stored input columns."""

    layer: int
    start: int
    bits: int
    columns: tuple[int, ...]

    @property
    def num_parameters(self) -> int:
        return (1 << self.bits) * len(self.columns)


def sublayer_starts(num_bits: int, gate_bits: int) -> list[list[tuple[int, int]]]:
    """(start, bits) of each gate of the two sub-layers of one layer."""
    sublayers = []
    for offset in (0, gate_bits // 2):
        gates = []
        for start in range(offset, num_bits - 1, gate_bits):
            gates.append((start, min(gate_bits, num_bits - start)))
        sublayers.append(gates)
    return sublayers


def build_local_tensors(num_bits: int, depth: int, gate_bits: int) -> list[LocalTensor]:
    """Every gate in application order, with the input columns that can be non-zero."""
    fresh = set(range(num_bits))
    tensors = []
    for layer in range(depth):
        for sublayer in sublayer_starts(num_bits, gate_bits):
            for start, bits in sublayer:
                touched = range(start, start + bits)
                # column value: the gate's input bits, its first index most significant
                columns = tuple(
                    value
                    for value in range(1 << bits)
                    if all(
                        not (value >> (bits - 1 - j)) & 1
                        for j, index in enumerate(touched)
                        if index in fresh
                    )
                )
                tensors.append(LocalTensor(layer, start, bits, columns))
                fresh -= set(touched)
    return tensors


def _orthogonal_columns(size: int, columns: Sequence[int]) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q[:, list(columns)].to(torch.get_default_dtype())


class GateNetwork(nn.Module):
    """An ADTN weight of ``shape`` with gates on ``gate_bits`` indices (see the module doc).

    The constructor takes the engine ADTN's arguments, so that it can stand in for it in
    ``engine.encodings.adtn`` while screening; ``gate_bits`` and ``activation_override`` are
    class attributes that a probe sets (the run configuration cannot name them).
    """

    gate_bits = 2
    activation_override = ""
    anneal_steps = 0
    residual = False

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
        if layout != "brick" or init != "orthogonal":
            raise ValueError("the prototype has the brick layout and orthogonal gates only")
        activation = self.activation_override or activation
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.shape = tuple(int(d) for d in shape)
        self.mode_bits = mode_bits(self.shape)
        self.padded_shape = tuple(1 << q for q in self.mode_bits)
        self.Q = sum(self.mode_bits)
        self.depth = int(depth)
        self.activation = activation
        self.index_order = index_order
        self.specs = build_local_tensors(self.Q, self.depth, self.gate_bits)
        self.gates = nn.ParameterList(
            nn.Parameter(_orthogonal_columns(1 << s.bits, s.columns)) for s in self.specs
        )
        for spec in self.specs:
            self.register_buffer(
                f"columns_{len(self._buffers)}", torch.tensor(spec.columns), persistent=False
            )
        if init_std is None:
            fan_in = math.prod(self.shape[1:]) if len(self.shape) > 1 else self.shape[0]
            init_std = 1.0 / math.sqrt(3.0 * fan_in)
        self.scale = nn.Parameter(torch.tensor(float(init_std)))
        self.training_passes = 0
        network = network_bit_order(self.mode_bits, index_order)
        rows_first = [(mode, bit) for mode, q in enumerate(self.mode_bits) for bit in range(q)]
        self._axes = [network.index(key) for key in rows_first]

    @classmethod
    def count_parameters(
        cls, shape: Sequence[int], depth: int = 1, layout: str = "brick", tensors_only=False
    ) -> int:
        specs = build_local_tensors(sum(mode_bits(shape)), int(depth), cls.gate_bits)
        return sum(s.num_parameters for s in specs) + (0 if tensors_only else 1)

    def num_parameters(self, tensors_only: bool = False) -> int:
        count = sum(g.numel() for g in self.gates)
        return count if tensors_only else count + 1

    def annealed_slope(self) -> float | None:
        """The leaky slope of this training pass while annealing, else None."""
        if not self.anneal_steps or self.training_passes >= self.anneal_steps:
            return None
        return 1.0 - self.training_passes / self.anneal_steps

    def _activate(self, state: torch.Tensor) -> torch.Tensor:
        slope = self.annealed_slope()
        if slope is not None:
            return F.leaky_relu(state, slope)
        if self.activation == "relu":
            return torch.relu(state)
        if self.activation == "leaky_relu":
            return F.leaky_relu(state, 0.01)
        if self.activation == "tanh":
            return torch.tanh(state)
        if self.activation == "gelu":
            return F.gelu(state)
        return state

    def network_state(self) -> torch.Tensor:
        """The network's output state, ``2**Q`` numbers in the network's index order."""
        scale_free = self.activation in HOMOGENEOUS
        state = self.scale.new_zeros(1 << self.Q)
        state[0] = 1.0
        layer_input = None
        for k, (spec, gate) in enumerate(zip(self.specs, self.gates)):
            if k and spec.layer != self.specs[k - 1].layer:
                if layer_input is not None:
                    state = state + layer_input
                if not scale_free:
                    state = state / _rms(state)
                state = self._activate(state)
                state = state / _rms(state)
                layer_input = state if self.residual else None
            size = 1 << spec.bits
            columns = self._buffers[f"columns_{k}"]
            local = gate.new_zeros(size, size).index_copy(1, columns, gate)
            view = state.view(1 << spec.start, size, -1)
            state = torch.einsum("ij,ajb->aib", local, view).reshape(-1)
        return state if layer_input is None else state + layer_input

    def contract(self) -> torch.Tensor:
        """The raw network tensor in the weight's index order, cropped to ``shape``."""
        tensor = self.network_state().view([2] * self.Q).permute(self._axes)
        tensor = tensor.reshape(self.padded_shape)
        return tensor[tuple(slice(0, d) for d in self.shape)]

    def forward(self) -> torch.Tensor:
        tensor = self.contract()
        if torch.is_grad_enabled():
            self.training_passes += 1
        return self.scale * tensor / _rms(tensor)


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.square().mean().sqrt().clamp_min(torch.finfo(tensor.dtype).tiny)
