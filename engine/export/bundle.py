"""The ``.adtn`` bundle: a compressed model in one safetensors file (docs/FORMAT.md).

Writing stores the model's state dict as it is (local tensors and scale of each compressed
layer, ordinary tensors of the others), the metadata document and the checksum of the tensor
data. Loading and ``inspect`` share one validation (``check_bundle``): the file's bytes, the
document, the checksum, the network each layer describes, the architecture and dtypes of the
model (built on the meta device, so nothing is allocated) and the memory the model will need.
Only then is the model built, and each layer's tensors are taken by the names its metadata
lists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from engine.adtn import LEAKY_RELU_SLOPE, build_gate_specs
from engine.export.atomic import StagedFiles
from engine.export.errors import BundleError
from engine.export.metadata import (
    ADTN_ENCODING,
    BUNDLE_FORMAT,
    FACTOR_ENCODINGS,
    METADATA_KEY,
    ExportMetadata,
    LayerRecord,
    build_metadata,
    parse_metadata,
)
from engine.export.safe_read import (
    FLOAT_DTYPES,
    SafetensorsHeader,
    data_sha256,
    read_data,
    read_header,
    tensors_from_data,
    tensors_sha256,
)
from engine.limits import MAX_LOAD_BYTES

log = logging.getLogger(__name__)

# Peak memory of one ADTN layer's contraction, in float32 state vectors of 2**Q numbers
# (measured: about 8.5 at depth 4 to 16, 2.8 at depth 1), plus its materialised weight.
STATE_VECTORS_AT_PEAK = 9


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors that own their memory (what safetensors needs)."""
    return {
        key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()
    }


def write_bundle(model: nn.Module, path: str | Path, config: Any = None) -> ExportMetadata:
    """Write the bundle of compressed ``model`` to exactly ``path`` (not atomic: see
    ``save_bundle``)."""
    tensors = cpu_state_dict(model)
    document = build_metadata(model, config, BUNDLE_FORMAT, tensors_sha256(tensors))
    save_file(tensors, str(path), metadata={METADATA_KEY: document.to_json()})
    return document


def save_bundle(model: nn.Module, path: str | Path, config: Any = None) -> ExportMetadata:
    """Save compressed ``model`` (trained with run configuration ``config``) as an ``.adtn``
    bundle, atomically. Without ``config`` the bundle can only be loaded with ``model=``.

    Raises ``ExportError`` (one line) when the file cannot be written, e.g. on a full disk;
    nothing is left behind then."""
    from engine.export.atomic import write_failure

    try:
        with StagedFiles() as staged:
            document = write_bundle(model, staged.path_for(path), config)
            staged.commit()
    except Exception as exc:
        failure = write_failure(exc, Path(path))
        if failure is None:
            raise
        raise failure from exc
    return document


def read_bundle_metadata(path: str | Path) -> ExportMetadata:
    """The checked metadata document of the bundle at ``path`` (no tensor is read)."""
    return parse_metadata(read_header(path), expected_format=BUNDLE_FORMAT)


@dataclass(frozen=True)
class CheckedFile:
    """A file whose header, metadata and checksum passed every check, with its data."""

    header: SafetensorsHeader
    document: ExportMetadata
    data: bytes
    checksum_verified: bool  # False for files written before checksums existed


def read_checked(path: str | Path, expected_format: str | None = None) -> CheckedFile:
    """Read an ADTN Studio safetensors file (bundle or dense export) and check its header,
    metadata and, when the file carries one, the checksum of its tensor data."""
    header = read_header(path)
    document = parse_metadata(header, expected_format=expected_format)
    data = read_data(header)
    if document.data_sha256 is None:
        log.warning(
            "%s has no checksum (written before ADTN Studio stored one); its tensor "
            "data cannot be verified",
            header.path.name,
        )
    elif data_sha256(header, data) != document.data_sha256:
        raise BundleError(
            f"{header.path.name}: the tensor data does not match its checksum; "
            "the file is corrupted (or was edited)"
        )
    return CheckedFile(header, document, data, document.data_sha256 is not None)


def check_bundle(checked: CheckedFile, model: nn.Module | None = None) -> nn.Module | None:
    """Every check ``load_bundle`` makes before it builds anything; ``inspect`` runs the same.

    Returns the dense zoo model the bundle names, built on the meta device (None when the
    bundle names none and no ``model`` is given)."""
    header, document = checked.header, checked.document
    for layer in document.layers:
        _LAYER_CHECKS[layer.encoding](header.path.name, layer)
    skeleton = model if model is not None else _zoo_skeleton(header, document)
    _check_memory(header, document, skeleton)
    if skeleton is not None:
        _check_architecture(header, document, skeleton)
    return skeleton


