"""The small matrices of an ADTN's contraction, built from its gates without autograd.

``ADTN._compile`` lists, per application of the contraction, a *recipe* for its matrix (a gate
row, a gate fused with a fresh pair's vector, a Kronecker block of side-by-side gates, …).
Building those matrices with autograd costs a few hundred tiny graph nodes a step, each a few
microseconds to record and to run backwards: for a small layer more than its whole
contraction. ``MatrixBuilder`` builds them with plain batched operations and carries the
matrices' gradients back to the gates by hand, so the whole weight is one autograd node
(``adtn_kernel.NetworkState``). Constants (the growth rows, column indices) are cached per
dtype and device.

Recipes it does not know by hand (``"block"``: gates merged one at a time, as the stair layout
makes) are rebuilt under autograd inside the backward pass: correct, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def kron_groups(gates: torch.Tensor) -> list[torch.Tensor]:
    """``(m, g, 4, 4)`` gates → the partial Kronecker products of each group, the last being
    the ``(m, 4**g, 4**g)`` blocks (the others are kept for the backward pass)."""
    outs = [gates[:, 0]]
    for j in range(1, gates.shape[1]):
        m, rows, cols = outs[-1].shape
        # A broadcast product: einsum's dispatch costs more than the arithmetic here.
        product = outs[-1][:, :, None, :, None] * gates[:, j, None, :, None, :]
        outs.append(product.reshape(m, rows * 4, cols * 4))
    return outs


def kron_groups_backward(gates: torch.Tensor, outs: list[torch.Tensor], grad: torch.Tensor):
    """Gradient of the ``(m, g, 4, 4)`` gates from that of the blocks ``kron_groups`` built."""
    d_gates: list[torch.Tensor] = [grad] * gates.shape[1]
    for j in range(gates.shape[1] - 1, 0, -1):
        m, rows, cols = outs[j - 1].shape
        grad5 = grad.reshape(m, rows, 4, cols, 4)
        d_gates[j] = (grad5 * outs[j - 1][:, :, None, :, None]).sum((1, 3))
        grad = (grad5 * gates[:, j, None, :, None, :]).sum((2, 4))
    d_gates[0] = grad
    return torch.stack(d_gates, 1)


def embed(block: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``I_before ⊗ block ⊗ I_after`` without building the identities (one strided copy)."""
    if before == 1 and after == 1:
        return block
    n = block.shape[0]
    out = block.new_zeros(before * n * after, before * n * after)
    diagonal = out.view(before, n, after, before, n, after).diagonal(0, 0, 3).diagonal(0, 1, 3)
    diagonal.copy_(block.unsqueeze(-1).unsqueeze(-1))  # (n, n, before, after)
    return out


def embed_backward(grad: torch.Tensor, n: int, before: int, after: int) -> torch.Tensor:
    """Gradient of ``block`` from that of ``embed(block, before, after)``."""
    if before == 1 and after == 1:
        return grad
    view = grad.reshape(before, n, after, before, n, after)
    return view.diagonal(0, 0, 3).diagonal(0, 1, 3).sum((-2, -1))


