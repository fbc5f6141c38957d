"""The JSON document an ``.adtn`` bundle carries, built from a model and checked from a file.

The document lives in the safetensors header (``__metadata__["adtn"]``). It says which zoo
model the file rebuilds, and for each compressed layer everything needed to regenerate its
weight from the stored local tensors (docs/FORMAT.md is the spec). Parsing treats the document
as hostile: every field is type-checked and every claim is checked against the tensors the
header declares, and sizes are bounded, before anything is built.
"""

from __future__ import annotations

import builtins
import json
import math
from dataclasses import asdict, dataclass
from importlib import metadata as package_metadata
from typing import TYPE_CHECKING, Any

from torch import nn

from engine.adtn import ADTN, mode_bits
from engine.choices import ACTIVATIONS, INDEX_ORDERS, LAYOUTS
from engine.export.errors import BundleError
from engine.export.safe_read import FLOAT_DTYPES, MAX_DIMS, SafetensorsHeader
from engine.limits import MAX_DEPTH, MAX_Q

if TYPE_CHECKING:
    from engine.layers import EncodedLayer

METADATA_KEY = "adtn"
BUNDLE_FORMAT = "adtn-bundle"
DENSE_FORMAT = "adtn-dense"
FORMAT_VERSION = 1
# How a layer's weight is stored. Each encoding has its own record parser here and its own
# rebuild in the bundle loader; a file naming one this version does not know is refused.
ADTN_ENCODING = "adtn"
# Encodings stored as named factor tensors with a few integer options (docs/FORMAT.md §4).
FACTOR_ENCODINGS = ("tt", "lowrank", "tucker", "cp")
ENCODINGS = (ADTN_ENCODING, *FACTOR_ENCODINGS)
# A factor layer's options are a handful of small integer lists; bound what a file may claim.
MAX_FACTOR_NUMBERS = 1 << 28
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class GateRecord:
    """One stored local tensor: its tensor name, layer, index pair and stored input columns."""

    tensor: str
    layer: int
    pair: tuple[int, int]
    columns: tuple[int, ...]


@dataclass(frozen=True)
class LayerRecord:
    """A compressed layer: the weight it generates and the tensors that generate it."""

    name: str
    weight_key: str
    weight_shape: tuple[int, ...]
    mode_bits: tuple[int, ...]
    padded_shape: tuple[int, ...]
    Q: int
    depth: int
    layout: str
    activation: str
    negative_slope: float
    scale: str
    gates: tuple[GateRecord, ...]
    encoding: str = ADTN_ENCODING
    # which weight bit each network index is (docs/FORMAT.md); absent in older files
    index_order: str = "rows_first"

    def tensor_names(self) -> list[str]:
        """Every tensor name the record lists (a name listed twice is an error)."""
        return [self.scale, *(g.tensor for g in self.gates)]

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """The stored tensors that replace this layer's weight, and their shapes."""
        return {self.scale: ()} | {g.tensor: (4, len(g.columns)) for g in self.gates}

    @property
    def peak_bytes(self) -> int:
        """Memory of the contraction at its peak: about nine float32 states of 2**Q numbers
        (measured; see engine.export.bundle)."""
        return 9 * 4 * (1 << self.Q)

    @property
    def detail(self) -> str:
        return f"depth {self.depth}, {self.layout}, {self.activation}, Q = {self.Q}"

    @property
    def params(self) -> int:
        """Stored numbers: the local tensors and the scale."""
        return sum(4 * len(g.columns) for g in self.gates) + 1


@dataclass(frozen=True)
class FactorRecord:
    """One stored factor of a shallow encoding: its role (``core_0``, ``U``, ...), tensor
    name and shape."""

    role: str
    tensor: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class FactorLayerRecord:
    """A layer encoded as a TT-matrix, ``U · V``, Tucker or CP: its options and factors."""

    name: str
    weight_key: str
    weight_shape: tuple[int, ...]
    encoding: str
    options: dict[str, Any]
    factors: tuple[FactorRecord, ...]

    def tensor_names(self) -> list[str]:
        return [f.tensor for f in self.factors]

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f.tensor: f.shape for f in self.factors}

    @property
    def peak_bytes(self) -> int:
        """The generated weight and one intermediate of its size, float32."""
        return 2 * 4 * math.prod(self.weight_shape)

    @property
    def detail(self) -> str:
        return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in self.options.items())

    @property
    def params(self) -> int:
        return sum(math.prod(f.shape) for f in self.factors)


