"""Choosing layers of a model, replacing them by encoded layers, and reporting the counts.

Each chosen layer gets an encoding (the ADTN, a TT-matrix, low rank, Tucker, CP: see
``engine.encodings``). ``plan_compression`` computes the report without building anything
(the wizard shows it as the user edits); ``compress`` validates every requested layer first
and only then replaces them, so a bad request leaves the model untouched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from engine.adtn import MAX_Q, mode_bits
from engine.encodings import EncodingError, EncodingPlan, plan_layer
from engine.layer_spec import LayerSpec, LayerSpecError
from engine.layers import (
    DEFAULT_FIT_STEPS,
    ENCODED_LAYER_TYPES,
    EncodedConv2d,
    EncodedLayer,
    EncodedLinear,
    encode_layer,
)

__all__ = [
    "CompressionReport",
    "LayerInfo",
    "LayerReport",
    "LayerSpec",
    "compress",
    "describe_layers",
    "encoded_layers",
    "materialize",
    "plan_compression",
]


@dataclass(frozen=True)
class LayerInfo:
    """A linear or convolutional layer of a model, and whether it can become an ADTN."""

    name: str
    kind: str  # "linear" | "conv2d"
    weight_shape: tuple[int, ...]
    dense_params: int  # weight and bias
    compressed: bool  # already an encoded layer
    encodable: bool
    reason: str  # why not, when not encodable
    Q: int
    weight_params: int = 0  # the weight alone: what the reports' ratios divide


@dataclass(frozen=True)
class LayerReport:
    """Counts for one encoded layer. Ratios compare the weight alone (as the paper does)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    Q: int  # binary indices of the weight (what an ADTN works on)
    encoding: str
    detail: str  # the resolved options in words: depth, ranks, factor shapes
    options: dict  # the resolved options (depth, ranks, ...), as plain values
    depth: int  # the ADTN depth (or the depth whose ADTN sets the budget)
    layout: str
    activation: str
    dense_params: int  # the dense weight's entries
    encoded_params: int  # numbers of the encoding that can change the weight
    budget: int  # the parameter count asked for (0: none)
    bias_params: int
    ratio: float  # dense_params / encoded_params


@dataclass
class CompressionReport:
    """Per-layer counts and totals for the whole model."""

    rows: list[LayerReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    # Set by ``compress``: the compressed model, and the relative error of each fitted layer.
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    fit_errors: dict[str, float] = field(default_factory=dict)

    @property
    def dense_params(self) -> int:
        """Entries of the encoded layers' dense weights."""
        return sum(r.dense_params for r in self.rows)

    @property
    def encoded_params(self) -> int:
        """Parameters of the encodings that replace them."""
        return sum(r.encoded_params for r in self.rows)

    @property
    def encodings(self) -> list[str]:
        """The encodings used, in the order they first appear."""
        return list(dict.fromkeys(r.encoding for r in self.rows))

    @property
    def layers_ratio(self) -> float:
        return self.dense_params / self.encoded_params if self.rows else 1.0

    @property
    def ratio(self) -> float:
        """Model parameters before over after."""
        return self.model_params_before / max(1, self.model_params_after)

    def to_dict(self) -> dict:
        return {
            "layers": [dict(asdict(r), weight_shape=list(r.weight_shape)) for r in self.rows],
            "compressed_layers_dense_params": self.dense_params,
            "compressed_layers_encoded_params": self.encoded_params,
            "encodings": self.encodings,
            "compressed_layers_ratio": self.layers_ratio,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "model_ratio": self.ratio,
            "fit_errors": dict(self.fit_errors),
        }

    def format_table(self) -> str:
        """A plain-text table for the command line and logs."""
        header = (
            f"{'layer':<16} {'kind':<7} {'weight':<18} {'encoding':<8} {'dense':>12} "
            f"{'encoded':>8} {'ratio':>10}  options"
        )
        lines = [header, "-" * len(header)]
        for r in self.rows:
            shape = "×".join(str(d) for d in r.weight_shape)
            lines.append(
                f"{r.name:<16} {r.kind:<7} {shape:<18} {r.encoding:<8} "
                f"{r.dense_params:>12,} {r.encoded_params:>8,} {r.ratio:>9.1f}×  {r.detail}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"model: {self.model_params_before:,} → {self.model_params_after:,} parameters "
            f"({self.ratio:.2f}× smaller); encoded layers {self.layers_ratio:.1f}× smaller"
        )
        return "\n".join(lines)


LayerRequest = str | LayerSpec | Mapping
# A layer with a weight that a plan can name: dense, or already encoded.
WeightLayer = nn.Linear | nn.Conv2d | EncodedLinear | EncodedConv2d


def _weight_layers(model: nn.Module) -> dict[str, WeightLayer]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d) + ENCODED_LAYER_TYPES)
    }


