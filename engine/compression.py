"""Choosing layers of a model, replacing them by ADTN layers, and reporting the counts.

``plan_compression`` computes the report without building anything (the wizard shows it as
the user edits); ``compress`` validates every requested layer first and only then replaces
them, so a bad request leaves the model untouched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence, Union

from torch import nn

from engine.adtn import ACTIVATIONS, ADTN, LAYOUTS, MAX_Q, mode_bits
from engine.layers import DEFAULT_FIT_STEPS, ADTNConv2d, ADTNLinear

ADTN_LAYER_TYPES = (ADTNLinear, ADTNConv2d)


@dataclass
class LayerSpec:
    """One layer to encode as an ADTN, as a run configuration names it."""

    name: str
    depth: int = 1
    activation: str = "relu"
    layout: str = "brick"


@dataclass(frozen=True)
class LayerInfo:
    """A linear or convolutional layer of a model, and whether it can become an ADTN."""

    name: str
    kind: str  # "linear" | "conv2d"
    weight_shape: tuple[int, ...]
    dense_params: int  # weight and bias
    compressed: bool  # already an ADTN layer
    encodable: bool
    reason: str  # why not, when not encodable
    Q: int


@dataclass(frozen=True)
class LayerReport:
    """Counts for one encoded layer. Ratios compare the weight alone (as the paper does)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    Q: int
    depth: int
    layout: str
    activation: str
    dense_params: int  # the dense weight's entries
    adtn_params: int  # stored local tensors plus the scale
    adtn_tensor_params: int  # stored local tensors only
    bias_params: int
    ratio: float  # dense_params / adtn_params


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
    def adtn_params(self) -> int:
        """Parameters of the ADTNs that replace them."""
        return sum(r.adtn_params for r in self.rows)

    @property
    def layers_ratio(self) -> float:
        return self.dense_params / self.adtn_params if self.rows else 1.0

    @property
    def ratio(self) -> float:
        """Model parameters before over after."""
        return self.model_params_before / max(1, self.model_params_after)

    def to_dict(self) -> dict:
        return {
            "layers": [dict(asdict(r), weight_shape=list(r.weight_shape)) for r in self.rows],
            "compressed_layers_dense_params": self.dense_params,
            "compressed_layers_adtn_params": self.adtn_params,
            "compressed_layers_ratio": self.layers_ratio,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "model_ratio": self.ratio,
            "fit_errors": dict(self.fit_errors),
        }

    def format_table(self) -> str:
        """A plain-text table for the command line and logs."""
        header = f"{'layer':<16} {'kind':<7} {'weight':<18} {'Q':>3} {'M':>2} {'dense':>12} {'ADTN':>8} {'ratio':>10}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            shape = "×".join(str(d) for d in r.weight_shape)
            lines.append(
                f"{r.name:<16} {r.kind:<7} {shape:<18} {r.Q:>3} {r.depth:>2} "
                f"{r.dense_params:>12,} {r.adtn_params:>8,} {r.ratio:>9.1f}×"
            )
        lines.append("-" * len(header))
        lines.append(
            f"model: {self.model_params_before:,} → {self.model_params_after:,} parameters "
            f"({self.ratio:.2f}× smaller); encoded layers {self.layers_ratio:.1f}× smaller"
        )
        return "\n".join(lines)


LayerRequest = Union[str, LayerSpec, Mapping]


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d) + ADTN_LAYER_TYPES)
    }


def _kind(module: nn.Module) -> str:
    return "linear" if isinstance(module, (nn.Linear, ADTNLinear)) else "conv2d"


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, ADTN_LAYER_TYPES):
        return module.adtn.shape
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
        compressed = isinstance(module, ADTN_LAYER_TYPES)
        infos.append(
            LayerInfo(
                name=name,
                kind=_kind(module),
                weight_shape=shape,
                dense_params=math.prod(shape) + bias,
                compressed=compressed,
                encodable=not reason and not compressed,
                reason=reason or ("already an ADTN layer" if compressed else ""),
                Q=sum(mode_bits(shape)),
            )
        )
    return infos


def resolve_specs(
    layers: Union[Iterable[LayerRequest], Mapping[str, int]],
    depth: int = 1,
    activation: str = "relu",
    layout: str = "brick",
) -> list[LayerSpec]:
    """Layer requests (names, ``{name: depth}``, dicts or ``LayerSpec``) as ``LayerSpec``s."""
    if isinstance(layers, str):
        raise ValueError("layers must be a list of layer names, not a single string")
    if isinstance(layers, Mapping):
        items: list = [LayerSpec(str(n), int(d), activation, layout) for n, d in layers.items()]
    else:
        items = []
        for item in layers:
            if isinstance(item, LayerSpec):
                items.append(item)
            elif isinstance(item, str):
                items.append(LayerSpec(item, depth, activation, layout))
            elif isinstance(item, Mapping):
                unknown = set(item) - {"name", "depth", "activation", "layout"}
                if unknown or "name" not in item:
                    raise ValueError(f"a layer entry needs 'name' and may have depth, activation, layout; got {dict(item)}")
                items.append(
                    LayerSpec(
                        str(item["name"]),
                        int(item.get("depth", depth)),
                        str(item.get("activation", activation)),
                        str(item.get("layout", layout)),
                    )
                )
            else:
                raise ValueError(f"cannot read a layer request from {item!r}")
    return items