# A compressed layer's record, whatever its encoding.
AnyLayerRecord = LayerRecord | FactorLayerRecord


@dataclass(frozen=True)
class ModelRecord:
    """The zoo model a file rebuilds: ``engine.models.build_model(**asdict(record))``."""

    name: str
    in_channels: int
    image_size: int
    num_classes: int


@dataclass(frozen=True)
class ExportMetadata:
    """The whole document; ``format`` is ``adtn-bundle`` or ``adtn-dense``."""

    format: str
    format_version: int
    producer: str
    model: ModelRecord | None
    dataset: str | None
    config: dict[str, Any] | None
    layers: tuple[AnyLayerRecord, ...]
    # SHA-256 of the tensor data (docs/FORMAT.md); None in files written before it existed.
    data_sha256: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


# ------------------------------------------------------------------------------- building
def producer() -> str:
    try:
        return f"adtn-studio {package_metadata.version('adtn-studio')}"
    except package_metadata.PackageNotFoundError:  # running from a plain source tree
        return "adtn-studio"


def compressed_layers(model: nn.Module) -> list[tuple[str, EncodedLayer]]:
    """``(layer name, the layer)`` for every encoded layer of ``model``, in module order."""
    from engine.layers import ENCODED_LAYER_TYPES

    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, ENCODED_LAYER_TYPES)
    ]


def encoded_layer_record(name: str, layer: EncodedLayer) -> AnyLayerRecord:
    """The record of one encoded layer, whatever its encoding."""
    from engine.encodings import FactorGenerator

    generator = layer.generator
    if isinstance(generator, ADTN):  # the "adtn" encoding's generator
        return layer_record(name, generator)
    if not isinstance(generator, FactorGenerator):
        raise TypeError(f"layer {name!r}: a {layer.encoding} generator names no factors")
    keys = {id(p): key for key, p in layer.named_parameters(prefix=name)}
    factors = tuple(
        FactorRecord(role, keys[id(tensor)], tuple(tensor.shape))
        for role, tensor in generator.named_factors().items()
    )
    return FactorLayerRecord(
        name=name,
        weight_key=f"{name}.weight",
        weight_shape=tuple(layer.plan.weight_shape),
        encoding=layer.encoding,
        options=_plain(layer.plan.options),
        factors=factors,
    )


def _plain(options: dict) -> dict[str, Any]:
    return {
        key: (list(value) if isinstance(value, (list, tuple)) else value)
        for key, value in options.items()
    }


def layer_record(name: str, adtn: ADTN) -> LayerRecord:
    prefix = f"{name}.adtn"
    return LayerRecord(
        name=name,
        weight_key=f"{name}.weight",
        weight_shape=tuple(adtn.shape),
        mode_bits=tuple(adtn.mode_bits),
        padded_shape=tuple(adtn.padded_shape),
        Q=adtn.Q,
        depth=adtn.depth,
        layout=adtn.layout,
        index_order=getattr(adtn, "index_order", "rows_first"),
        activation=adtn.activation,
        negative_slope=float(adtn.negative_slope),
        scale=f"{prefix}.scale",
        gates=tuple(
            GateRecord(f"{prefix}.gates.{i}", spec.layer, spec.pair, tuple(spec.columns))
            for i, spec in enumerate(adtn.gate_specs())
        ),
    )


def model_record(config: Any) -> ModelRecord | None:
    """The zoo model a run configuration builds (None without a configuration)."""
    if config is None:
        return None
    from engine.data import config_dataset_info  # only needed when a config is given

    info = config_dataset_info(config)
    return ModelRecord(config.model, info.in_channels, info.image_size, info.num_classes)


def build_metadata(
    model: nn.Module, config: Any, format: str, data_sha256: str | None = None
) -> ExportMetadata:
    """The document for ``model`` (compressed or materialised) trained with ``config``;
    ``data_sha256`` is the checksum of the tensors the file will hold."""
    return ExportMetadata(
        format=format,
        format_version=FORMAT_VERSION,
        producer=producer(),
        model=model_record(config),
        dataset=None if config is None else config.dataset,
        config=None if config is None else config.to_dict(),
        layers=tuple(encoded_layer_record(name, layer) for name, layer in compressed_layers(model)),
        data_sha256=data_sha256,
    )