def _kind(module: nn.Module) -> str:
    return "linear" if isinstance(module, (nn.Linear, EncodedLinear)) else "conv2d"


def _weight_shape(module: WeightLayer) -> tuple[int, ...]:
    if isinstance(module, ENCODED_LAYER_TYPES):
        return tuple(module.plan.weight_shape)
    return tuple(module.weight.shape)


def _unencodable_reason(shape: Sequence[int]) -> str:
    q = sum(mode_bits(shape))
    if q < 2:
        return f"its weight has {math.prod(shape)} element(s); an ADTN needs at least 3"
    if q > MAX_Q:
        return f"its weight needs {q} binary indices; at most {MAX_Q} are supported"
    return ""


def describe_layers(model: nn.Module) -> list[LayerInfo]:
    """Every linear and convolutional layer of ``model``, in module order."""
    infos = []
    for name, module in _weight_layers(model).items():
        shape = _weight_shape(module)
        bias = module.bias.numel() if module.bias is not None else 0
        reason = _unencodable_reason(shape)
        compressed = isinstance(module, ENCODED_LAYER_TYPES)
        infos.append(
            LayerInfo(
                name=name,
                kind=_kind(module),
                weight_shape=shape,
                dense_params=math.prod(shape) + bias,
                compressed=compressed,
                encodable=not reason and not compressed,
                reason=reason or ("already an encoded layer" if compressed else ""),
                Q=sum(mode_bits(shape)),
                weight_params=math.prod(shape),
            )
        )
    return infos


def resolve_specs(
    layers: Iterable[LayerRequest] | Mapping[str, int],
    depth: int = 1,
    activation: str = "relu",
    layout: str = "brick",
    encoding: str = "adtn",
) -> list[LayerSpec]:
    """Layer requests (names, ``{name: depth}``, dicts or ``LayerSpec``) as ``LayerSpec``s."""
    defaults: dict[str, Any] = dict(
        depth=depth, activation=activation, layout=layout, encoding=encoding
    )
    if isinstance(layers, str):
        raise LayerSpecError("layers must be a list of layer names, not a single string")
    if isinstance(layers, Mapping):
        return [LayerSpec(str(n), **dict(defaults, depth=int(d))) for n, d in layers.items()]
    items = []
    fields = set(LayerSpec.__dataclass_fields__)
    for item in layers:
        if isinstance(item, LayerSpec):
            items.append(item)
        elif isinstance(item, str):
            items.append(LayerSpec(item, **defaults))
        elif isinstance(item, Mapping):
            unknown = set(item) - fields
            if unknown or "name" not in item:
                raise LayerSpecError(
                    f"a layer entry needs 'name' and may have "
                    f"{', '.join(sorted(fields - {'name'}))}; got {dict(item)}"
                )
            items.append(LayerSpec(**dict(defaults, **item)))
        else:
            raise LayerSpecError(f"cannot read a layer request from {item!r}")
    return items


def _validate(
    model: nn.Module, specs: Sequence[LayerSpec]
) -> tuple[dict[str, WeightLayer], dict[str, EncodingPlan]]:
    """The modules to replace and their resolved encodings; every problem of every request in
    one ``EncodingError`` (a ``ValueError``)."""
    available = _weight_layers(model)
    problems: list[str] = []
    plans: dict[str, EncodingPlan] = {}
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            problems.append(f"'{spec.name}' is listed twice")
            continue
        seen.add(spec.name)
        module = available.get(spec.name)
        if module is None:
            known = dict(model.named_modules())
            if spec.name in known:
                kind = type(known[spec.name]).__name__
                problems.append(f"'{spec.name}' is a {kind}, not a Linear or Conv2d layer")
            else:
                names = ", ".join(available) or "none"
                problems.append(f"'{spec.name}' is not a layer of the model (layers: {names})")
            continue
        if isinstance(module, ENCODED_LAYER_TYPES):
            problems.append(f"'{spec.name}' is already an encoded layer")
            continue
        try:
            spec.validate(where=f"'{spec.name}'")
        except LayerSpecError as exc:
            problems.append(str(exc))
            continue
        reason = _unencodable_reason(_weight_shape(module)) if spec.encoding == "adtn" else ""
        if reason:
            problems.append(f"'{spec.name}' cannot be encoded: {reason}")
            continue
        try:
            plans[spec.name] = plan_layer(spec, _weight_shape(module))
        except (EncodingError, ValueError) as exc:
            problems.append(f"'{spec.name}' cannot be encoded as {spec.encoding}: {exc}")
    if problems:
        raise EncodingError("cannot compress: " + "; ".join(problems))
    return {spec.name: available[spec.name] for spec in specs}, plans


