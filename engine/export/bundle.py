"""The ``.adtn`` bundle: a compressed model in one safetensors file (docs/FORMAT.md).

Writing stores the model's state dict as it is (local tensors and scale of each compressed
layer, ordinary tensors of the others) plus the metadata document. Loading checks the file's
bytes, then the document, then the shapes of the model it describes (built on the meta device,
so nothing is allocated), and only then builds the model and loads the tensors strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from engine.adtn import ADTN
from engine.export.atomic import StagedFiles
from engine.export.errors import BundleError
from engine.export.metadata import (
    BUNDLE_FORMAT,
    METADATA_KEY,
    ExportMetadata,
    LayerRecord,
    build_metadata,
    compressed_layers,
    parse_metadata,
)
from engine.export.safe_read import SafetensorsHeader, read_header, read_tensors


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors that own their memory (what safetensors needs)."""
    return {
        key: value.detach().cpu().contiguous().clone()
        for key, value in model.state_dict().items()
    }


def write_bundle(model: nn.Module, path: str | Path, config: Any = None) -> ExportMetadata:
    """Write the bundle of compressed ``model`` to exactly ``path`` (not atomic: see
    ``save_bundle``)."""
    document = build_metadata(model, config, BUNDLE_FORMAT)
    save_file(cpu_state_dict(model), str(path), metadata={METADATA_KEY: document.to_json()})
    return document


def save_bundle(model: nn.Module, path: str | Path, config: Any = None) -> ExportMetadata:
    """Save compressed ``model`` (trained with run configuration ``config``) as an ``.adtn``
    bundle, atomically. Without ``config`` the bundle can only be loaded with ``model=``."""
    with StagedFiles() as staged:
        document = write_bundle(model, staged.path_for(path), config)
        staged.commit()
    return document


def read_bundle_metadata(path: str | Path) -> ExportMetadata:
    """The checked metadata document of the bundle at ``path`` (no tensor is read)."""
    return parse_metadata(read_header(path), expected_format=BUNDLE_FORMAT)


def load_bundle(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load an ``.adtn`` bundle as a compressed model in eval mode, ready to evaluate or train.

    Args:
        path: the bundle.
        model: the dense architecture to compress and fill, for bundles of models outside the
            zoo (their metadata names no model). By default the zoo model the bundle names.

    Raises:
        BundleError: the file is not a valid bundle; the message says what is wrong.
    """
    header = read_header(path)
    document = parse_metadata(header, expected_format=BUNDLE_FORMAT)
    if model is None:
        model = _build_zoo_model(header, document)
    else:
        _check_architecture(header, document, model)
    _compress_as_described(header, document, model)
    try:
        model.load_state_dict(read_tensors(header), strict=True)
    except RuntimeError as exc:  # PyTorch's message spans lines; a user gets one
        reason = " ".join(str(exc).split())
        raise BundleError(f"{header.path.name}: tensors do not fit the model: {reason}") from exc
    return model.eval()


def _build_zoo_model(header: SafetensorsHeader, document: ExportMetadata) -> nn.Module:
    from engine.models import build_model

    if document.model is None:
        raise BundleError(f"{header.path.name}: the bundle names no zoo model; "
                          "load it with load_bundle(path, model=<the dense architecture>)")
    spec = document.model
    arguments = (spec.name, spec.in_channels, spec.image_size, spec.num_classes)
    try:
        # On the meta device first: a hostile header cannot make us allocate what it declares.
        with torch.device("meta"):
            skeleton = build_model(*arguments)
    except ValueError as exc:
        raise BundleError(
            f"{header.path.name}: metadata describes no buildable model: {exc}"
        ) from exc
    _check_architecture(header, document, skeleton)
    return build_model(*arguments)


def _check_architecture(
    header: SafetensorsHeader, document: ExportMetadata, dense: nn.Module
) -> None:
    """The dense model's tensors are exactly the file's, compressed weights replaced by ADTNs."""
    name = header.path.name
    expected = {key: tuple(value.shape) for key, value in dense.state_dict().items()}
    for layer in document.layers:
        shape = expected.pop(layer.weight_key, None)
        if shape != layer.weight_shape:
            raise BundleError(f"{name}: layer {layer.name!r} has weight shape "
                              f"{list(layer.weight_shape)} in the metadata but "
                              f"{'no weight' if shape is None else list(shape)} in the model")
        expected.update({layer.scale: ()} | {g.tensor: (4, len(g.columns)) for g in layer.gates})
    stored = {key: entry.shape for key, entry in header.tensors.items()}
    missing = sorted(expected.keys() - stored.keys())
    unexpected = sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        problems = [f"{label} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise BundleError(f"{name}: tensors do not match the model: {'; '.join(problems)}")
    for key, shape in expected.items():
        if stored[key] != shape:
            raise BundleError(f"{name}: tensor {key!r} has shape {list(stored[key])}, "
                              f"the model needs {list(shape)}")


def _compress_as_described(
    header: SafetensorsHeader, document: ExportMetadata, model: nn.Module
) -> None:
    from engine.compression import LayerSpec, compress

    name = header.path.name
    specs = [LayerSpec(layer.name, layer.depth, layer.activation, layer.layout)
             for layer in document.layers]
    try:
        compress(model, specs)
    except (ValueError, KeyError) as exc:
        raise BundleError(f"{name}: cannot compress the model as described: {exc}") from exc
    built = dict(compressed_layers(model))
    for layer in document.layers:
        _check_same_network(name, layer, built[layer.name])


def _check_same_network(file_name: str, layer: LayerRecord, adtn: ADTN) -> None:
    """The rebuilt ADTN contracts exactly as the file describes (pairs, columns, slope)."""
    described = [(g.layer, g.pair, g.columns) for g in layer.gates]
    built = [(s.layer, tuple(s.pair), tuple(s.columns)) for s in adtn.gate_specs()]
    if described != built or layer.negative_slope != adtn.negative_slope:
        raise BundleError(f"{file_name}: layer {layer.name!r} describes a network this version "
                          "of ADTN Studio does not build (gate pairs, columns or activation "
                          "slope differ)")
