"""The small matrices of an ADTN's contraction, built from its gates without autograd.

``ADTN._compile`` lists, per application of the contraction, a *recipe* for its matrix (a gate
row, a gate fused with a fresh pair's vector, a Kronecker block of side-by-side gates, …).
Every entry of every such matrix is a short sum of products of gate entries (a Kronecker
block's entry is one product of one entry per gate; a fused matrix's a sum of two products;
identity factors and padding give constants 0 and 1). ``MatrixBuilder`` compiles the recipe
once into index tables, so that all the matrices come out of one gather and one product from
the gates laid end to end, and all the gates' gradients out of one scatter-add: a few
operations a step whatever the number of gates, instead of a few per gate and per block, which
for a small layer cost more than its whole contraction. The whole weight stays one autograd
node (``adtn_kernel.NetworkState``).

Recipes it does not know by hand (``"block"``: gates merged one at a time, as the stair layout
makes) are built by the differentiable ``fallback`` and differentiated under autograd inside
the backward pass: correct, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Kronecker blocks of at most this many gates come out of the gather (an entry is a product
# of this many factors); larger ones (block_bits above 5) are built by broadcast products,
# whose work grows with the block's entries only, not with its entries times its gates.
GATHER_MAX_GATES = 2


def kron_groups(gates: torch.Tensor) -> list[torch.Tensor]:
    """``(m, g, 4, 4)`` gates → the partial Kronecker products of each group, the last being
    the ``(m, 4**g, 4**g)`` blocks (the others are kept for the backward pass)."""
    outs = [gates[:, 0]]
    for j in range(1, gates.shape[1]):
        m, rows, cols = outs[-1].shape
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


def flat_layout(specs: Sequence) -> tuple[list[tuple[int, list[int]]], list[int], int]:
    """Where each gate sits when the gates are laid end to end: groups of equal column counts
    ``(columns, gate ids)``, each gate's offset, and the number of entries."""
    groups: list[tuple[int, list[int]]] = []
    offsets = [0] * len(specs)
    offset = 0
    for columns in sorted({len(s.columns) for s in specs}):
        ids = [i for i, s in enumerate(specs) if len(s.columns) == columns]
        groups.append((columns, ids))
        for i in ids:
            offsets[i] = offset
            offset += 4 * columns
    return groups, offsets, offset


def gate_views(values: torch.Tensor, specs: Sequence, offsets: Sequence[int]) -> list:
    """Each gate's ``(4, columns)`` tensor as a view of the flat ``values`` (laid out as
    ``flat_layout``, which gives ``offsets``)."""
    return [
        values[offset : offset + 4 * len(spec.columns)].view(4, len(spec.columns))
        for spec, offset in zip(specs, offsets)
    ]


@dataclass
class Built:
    """What ``MatrixBuilder.build`` hands to its ``backward``."""

    factors: torch.Tensor  # (terms, P): the gathered factor of every product term
    gate_values: torch.Tensor  # the gates' values the matrices were built from
    krons: list  # per size of the larger Kronecker blocks: (stacked gates, partial products)
    values: torch.Tensor  # the distinct values that ``place`` spreads over the matrices
    generation: int  # which build last wrote the builder's shared matrices
    flat: torch.Tensor  # the gates laid end to end (``flat_gates``), which native passes read