def _row(spec: LayerSpec, module: WeightLayer, plan: EncodingPlan) -> LayerReport:
    shape = _weight_shape(module)
    dense = math.prod(shape)
    return LayerReport(
        name=spec.name,
        kind=_kind(module),
        weight_shape=shape,
        Q=sum(mode_bits(shape)),
        encoding=plan.encoding,
        detail=plan.detail,
        options=dict(plan.options),
        depth=int(plan.options.get("depth", spec.depth)),
        layout=spec.layout,
        activation=spec.activation,
        dense_params=dense,
        encoded_params=plan.params,
        budget=plan.budget,
        bias_params=module.bias.numel() if module.bias is not None else 0,
        ratio=dense / max(1, plan.params),
    )


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plan_compression(
    model: nn.Module,
    layers: Iterable[LayerRequest] | Mapping[str, int],
    depth: int = 1,
    activation: str = "relu",
    layout: str = "brick",
    encoding: str = "adtn",
) -> CompressionReport:
    """The report ``compress`` would give, computed without building any layer."""
    specs = resolve_specs(layers, depth, activation, layout, encoding)
    modules, plans = _validate(model, specs)
    rows = [_row(spec, modules[spec.name], plans[spec.name]) for spec in specs]
    before = _count(model)
    after = before - sum(r.dense_params - r.encoded_params for r in rows)
    return CompressionReport(rows, before, after)


def compress(
    model: nn.Module,
    layers: Iterable[LayerRequest] | Mapping[str, int],
    depth: int = 1,
    activation: str = "relu",
    layout: str = "brick",
    fit: bool = False,
    fit_steps: int = DEFAULT_FIT_STEPS,
    inplace: bool = True,
    encoding: str = "adtn",
) -> CompressionReport:
    """Replace the named layers of ``model`` by encoded layers and report the counts.

    ``layers`` holds names (using ``depth``, ``activation``, ``layout`` and ``encoding``), a
    mapping ``{name: depth}``, dicts or ``LayerSpec``s. With ``fit=True`` each encoding is
    fitted to the layer's current weight (least squares), else it starts fresh; biases are
    kept. With ``inplace=False`` a copy is compressed and ``model`` is left alone. The
    compressed model is ``report.model`` either way. Raises ``ValueError`` naming every bad
    request, before any layer is replaced.
    """
    specs = resolve_specs(layers, depth, activation, layout, encoding)
    target = model if inplace else copy.deepcopy(model)
    modules, plans = _validate(target, specs)
    before = _count(target)
    replacements = {}
    for spec in specs:
        replacements[spec.name] = encode_layer(modules[spec.name], plans[spec.name], fit, fit_steps)
    for name, replacement in replacements.items():
        _set_submodule(target, name, replacement)
    rows = [_row(spec, modules[spec.name], plans[spec.name]) for spec in specs]
    fit_errors = {n: m.fit_error for n, m in replacements.items() if m.fit_error is not None}
    return CompressionReport(rows, before, _count(target), model=target, fit_errors=fit_errors)


def materialize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every encoded layer replaced by its dense equivalent."""
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if isinstance(module, ENCODED_LAYER_TYPES):
            _set_submodule(dense, name, module.to_dense())
    return dense


def encoded_layers(model: nn.Module, encoding: str | None = None) -> dict[str, EncodedLayer]:
    """The encoded layers of a model (of one encoding, if given), by name."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, ENCODED_LAYER_TYPES) and encoding in (None, m.encoding)
    }


def adtn_layers(model: nn.Module) -> dict[str, EncodedLayer]:
    """The ADTN-encoded layers of a model, by name."""
    return encoded_layers(model, "adtn")


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