# ------------------------------------------------------------------------------- parsing
class _Reader:
    """Typed access to an untrusted JSON object; every failure names the field."""

    def __init__(self, file_name: str, where: str, data: object) -> None:
        if not isinstance(data, dict):
            raise BundleError(f"{file_name}: metadata {where} is not a JSON object")
        self.file_name, self.where, self.data = file_name, where, data

    def fail(self, key: str, reason: str) -> BundleError:
        return BundleError(f"{self.file_name}: metadata {self.where}.{key} {reason}")

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.data:
            raise self.fail(key, "is missing")
        value = self.data[key]
        is_bool_for_number = isinstance(value, bool) and kind is not bool  # JSON true is no 1
        if is_bool_for_number or not isinstance(value, kind):
            raise self.fail(key, f"has the wrong type ({type(value).__name__})")
        return value

    def int(self, key: str, low: int, high: int) -> int:
        value = self.get(key, int)
        if not low <= value <= high:
            raise self.fail(key, f"is {value}, outside [{low}, {high}]")
        return value

    # ``int`` in this class is the method above, so the builtin is named in full
    def ints(
        self, key: str, low: builtins.int, high: builtins.int, max_len: builtins.int = MAX_DIMS
    ) -> tuple[builtins.int, ...]:
        values = self.get(key, list)
        if not 0 < len(values) <= max_len or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
        ):
            raise self.fail(key, f"must be a list of 1 to {max_len} integers in [{low}, {high}]")
        return tuple(values)

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key, str)
        if value not in allowed:
            raise self.fail(key, f"is {value!r}; expected one of {', '.join(allowed)}")
        return value


def _parse_gate(file_name: str, where: str, raw: object) -> GateRecord:
    reader = _Reader(file_name, where, raw)
    pair = reader.ints("pair", 0, MAX_Q, max_len=2)
    columns = reader.ints("columns", 0, 3, max_len=4)
    if len(pair) != 2 or pair[1] != pair[0] + 1:
        raise reader.fail("pair", f"is {list(pair)}; expected two neighbouring indices")
    if list(columns) != sorted(set(columns)):
        raise reader.fail("columns", "must be increasing and distinct")
    tensor = reader.get("tensor", str)
    if not tensor:
        raise reader.fail("tensor", "is empty")
    return GateRecord(tensor, reader.int("layer", 0, MAX_DEPTH), pair, columns)


def _parse_layer(file_name: str, index: int, raw: object) -> AnyLayerRecord:
    """One entry of ``layers``, read by the parser of its ``encoding`` ("adtn" if absent)."""
    reader = _Reader(file_name, f"layers[{index}]", raw)
    encoding = reader.data.get("encoding", ADTN_ENCODING)
    parser = _LAYER_PARSERS.get(encoding) if isinstance(encoding, str) else None
    if parser is None:
        raise reader.fail(
            "encoding",
            f"is {encoding!r}; this version of ADTN Studio reads "
            f"{', '.join(ENCODINGS)} (update ADTN Studio)",
        )
    return parser(file_name, index, reader)