class MatrixBuilder:
    """Builds ``recipe``'s matrices from the gates and back-propagates to the gates.

    ``specs`` are the gates' ``GateSpec``; ``sweep_layout(run)`` gives a Kronecker run's
    groups and its number of indices before the first and after the last gate;
    ``fallback(entry, gates) -> matrix`` builds an entry by differentiable operations.

    The gates are laid end to end in a flat vector grouped by their number of stored columns
    (one ``stack`` per group), followed by the constants 0 and 1. ``index[t, p]`` is the flat
    position of factor ``p`` of product term ``t``; the first ``num_gathered`` terms are
    distinct values, the others second terms added to the values ``extra_value``; the values
    of Kronecker blocks of more than ``GATHER_MAX_GATES`` gates follow them; ``place``
    gives, for every entry of every matrix (the matrices grouped by shape, each row by row),
    its value.
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
        self.groups, self.gate_offset, offset = flat_layout(specs)
        self.num_gate_entries = offset
        self.zero, self.one = offset, offset + 1

        # Per matrix slot: its shape and, for slots built here, where its entries come from.
        # Distinct values ("unique", each a product term, plus second terms for the fused
        # matrices) are computed once; ``place`` spreads them over the matrices' entries, so
        # that the zeros and copies of an identity factor (``I ⊗ block ⊗ I``) cost one
        # index each, not a product. Value 0 is the constant zero.
        self.shapes: list[tuple[int, int] | None] = [None] * len(self.recipe)
        self.fallback_slots: list[int] = []
        first_terms: list[torch.Tensor] = [torch.tensor([[self.zero]])]
        second: list[tuple[torch.Tensor, torch.Tensor]] = []  # (value ids, factors)
        places: dict[int, torch.Tensor] = {}
        unique = 1
        deferred: list[tuple[int, list[int], int, int]] = []  # (slot, gates, before, after)

        def add(k: int, table: torch.Tensor, place: torch.Tensor | None = None) -> None:
            """Slot ``k``'s values (``table``: (rows, cols, P) or, with ``place``, (n, P)
            values spread by ``place`` (rows, cols) of offsets into them, -1 for zero)."""
            nonlocal unique
            rows, cols = (table.shape[:2]) if place is None else place.shape
            values = table.reshape(-1, table.shape[-1])
            first_terms.append(values)
            if place is None:
                ids = unique + torch.arange(values.shape[0])
            else:
                ids = torch.where(place >= 0, place + unique, 0).reshape(-1)
            places[k] = ids
            self.shapes[k] = (rows, cols)
            unique += values.shape[0]

        for k, entry in enumerate(self.recipe):
            if entry is None:
                continue  # filled by the sweep that precedes it
            kind = entry[0]
            if kind == "sweep":
                for g, (group, left, right) in enumerate(
                    self._sweep_blocks(entry[1], sweep_layout)
                ):
                    if len(group) > GATHER_MAX_GATES:
                        deferred.append((k + g, group, left, right))
                        continue
                    table = self._kron_table(group)
                    n = table.shape[0]
                    if left == right == 1:
                        add(k + g, table)
                    else:
                        add(k + g, table.reshape(n * n, -1), self._embed_place(n, left, right))
            elif kind == "block":
                self.fallback_slots.append(k)
            elif kind == "fused":
                table, extra = self._fused_tables(entry[1], entry[2])
                second.append((unique + torch.arange(16), extra.reshape(16, -1)))
                add(k, table)
            else:
                add(k, self._simple_table(entry))
        self.num_gathered = unique
        # The larger Kronecker blocks' values follow, grouped by their number of gates:
        # (gates per block, flat positions of their full matrices (m * g * 16)).
        self.big: list[tuple[int, torch.Tensor]] = []
        for size in sorted({len(group) for _, group, _, _ in deferred}):
            positions: list[torch.Tensor] = []
            for k, group, left, right in deferred:
                if len(group) != size:
                    continue
                n = 4**size
                positions.extend(self._full(i).view(-1) for i in group)
                offsets = torch.arange(n * n) if left == right == 1 else None
                place = self._embed_place(n, left, right) if offsets is None else offsets
                places[k] = torch.where(place >= 0, place + unique, 0).reshape(-1)
                self.shapes[k] = (n * left * right, n * left * right)
                unique += n * n
            self.big.append((size, torch.cat(positions)))
        self.num_values = unique
        # The matrices' entries, grouped by the matrices' shapes: the matrices of one shape
        # are one (count, rows, cols) view, split by one ``unbind``.
        self.shape_groups: list[tuple[tuple[int, int], list[int]]] = []
        for k, shape in enumerate(self.shapes):
            if shape is None:
                continue
            for group_shape, slots in self.shape_groups:
                if group_shape == shape:
                    slots.append(k)
                    break
            else:
                self.shape_groups.append((shape, [k]))
        ordered = [places[k] for _, slots in self.shape_groups for k in slots]
        self.num_entries = sum(p.numel() for p in ordered)
        width = max([t.shape[1] for t in first_terms] + [f.shape[1] for _, f in second])
        tables = [self._pad(t, width) for t in first_terms]
        tables += [self._pad(f, width) for _, f in second]
        self.index = torch.cat(tables).contiguous()
        self.extra_value = torch.cat([ids for ids, _ in second]) if second else None
        self.place = torch.cat(ordered) if ordered else torch.empty(0, dtype=torch.long)
        # others[p]: the factors other than p, for the leave-one-out products of the backward.
        self.others = torch.tensor(
            [[q for q in range(width) if q != p] for p in range(width)], dtype=torch.long
        )
        self.built_slots = [k for k, shape in enumerate(self.shapes) if shape is not None]
        self._constants: dict = {}
        self.generation = 0
        self._grad_busy = False

    # ----------------------------------------------------------------------- index tables
    def _pad(self, table: torch.Tensor, width: int) -> torch.Tensor:
        if table.shape[1] == width:
            return table
        pad = torch.full((table.shape[0], width - table.shape[1]), self.one, dtype=torch.long)
        # A term that is a constant zero stays zero whatever it is padded with.
        return torch.cat([table, pad], 1)

    def _full(self, i: int) -> torch.Tensor:
        """(4, 4) flat positions of gate ``i``'s full matrix (``zero`` for columns not stored)."""
        columns = self.specs[i].columns
        table = torch.full((4, 4), self.zero, dtype=torch.long)
        base = self.gate_offset[i]
        for s, column in enumerate(columns):
            table[:, column] = base + torch.arange(4) * len(columns) + s
        return table

    def _stored(self, i: int) -> torch.Tensor:
        """(4, c) flat positions of gate ``i``'s stored entries."""
        c = len(self.specs[i].columns)
        return self.gate_offset[i] + torch.arange(4 * c).view(4, c)

    def _simple_table(self, entry) -> torch.Tensor:
        """(rows, cols, 1) positions of a matrix that is gate entries or constants."""
        kind = entry[0]
        if kind == "vector":
            table = self._stored(entry[1]).reshape(1, 4)
        elif kind == "fresh_b":
            table = self._stored(entry[1]).t()
        elif kind == "grow":
            table = torch.full((1, 1 << entry[1]), self.zero, dtype=torch.long)
            table[0, 0] = self.one
        elif kind == "full":
            table = self._full(entry[1])
        else:
            raise ValueError(f"unknown matrix recipe {kind!r}")
        return table.unsqueeze(-1)

    def _fused_tables(self, i: int, j: int):
        """Gate ``i`` after gate ``j``'s vector, as a (2, 8) matrix:
        ``M[a, 2 * xy + t] = sum_b G_i[xy, 2a + b] * G_j[2b + t, 0]``. Returns the positions
        of the first terms (b = 0) and of the second (b = 1), each (2, 8, 2)."""
        gate, vector = self._stored(i), self._stored(j).view(2, 2)  # vector[b, t]
        terms = []
        for b in (0, 1):
            table = torch.empty(2, 4, 2, 2, dtype=torch.long)  # (a, xy, t, factor)
            for a in (0, 1):
                table[a, :, :, 0] = gate[:, 2 * a + b].view(4, 1)
                table[a, :, :, 1] = vector[b].view(1, 2)
            terms.append(table.view(2, 8, 2))
        return terms[0], terms[1]

    def _kron_table(self, gate_ids: list[int]) -> torch.Tensor:
        """(4**g, 4**g, g) positions of the Kronecker product of the gates' full matrices
        (the first gate on the most significant index)."""
        g = len(gate_ids)
        factors = []
        for k, i in enumerate(gate_ids):
            shape = [1] * (2 * g)
            shape[k], shape[g + k] = 4, 4
            factors.append(self._full(i).view(shape).expand([4] * (2 * g)))
        table = torch.stack(factors, -1)  # (r_1..r_g, c_1..c_g, g)
        return table.reshape(4**g, 4**g, g)

    @staticmethod
    def _embed_place(n: int, before: int, after: int) -> torch.Tensor:
        """Offsets into an ``n × n`` block's values (row by row) of the entries of
        ``I_before ⊗ block ⊗ I_after``, -1 off its diagonal blocks."""
        out = torch.full((before, n, after, before, n, after), -1, dtype=torch.long)
        diagonal = out.diagonal(0, 0, 3).diagonal(0, 1, 3)  # (n, n, before, after)
        diagonal.copy_(torch.arange(n * n).view(n, n, 1, 1))
        side = before * n * after
        return out.view(side, side)

    @staticmethod
    def _sweep_blocks(run, sweep_layout) -> list[tuple[list[int], int, int]]:
        """Per block of a Kronecker run: its gates and the sizes of the identity factors
        before and after it (the indices outside the run join the end blocks)."""
        groups, before, after = sweep_layout(list(run))
        if len(groups) == 1:
            return [(groups[0], 1 << before, 1 << after)]
        ends = [(1 << before, 1)] + [(1, 1)] * (len(groups) - 2) + [(1, 1 << after)]
        return [(group, left, right) for group, (left, right) in zip(groups, ends)]

    def _constant(self, key, like: torch.Tensor, make: Callable) -> torch.Tensor:
        full_key = (key, like.dtype, like.device)
        value = self._constants.get(full_key)
        if value is None:
            value = self._constants[full_key] = make()
        return value

    def _on(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """An index table of this builder on ``like``'s device."""
        key = (name, like.device)
        value = self._constants.get(key)
        if value is None:
            value = self._constants[key] = getattr(self, name).to(like.device)
        return value

    def _on_big(self, b: int, like: torch.Tensor) -> torch.Tensor:
        key = ("big", b, like.device)
        value = self._constants.get(key)
        if value is None:
            value = self._constants[key] = self.big[b][1].to(like.device)
        return value

    # ---------------------------------------------------------------------------- forward
    def build(self, gate_values: torch.Tensor):
        """(the matrices, what ``backward`` needs) from the gates' values (laid out as
        ``flat_layout``); no autograd graph is recorded."""
        with torch.no_grad():
            return self._build(gate_values)

    def flat_gates(self, values: torch.Tensor) -> torch.Tensor:
        """The gates' values followed by the constants 0 and 1 that the index tables use."""
        zero_one = self._constant("zero_one", values, lambda: values.new_tensor([0.0, 1.0]))
        return torch.cat([values.reshape(-1), zero_one])

    def _build(self, gate_values):
        mats: list = [None] * len(self.recipe)
        flat = self.flat_gates(gate_values)
        index = self._on("index", flat)
        factors = flat.index_select(0, index.view(-1)).view(index.shape)
        values = factors.prod(1) if factors.shape[1] > 1 else factors.view(-1)
        if self.extra_value is not None:
            extra = values[self.num_gathered :]
            values = values[: self.num_gathered]
            values.index_add_(0, self._on("extra_value", flat), extra)
        krons = []
        if self.big:
            parts = [values]
            for b, (size, _) in enumerate(self.big):
                positions = self._on_big(b, flat)
                stacked = flat.index_select(0, positions).view(-1, size, 4, 4)
                outs = kron_groups(stacked)
                krons.append((stacked, outs))
                parts.append(outs[-1].reshape(-1))
            values = torch.cat(parts)
        # The matrices live in one buffer that every build rewrites (their views are made
        # once): a build's backward pass that finds a later build there rebuilds its own.
        buffer, views = self._shared("mats", flat)
        torch.index_select(values, 0, self._on("place", flat), out=buffer)
        mats[:] = views
        self.generation += 1
        if self.fallback_slots:
            gates = gate_views(gate_values, self.specs, self.gate_offset)
            for k in self.fallback_slots:
                mats[k] = self.fallback(self.recipe[k], gates)
        return mats, Built(factors, gate_values, krons, values, self.generation, flat)

    def matrices(self, built: Built, mats: list) -> list:
        """``mats`` as ``build`` returned them with ``built``, rebuilt if a later build has
        since rewritten the shared buffer."""
        if built.generation == self.generation:
            return mats
        fresh = list(mats)
        self._spread(built.values.index_select(0, self._on("place", built.values)), fresh)
        return fresh

    def _shared(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, list]:
        """A buffer of the matrices' entries and its per-slot views, kept per dtype and device."""
        key = (name, like.dtype, like.device)
        value = self._constants.get(key)
        if value is None:
            views: list = [None] * len(self.recipe)
            buffer = like.new_empty(self.num_entries)
            self._spread(buffer, views)
            value = self._constants[key] = (buffer, views)
        return value

    # --------------------------------------------------------------------------- backward
    def grad_outputs(self, like: torch.Tensor) -> list[torch.Tensor | None]:
        """Per matrix slot, where the contraction may write that matrix's gradient (views of
        one flat buffer that ``backward`` reads at once; None for fallback slots)."""
        if not self._grad_busy:  # (one backward pass at a time uses the shared buffer)
            self._grad_busy = True
            return list(self._shared("grads", like)[1])
        outs: list[torch.Tensor | None] = [None] * len(self.recipe)
        self._spread(like.new_empty(self.num_entries), outs)
        return outs

    def _spread(self, entries: torch.Tensor, mats: list) -> None:
        """``mats[k]``: slot ``k``'s matrix as a view of ``entries`` (laid out as ``place``)."""
        start = 0
        for (rows, cols), slots in self.shape_groups:
            size = rows * cols * len(slots)
            views = entries[start : start + size].view(len(slots), rows, cols).unbind(0)
            for k, view in zip(slots, views):
                mats[k] = view
            start += size

    def backward(self, gate_values, built: Built, grads: Sequence, outs=None, extra=None):
        """The gradient of the gates' values (laid out as ``flat_layout``; None where no
        matrix depends on any gate). ``outs``: the
        ``grad_outputs`` the contraction was given (its gradients are read from there);
        ``extra``: gradients of the flat gates (laid out as ``flat_gates``, zero where none)
        from elsewhere (the native passes), added in."""
        ref = gate_values
        if outs is None:
            outs = self.grad_outputs(ref)
        buffer = None
        for k in self.built_slots:
            out, grad = outs[k], grads[k]
            if buffer is None:
                buffer = out._base if out._base is not None else out
            if grad is None:
                out.zero_()
            elif grad is not out:
                out.copy_(grad)
        flat = extra
        if buffer is not None:
            factors = built.factors
            values = ref.new_zeros(self.num_values).index_add_(0, self._on("place", ref), buffer)
            terms = values[: self.num_gathered]
            if self.extra_value is not None:
                seconds = terms.index_select(0, self._on("extra_value", ref))
                terms = torch.cat([terms, seconds])
            width = factors.shape[1]
            if width == 1:
                contributions = terms.view(-1, 1)
            else:
                # Each factor's partner: the product of the term's other factors.
                if width == 2:
                    partners = factors.flip(1)
                else:
                    others = self._on("others", ref)
                    partners = factors.index_select(1, others.view(-1))
                    partners = partners.view(-1, width, width - 1).prod(2)
                contributions = partners.mul_(terms.view(-1, 1))
            if flat is None:
                flat = ref.new_zeros(self.num_gate_entries + 2)
            flat.index_add_(0, self._on("index", ref).view(-1), contributions.view(-1))
            start = self.num_gathered
            for b, (stacked, outs) in enumerate(built.krons):
                m, n = stacked.shape[0], outs[-1].shape[1]
                d_blocks = values[start : start + m * n * n].view(m, n, n)
                d_gates = kron_groups_backward(stacked, outs, d_blocks)
                flat.index_add_(0, self._on_big(b, ref), d_gates.reshape(-1))
                start += m * n * n
        if self.fallback_slots:
            if flat is None:
                flat = ref.new_zeros(self.num_gate_entries + 2)
            self._fallback_backward(self.fallback_slots, gate_values, grads, flat)
        if (
            buffer is not None
            and buffer is self._constants.get(("grads", ref.dtype, ref.device), (None,))[0]
        ):
            self._grad_busy = False
        return None if flat is None else flat[: self.num_gate_entries]

    def _fallback_backward(self, entries: list[int], gate_values, grads, flat) -> None:
        """Adds to ``flat`` the gates' gradient through the fallback slots ``entries``
        (rebuilt under autograd)."""
        with torch.enable_grad():
            leaf = gate_values.detach().requires_grad_()
            gates = gate_views(leaf, self.specs, self.gate_offset)
            mats = [self.fallback(self.recipe[k], gates) for k in entries]
            (d_values,) = torch.autograd.grad(
                mats, [leaf], [grads[k] for k in entries], allow_unused=True
            )
        if d_values is not None:
            flat[: self.num_gate_entries] += d_values.reshape(-1)