def load_bundle(
    path: str | Path,
    model: nn.Module | None = None,
    model_factory: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """Load an ``.adtn`` bundle as a compressed model in eval mode, ready to evaluate or train.

    Args:
        path: the bundle.
        model: the dense architecture to compress and fill, for bundles of models outside the
            zoo (their metadata names no model). By default the zoo or torchvision model the
            bundle names.
        model_factory: for a bundle of a user's own model (``file.py:factory``): that
            factory, called as in training (``in_channels``, ``image_size``, ``num_classes``
            as keywords when it takes them). A bundle never imports a file it names.

    Raises:
        BundleError: the file is not a valid bundle, or the model it describes would need
            more memory than ``engine.limits.MAX_LOAD_BYTES``; the message says what is wrong.
    """
    checked = read_checked(path, expected_format=BUNDLE_FORMAT)
    header, document = checked.header, checked.document
    name = header.path.name
    if model is None and model_factory is not None:
        model = _model_from_factory(name, document, model_factory)
    if check_bundle(checked, model) is None:
        user_model = _user_model_spec(document)
        if user_model:
            raise BundleError(
                f"{name}: the bundle holds a model built by {user_model}; load it "
                "with load_bundle(path, model_factory=<that function>)"
            )
        raise BundleError(
            f"{name}: the bundle names no zoo model; "
            "load it with load_bundle(path, model=<the dense architecture>)"
        )
    try:
        if model is None:
            model = _build_zoo_model(document)
        _compress_as_described(header, document, model)
        model.load_state_dict(
            _state_by_name(document, tensors_from_data(header, checked.data)), strict=True
        )
    except (RuntimeError, MemoryError) as exc:  # PyTorch's messages span lines; a user gets one
        reason = " ".join(str(exc).split())[:300]
        raise BundleError(f"{name}: the model could not be built or filled: {reason}") from exc
    return model.eval()


# ------------------------------------------------------------------------------- checks
def _zoo_skeleton(header: SafetensorsHeader, document: ExportMetadata) -> nn.Module | None:
    """The zoo model the document names, on the meta device (nothing allocated)."""
    from engine.models import build_model

    if document.model is None or _user_model_spec(document):
        return None  # a user's file is never imported on a bundle's word
    spec = document.model
    try:
        with torch.device("meta"):
            return build_model(spec.name, spec.in_channels, spec.image_size, spec.num_classes)
    except (ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{header.path.name}: metadata describes no buildable model: {exc}"
        ) from exc


def _user_model_spec(document: ExportMetadata) -> str:
    """``file.py:factory`` when the bundle's model came from a user's file, else ""."""
    from engine.model_sources import ModelSourceError, parse_model_spec

    if document.model is None:
        return ""
    try:
        source = parse_model_spec(document.model.name)
    except ModelSourceError:
        return ""
    return source.spec if source.kind == "file" else ""


def _model_from_factory(
    file_name: str, document: ExportMetadata, factory: Callable[..., nn.Module]
) -> nn.Module:
    from engine.model_sources import ModelSourceError, call_factory

    if document.model is None:
        raise BundleError(
            f"{file_name}: the bundle does not record the input shape a "
            "model_factory needs; pass model=<the dense architecture>"
        )
    spec = document.model
    try:
        return call_factory(factory, spec.in_channels, spec.image_size, spec.num_classes)
    except ModelSourceError as exc:
        raise BundleError(f"{file_name}: {exc}") from exc


def _build_zoo_model(document: ExportMetadata) -> nn.Module:
    from engine.models import build_model

    spec = document.model
    assert spec is not None  # check_bundle built this model's skeleton
    return build_model(spec.name, spec.in_channels, spec.image_size, spec.num_classes)


def estimated_load_bytes(
    header: SafetensorsHeader, document: ExportMetadata, skeleton: nn.Module | None
) -> int:
    """Memory that loading and evaluating the bundle needs, estimated from its description:
    the dense model as first built (or, without one, the file's tensors and each compressed
    layer's weight), plus the peak of every ADTN contraction (docs/FORMAT.md, "Limits")."""
    if skeleton is not None:
        dense = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    else:
        dense = sum(entry.end - entry.begin for entry in header.tensors.values()) + sum(
            4 * math.prod(layer.weight_shape) for layer in document.layers
        )
    contraction = sum(layer.peak_bytes for layer in document.layers)
    return dense + contraction


def _check_memory(
    header: SafetensorsHeader, document: ExportMetadata, skeleton: nn.Module | None
) -> None:
    need = estimated_load_bytes(header, document, skeleton)
    if need > MAX_LOAD_BYTES:
        largest = max((getattr(layer, "Q", 0) for layer in document.layers), default=0)
        raise BundleError(
            f"{header.path.name}: the model it describes would need about "
            f"{need / 2**30:.1f} GiB to load (largest ADTN: Q = {largest}); "
            f"the limit is {MAX_LOAD_BYTES / 2**30:.0f} GiB"
        )


def _check_architecture(
    header: SafetensorsHeader, document: ExportMetadata, dense: nn.Module
) -> None:
    """The dense model's tensors are exactly the file's, compressed weights replaced by their
    layers' tensors; floating-point tensors are stored as floating point, others not."""
    name = header.path.name
    model_state = dense.state_dict()
    expected = {
        key: (tuple(value.shape), value.is_floating_point()) for key, value in model_state.items()
    }
    for layer in document.layers:
        shape, _ = expected.pop(layer.weight_key, (None, True))
        if shape != layer.weight_shape:
            raise BundleError(
                f"{name}: layer {layer.name!r} has weight shape "
                f"{list(layer.weight_shape)} in the metadata but "
                f"{'no weight' if shape is None else list(shape)} in the model"
            )
        expected.update({key: (shape, True) for key, shape in layer.tensor_shapes().items()})
    stored = header.tensors
    missing = sorted(expected.keys() - stored.keys())
    unexpected = sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        problems = [
            f"{label} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise BundleError(f"{name}: tensors do not match the model: {'; '.join(problems)}")
    for key, (shape, floating) in expected.items():
        entry = stored[key]
        if entry.shape != shape:
            raise BundleError(
                f"{name}: tensor {key!r} has shape {list(entry.shape)}, "
                f"the model needs {list(shape)}"
            )
        if (entry.dtype in FLOAT_DTYPES) != floating:
            kind = "floating-point" if floating else "integer or boolean"
            raise BundleError(
                f"{name}: tensor {key!r} has dtype {entry.dtype}; the model "
                f"needs a {kind} tensor there"
            )


def _check_adtn_network(file_name: str, layer: LayerRecord) -> None:
    """The network the record describes is the one this version builds for its Q, depth and
    layout: the same gate pairs, stored columns and activation slope, in the same order."""
    described = [(g.layer, g.pair, g.columns) for g in layer.gates]
    built = [
        (s.layer, tuple(s.pair), tuple(s.columns))
        for s in build_gate_specs(layer.Q, layer.depth, layer.layout)
    ]
    slope = LEAKY_RELU_SLOPE if layer.activation == "leaky_relu" else 0.0
    if described != built or layer.negative_slope != slope:
        raise BundleError(
            f"{file_name}: layer {layer.name!r} describes a network this version "
            "of ADTN Studio does not build (gate pairs, columns or activation "
            "slope differ)"
        )


def _check_factors(file_name: str, layer) -> None:
    """Factor layers were fully checked against their options when the metadata was parsed."""


# One check, rebuild and tensor mapping per encoding (metadata.ENCODINGS); adding an encoding
# adds an entry to each.
_LAYER_CHECKS = {ADTN_ENCODING: _check_adtn_network} | {
    name: _check_factors for name in FACTOR_ENCODINGS
}


# ------------------------------------------------------------------------------- building
def _compress_as_described(
    header: SafetensorsHeader, document: ExportMetadata, model: nn.Module
) -> None:
    from engine.compression import LayerSpec, compress
    from engine.encodings import get_encoding

    specs = [
        LayerSpec(
            layer.name, layer.depth, layer.activation, layer.layout, index_order=layer.index_order
        )
        if isinstance(layer, LayerRecord)
        # the "adtn" encoding
        else LayerSpec(
            layer.name,
            encoding=layer.encoding,
            **get_encoding(layer.encoding).spec_fields(layer.options),
        )
        for layer in document.layers
    ]
    try:
        compress(model, specs)
    except (ValueError, KeyError) as exc:
        raise BundleError(
            f"{header.path.name}: cannot compress the model as described: {exc}"
        ) from exc


def _adtn_state(layer: LayerRecord, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The module's state entries of one ADTN layer, taken by the tensor names the metadata
    lists (docs/FORMAT.md): gate ``i`` of the list is the ADTN's ``gates[i]``."""
    prefix = f"{layer.name}.adtn"
    state = {f"{prefix}.scale": tensors.pop(layer.scale)}
    for index, gate in enumerate(layer.gates):
        state[f"{prefix}.gates.{index}"] = tensors.pop(gate.tensor)
    return state


def _factor_state(layer, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A factor layer's state entries: each factor by its role, under the key the rebuilt
    layer's generator keeps that factor."""
    from engine.compression import LayerSpec
    from engine.encodings import FactorGenerator, get_encoding, plan_layer

    coder = get_encoding(layer.encoding)
    plan = plan_layer(
        LayerSpec(layer.name, encoding=layer.encoding, **coder.spec_fields(layer.options)),
        layer.weight_shape,
    )
    with torch.device("meta"):  # only the parameter names are needed: nothing allocated
        generator = coder.build(plan, 1.0)
    assert isinstance(generator, FactorGenerator)  # as every factor encoding's is
    keys = {id(p): key for key, p in generator.named_parameters()}
    prefix = f"{layer.name}.{layer.encoding}"
    roles = {role: keys[id(t)] for role, t in generator.named_factors().items()}
    return {f"{prefix}.{roles[f.role]}": tensors.pop(f.tensor) for f in layer.factors}


_LAYER_STATES = {ADTN_ENCODING: _adtn_state} | {name: _factor_state for name in FACTOR_ENCODINGS}


def _state_by_name(
    document: ExportMetadata, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The model's state dict: each compressed layer's tensors by the names its metadata
    lists, every other tensor under its own name."""
    tensors = dict(tensors)
    state: dict[str, torch.Tensor] = {}
    for layer in document.layers:
        state.update(_LAYER_STATES[layer.encoding](layer, tensors))
    state.update(tensors)
    return state