def _parse_adtn_layer(file_name: str, index: int, reader: _Reader) -> LayerRecord:
    shape = reader.ints("weight_shape", 1, 2**MAX_Q)
    bits = mode_bits(shape)
    q = sum(bits)
    if q > MAX_Q or q < 2:
        raise reader.fail("weight_shape", f"{list(shape)} needs Q = {q}; allowed 2 to {MAX_Q}")
    if reader.ints("mode_bits", 0, MAX_Q) != bits:
        raise reader.fail("mode_bits", f"does not match weight_shape (expected {list(bits)})")
    padded = tuple(1 << b for b in bits)
    if reader.ints("padded_shape", 1, 2**MAX_Q) != padded:
        raise reader.fail("padded_shape", f"does not match weight_shape (expected {list(padded)})")
    if reader.int("Q", 2, MAX_Q) != q:
        raise reader.fail("Q", f"does not match weight_shape (expected {q})")
    depth = reader.int("depth", 1, MAX_DEPTH)
    raw_gates = reader.get("gates", list)
    if not 0 < len(raw_gates) <= depth * (q - 1):
        raise reader.fail(
            "gates",
            f"lists {len(raw_gates)} gates; a depth-{depth} network "
            f"on {q} indices has at most {depth * (q - 1)}",
        )
    where = f"layers[{index}].gates"
    gates = tuple(_parse_gate(file_name, f"{where}[{i}]", g) for i, g in enumerate(raw_gates))
    for i, gate in enumerate(gates):
        if gate.pair[1] >= q or gate.layer >= depth:
            raise BundleError(f"{file_name}: metadata {where}[{i}] lies outside the network")
    gate_layers = [g.layer for g in gates]
    # Layers 0, 1, ..., depth - 1 in order, none skipped: then "an activation before the first
    # gate of every layer but the first" is one rule for the spec, its code and the engine.
    if (
        gate_layers[0] != 0
        or gate_layers[-1] != depth - 1
        or any(b - a not in (0, 1) for a, b in zip(gate_layers, gate_layers[1:]))
    ):
        raise reader.fail(
            "gates",
            f"must run through gate layers 0 to {depth - 1} in contraction order, none skipped",
        )
    slope = reader.get("negative_slope", (int, float))
    if not math.isfinite(slope) or not 0 <= slope < 1:
        raise reader.fail("negative_slope", f"is {slope}; expected a number in [0, 1)")
    return LayerRecord(
        name=reader.get("name", str),
        weight_key=reader.get("weight_key", str),
        weight_shape=shape,
        mode_bits=bits,
        padded_shape=padded,
        Q=q,
        depth=depth,
        layout=reader.choice("layout", LAYOUTS),
        index_order=(
            reader.choice("index_order", INDEX_ORDERS)
            if "index_order" in reader.data
            else "rows_first"
        ),
        activation=reader.choice("activation", ACTIVATIONS),
        negative_slope=float(slope),
        scale=reader.get("scale", str),
        gates=gates,
        encoding=ADTN_ENCODING,
    )