def _validate(model: nn.Module, specs: Sequence[LayerSpec]) -> dict[str, nn.Module]:
    """The modules to replace; every problem of every request in one ``ValueError``."""
    available = _weight_layers(model)
    problems: list[str] = []
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
        if isinstance(module, ADTN_LAYER_TYPES):
            problems.append(f"'{spec.name}' is already an ADTN layer")
            continue
        if int(spec.depth) < 1:
            problems.append(f"'{spec.name}': depth must be at least 1, got {spec.depth}")
        if spec.activation not in ACTIVATIONS:
            problems.append(f"'{spec.name}': activation must be one of {ACTIVATIONS}, got {spec.activation!r}")
        if spec.layout not in LAYOUTS:
            problems.append(f"'{spec.name}': layout must be one of {LAYOUTS}, got {spec.layout!r}")
        reason = _unencodable_reason(_weight_shape(module))
        if reason:
            problems.append(f"'{spec.name}' cannot be encoded: {reason}")
    if problems:
        raise ValueError("cannot compress: " + "; ".join(problems))
    return {spec.name: available[spec.name] for spec in specs}


def _row(spec: LayerSpec, module: nn.Module) -> LayerReport:
    shape = _weight_shape(module)
    adtn = ADTN.count_parameters(shape, spec.depth, spec.layout)
    dense = math.prod(shape)
    return LayerReport(
        name=spec.name,
        kind=_kind(module),
        weight_shape=shape,
        Q=sum(mode_bits(shape)),
        depth=int(spec.depth),
        layout=spec.layout,
        activation=spec.activation,
        dense_params=dense,
        adtn_params=adtn,
        adtn_tensor_params=adtn - 1,
        bias_params=module.bias.numel() if module.bias is not None else 0,
        ratio=dense / adtn,
    )


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plan_compression(
    model: nn.Module,
    layers: Union[Iterable[LayerRequest], Mapping[str, int]],
    depth: int = 1,
    activation: str = "relu",
    layout: str = "brick",
) -> CompressionReport:
    """The report ``compress`` would give, computed without building any ADTN."""
    specs = resolve_specs(layers, depth, activation, layout)
    modules = _validate(model, specs)
    rows = [_row(spec, modules[spec.name]) for spec in specs]
    before = _count(model)
    after = before - sum(r.dense_params - r.adtn_params for r in rows)
    return CompressionReport(rows, before, after)


def compress(
    model: nn.Module,
    layers: Union[Iterable[LayerRequest], Mapping[str, int]],
    depth: int = 1,
    activation: str = "relu",
    layout: str = "brick",
    fit: bool = False,
    fit_steps: int = DEFAULT_FIT_STEPS,
    inplace: bool = True,
) -> CompressionReport:
    """Replace the named layers of ``model`` by ADTN layers and report the counts.

    ``layers`` holds names (using ``depth``, ``activation`` and ``layout``), a mapping
    ``{name: depth}``, dicts or ``LayerSpec``s. With ``fit=True`` each ADTN is fitted to the
    layer's current weight (least squares), else it starts fresh; biases are kept. With
    ``inplace=False`` a copy is compressed and ``model`` is left alone. The compressed model is
    ``report.model`` either way. Raises ``ValueError`` naming every bad request, before any
    layer is replaced.
    """
    specs = resolve_specs(layers, depth, activation, layout)
    target = model if inplace else copy.deepcopy(model)
    modules = _validate(target, specs)
    before = _count(target)
    replacements = {}
    for spec in specs:
        module = modules[spec.name]
        options = dict(depth=spec.depth, activation=spec.activation, layout=spec.layout, fit=fit, fit_steps=fit_steps)
        if isinstance(module, nn.Linear):
            replacements[spec.name] = ADTNLinear.from_linear(module, **options)
        else:
            replacements[spec.name] = ADTNConv2d.from_conv(module, **options)
    for name, replacement in replacements.items():
        _set_submodule(target, name, replacement)
    rows = [_row(spec, modules[spec.name]) for spec in specs]
    fit_errors = {n: m.fit_report for n, m in replacements.items() if m.fit_report is not None}
    return CompressionReport(rows, before, _count(target), model=target, fit_errors=fit_errors)


def materialize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ADTN layer replaced by its dense equivalent."""
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if isinstance(module, ADTN_LAYER_TYPES):
            _set_submodule(dense, name, module.to_dense())
    return dense


def adtn_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ADTN layers of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ADTN_LAYER_TYPES)}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