class MatrixBuilder:
    """Builds ``recipe``'s matrices from the gates and back-propagates to the gates.

    ``specs`` are the gates' ``GateSpec``; ``sweep_layout(run)`` gives a Kronecker run's
    groups and its number of indices before the first and after the last gate;
    ``fallback(entry, gates) -> matrix`` builds an entry by differentiable operations.
    """

    def __init__(
        self,
        recipe: Sequence[tuple | None],
        specs: Sequence,
        sweep_layout: Callable,
        fallback: Callable,
    ) -> None:
        self.recipe: list = list(recipe)
        self.specs = specs
        self.fallback = fallback
        self.fused = [(k, r[1], r[2]) for k, r in enumerate(recipe) if r and r[0] == "fused"]
        # Every Kronecker block of every sweep, batched by its number of gates:
        # size -> (the blocks' matrix slots, their gates in order); and the blocks that take
        # identity factors for the indices outside their sweep: (slot, side, before, after).
        self.kron: dict[int, tuple[list[int], list[int]]] = {}
        self.embeds: list[tuple[int, int, int, int]] = []
        for k, entry in enumerate(recipe):
            if not entry or entry[0] != "sweep":
                continue
            groups, before, after = sweep_layout(list(entry[1]))
            for g, group in enumerate(groups):
                slots, gate_ids = self.kron.setdefault(len(group), ([], []))
                slots.append(k + g)
                gate_ids.extend(group)
            last = len(groups) - 1
            ends = [(0, before, after)] if not last else [(0, before, 0), (last, 0, after)]
            for g, outside_before, outside_after in ends:
                if outside_before or outside_after:
                    side = 4 ** len(groups[g])
                    self.embeds.append((k + g, side, 1 << outside_before, 1 << outside_after))
        self._constants: dict = {}

    def _constant(self, key, like: torch.Tensor, make: Callable) -> torch.Tensor:
        full_key = (key, like.dtype, like.device)
        value = self._constants.get(full_key)
        if value is None:
            value = self._constants[full_key] = make()
        return value

    def _full(self, i: int, gate: torch.Tensor) -> torch.Tensor:
        columns = self.specs[i].columns
        if len(columns) == 4:
            return gate
        full = gate.new_zeros(4, 4)
        full[:, list(columns)] = gate
        return full

    # ---------------------------------------------------------------------------- forward
    def build(self, gates: Sequence[torch.Tensor]):
        """(the matrices, what ``backward`` needs); no autograd graph is recorded."""
        with torch.no_grad():
            return self._build(gates)

    def _build(self, gates):
        mats: list = [None] * len(self.recipe)
        saved: dict = {}
        if self.fused:
            # products[m, a, (x, y, t)] = sum_b g[m, (x, y), a, b] * v[m, b, t]
            g = torch.stack([gates[i] for _, i, _ in self.fused]).reshape(-1, 4, 2, 2)
            v = torch.stack([gates[j] for _, _, j in self.fused]).reshape(-1, 1, 2, 2)
            products = torch.matmul(g, v).transpose(1, 2).reshape(-1, 2, 8)
            saved["fused"] = (g, v)
            for (k, _, _), matrix in zip(self.fused, products.unbind(0)):
                mats[k] = matrix
        ref = gates[0]
        for k, entry in enumerate(self.recipe):
            if entry is None or entry[0] == "fused":
                continue
            kind = entry[0]
            if kind == "vector":
                mats[k] = gates[entry[1]].reshape(1, 4)
            elif kind == "fresh_b":
                mats[k] = gates[entry[1]].t()
            elif kind == "grow":
                bits = entry[1]

                def row(bits=bits):
                    r = torch.zeros(1, 1 << bits, dtype=ref.dtype, device=ref.device)
                    r[0, 0] = 1.0
                    return r

                mats[k] = self._constant(("grow", bits), ref, row)
            elif kind == "full":
                mats[k] = self._full(entry[1], gates[entry[1]])
            elif kind != "sweep":  # (sweeps are built below, all at once)
                mats[k] = self.fallback(entry, gates)
        for size, (slots, gate_ids) in self.kron.items():
            stacked = torch.stack([gates[i] for i in gate_ids]).view(-1, size, 4, 4)
            outs = kron_groups(stacked)
            saved[("kron", size)] = (stacked, outs)
            for slot, block in zip(slots, outs[-1].unbind(0)):
                mats[slot] = block
        for slot, _, before, after in self.embeds:
            mats[slot] = embed(mats[slot], before, after)
        return mats, saved

    # --------------------------------------------------------------------------- backward
    def backward(self, gates, saved, grads: Sequence):
        """The gates' gradients (None where no matrix depends on a gate)."""
        out: list[torch.Tensor | None] = [None] * len(gates)

        def add(i: int, grad: torch.Tensor) -> None:
            if grad.shape != gates[i].shape:
                grad = grad.reshape(gates[i].shape)
            previous = out[i]
            out[i] = grad if previous is None else previous + grad

        if self.fused:
            g, v = saved["fused"]
            d_products = torch.stack([grads[k] for k, _, _ in self.fused])
            d_products = d_products.reshape(-1, 2, 4, 2).transpose(1, 2)  # (m, xy, a, t)
            d_g = torch.matmul(d_products, v.transpose(2, 3))  # (m, xy, a, b)
            count = d_g.shape[0]
            d_v = torch.bmm(g.reshape(count, 8, 2).transpose(1, 2), d_products.reshape(count, 8, 2))
            for (_, i, j), grad_g, grad_v in zip(self.fused, d_g.unbind(0), d_v.unbind(0)):
                add(i, grad_g)
                add(j, grad_v)
        if self.kron:
            block_grads = list(grads)
            for slot, side, before, after in self.embeds:
                block_grads[slot] = embed_backward(block_grads[slot], side, before, after)
            for size, (slots, gate_ids) in self.kron.items():
                stacked, outs = saved[("kron", size)]
                d_blocks = torch.stack([block_grads[slot] for slot in slots])
                d_gates = kron_groups_backward(stacked, outs, d_blocks).view(-1, 4, 4)
                for i, grad in zip(gate_ids, d_gates.unbind(0)):
                    add(i, grad)
        fallback = []
        for k, entry in enumerate(self.recipe):
            if entry is None or entry[0] in ("fused", "grow"):
                continue
            kind = entry[0]
            if kind == "sweep":
                continue
            grad = grads[k]
            if grad is None:
                continue
            if kind == "vector":
                add(entry[1], grad)
            elif kind == "fresh_b":
                add(entry[1], grad.t())
            elif kind == "full":
                columns = self.specs[entry[1]].columns
                add(entry[1], grad if len(columns) == 4 else grad[:, list(columns)])
            else:
                fallback.append(k)
        if fallback:
            self._fallback_backward(fallback, gates, grads, add)
        return out

    def _fallback_backward(self, entries: list[int], gates, grads, add) -> None:
        with torch.enable_grad():
            leaves = [g.detach().requires_grad_() for g in gates]
            mats = [self.fallback(self.recipe[k], leaves) for k in entries]
            used = sorted({i for k in entries for i in self.recipe[k][3]})
            d_gates = torch.autograd.grad(
                mats, [leaves[i] for i in used], [grads[k] for k in entries], allow_unused=True
            )
        for i, grad in zip(used, d_gates):
            if grad is not None:
                add(i, grad)