def _parse_factor_layer(file_name: str, index: int, reader: _Reader) -> FactorLayerRecord:
    """A shallow encoding's layer: its options are checked by replanning them (the count and
    every factor shape follow from the options), then each listed factor against them."""
    from engine.encodings import get_encoding
    from engine.layer_spec import LayerSpec

    encoding = reader.choice("encoding", FACTOR_ENCODINGS)
    shape = reader.ints("weight_shape", 1, 2**MAX_Q)
    options = reader.get("options", dict)
    for key, value in options.items():
        flat = value if isinstance(value, list) else [value]
        if (
            not flat
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**MAX_Q for v in flat
            )
            or len(flat) > 64
        ):
            raise reader.fail(
                f"options.{key}", "must be a positive integer or a short list of them"
            )
    coder = get_encoding(encoding)
    try:
        spec = LayerSpec("layer", encoding=encoding, **coder.spec_fields(options))
        spec.validate()
        plan = coder.plan(spec, shape, 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise reader.fail(
            "options", f"do not describe a {encoding} encoding of a {list(shape)} weight ({exc})"
        ) from None
    if plan.params > MAX_FACTOR_NUMBERS or math.prod(shape) > 2**MAX_Q:
        raise reader.fail("options", "describe a layer larger than this version loads")
    expected = coder.factor_shapes(shape, plan.options)
    raw_factors = reader.get("factors", list)
    factors = []
    for i, raw in enumerate(raw_factors):
        item = _Reader(file_name, f"layers[{index}].factors[{i}]", raw)
        role = item.choice("role", tuple(expected))
        tensor = item.get("tensor", str)
        if not tensor:
            raise item.fail("tensor", "is empty")
        declared = item.ints("shape", 1, 2**MAX_Q) if raw.get("shape") != [] else ()
        if declared != tuple(expected[role]):
            raise item.fail(
                "shape", f"is {list(declared)}; the options give {list(expected[role])}"
            )
        factors.append(FactorRecord(role, tensor, declared))
    if sorted(f.role for f in factors) != sorted(expected):
        raise reader.fail("factors", f"must list each of {', '.join(expected)} once")
    return FactorLayerRecord(
        name=reader.get("name", str),
        weight_key=reader.get("weight_key", str),
        weight_shape=shape,
        encoding=encoding,
        options=_plain(plan.options),
        factors=tuple(factors),
    )


_LAYER_PARSERS = {ADTN_ENCODING: _parse_adtn_layer} | {
    name: _parse_factor_layer for name in FACTOR_ENCODINGS
}


def _parse_checksum(reader: _Reader) -> str | None:
    value = reader.data.get("data_sha256")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise reader.fail("data_sha256", "must be 64 lowercase hexadecimal digits")
    return value


def _parse_model(file_name: str, raw: object) -> ModelRecord | None:
    if raw is None:
        return None
    reader = _Reader(file_name, "model", raw)
    return ModelRecord(
        name=reader.get("name", str),
        in_channels=reader.int("in_channels", 1, 1024),
        image_size=reader.int("image_size", 1, 8192),
        num_classes=reader.int("num_classes", 1, 1_000_000),
    )


def parse_metadata(header: SafetensorsHeader, expected_format: str | None = None) -> ExportMetadata:
    """The document of a validated header; raise ``BundleError`` for anything wrong."""
    name = header.path.name
    if METADATA_KEY not in header.metadata:
        raise BundleError(
            f"{name}: no ADTN metadata; this safetensors file was not written by "
            "ADTN Studio's export"
        )
    try:
        raw = json.loads(header.metadata[METADATA_KEY])
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise BundleError(f"{name}: ADTN metadata is not valid JSON ({exc})") from exc
    reader = _Reader(name, "document", raw)
    fmt = reader.choice("format", (BUNDLE_FORMAT, DENSE_FORMAT))
    version = reader.get("format_version", int)
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{name}: format version {version} is not supported (this version of "
            f"ADTN Studio reads version {FORMAT_VERSION}); update ADTN Studio"
        )
    if expected_format is not None and fmt != expected_format:
        raise BundleError(f"{name}: this is an {fmt!r} file, expected {expected_format!r}")
    dataset = raw.get("dataset")
    config = raw.get("config")
    if dataset is not None and not isinstance(dataset, str):
        raise reader.fail("dataset", "must be a string or null")
    if config is not None and not isinstance(config, dict):
        raise reader.fail("config", "must be an object or null")
    layers = tuple(_parse_layer(name, i, item) for i, item in enumerate(reader.get("layers", list)))
    document = ExportMetadata(
        format=fmt,
        format_version=version,
        producer=reader.get("producer", str),
        model=_parse_model(name, raw.get("model")),
        dataset=dataset,
        config=config,
        layers=layers,
        data_sha256=_parse_checksum(reader),
    )
    if fmt == BUNDLE_FORMAT:
        check_layers_against_tensors(header, layers)
    return document


def check_layers_against_tensors(
    header: SafetensorsHeader, layers: tuple[AnyLayerRecord, ...]
) -> None:
    """Every tensor a layer names exists once, is floating point and has the shape it needs."""
    name = header.path.name
    claimed: set[str] = set()
    for layer in layers:
        expected = layer.tensor_shapes()
        if len(expected) != len(layer.tensor_names()):
            raise BundleError(f"{name}: layer {layer.name!r} names one tensor for two roles")
        if layer.weight_key in header.tensors:
            raise BundleError(
                f"{name}: layer {layer.name!r} is compressed but the file also "
                f"holds its dense weight {layer.weight_key!r}"
            )
        for tensor, shape in expected.items():
            entry = header.tensors.get(tensor)
            if entry is None:
                raise BundleError(
                    f"{name}: layer {layer.name!r} needs tensor {tensor!r}, "
                    "which the file does not contain"
                )
            if tensor in claimed:
                raise BundleError(f"{name}: tensor {tensor!r} is claimed twice by the metadata")
            if entry.dtype not in FLOAT_DTYPES:
                raise BundleError(
                    f"{name}: tensor {tensor!r} has dtype {entry.dtype}; "
                    "encoding tensors must be floating point"
                )
            if entry.shape != shape:
                raise BundleError(
                    f"{name}: tensor {tensor!r} has shape {list(entry.shape)} but "
                    f"the metadata describes {list(shape)}"
                )
            claimed.add(tensor)
