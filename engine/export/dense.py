"""The dense export: the materialised model's state dict as plain safetensors.

Its keys and shapes are those of the uncompressed zoo model, so ``model.load_state_dict(
safetensors.torch.load_file(path))`` works with no ADTN code at all. The header carries the same
metadata document as a bundle (format ``adtn-dense``) so that ``inspect`` can describe it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from engine.export.bundle import cpu_state_dict, read_checked
from engine.export.errors import BundleError
from engine.export.metadata import DENSE_FORMAT, METADATA_KEY, ExportMetadata, build_metadata
from engine.export.safe_read import FLOAT_DTYPES, tensors_from_data, tensors_sha256


def write_dense(
    model: nn.Module, dense_model: nn.Module, path: str | Path, config: Any = None
) -> ExportMetadata:
    """Write ``dense_model`` (``materialize(model)``) to ``path``; the metadata lists the
    layers of ``model`` that were compressed, with their ADTN structure."""
    tensors = cpu_state_dict(dense_model)
    document = build_metadata(model, config, DENSE_FORMAT, tensors_sha256(tensors))
    save_file(tensors, str(path), metadata={METADATA_KEY: document.to_json()})
    return document


def load_dense_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a dense export into the plain (uncompressed) ``model``, after checking the file
    (header, metadata, checksum) and that its tensors are the model's, dtypes included."""
    checked = read_checked(path, expected_format=DENSE_FORMAT)
    name = checked.header.path.name
    expected = model.state_dict()
    stored = checked.header.tensors
    if expected.keys() != stored.keys():
        missing = sorted(expected.keys() - stored.keys())[:5]
        unexpected = sorted(stored.keys() - expected.keys())[:5]
        raise BundleError(
            f"{name}: tensors do not match the model (missing {missing}, unexpected {unexpected})"
        )
    for key, tensor in expected.items():
        entry = stored[key]
        if (
            entry.shape != tuple(tensor.shape)
            or (entry.dtype in FLOAT_DTYPES) != tensor.is_floating_point()
        ):
            raise BundleError(
                f"{name}: tensor {key!r} is {entry.dtype} {list(entry.shape)}; "
                f"the model needs {list(tensor.shape)} of its kind of dtype"
            )
    model.load_state_dict(tensors_from_data(checked.header, checked.data), strict=True)
    return model.eval()
