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

from engine.export.bundle import cpu_state_dict
from engine.export.metadata import DENSE_FORMAT, METADATA_KEY, ExportMetadata, build_metadata
from engine.export.safe_read import read_header, read_tensors


def write_dense(
    model: nn.Module, dense_model: nn.Module, path: str | Path, config: Any = None
) -> ExportMetadata:
    """Write ``dense_model`` (``materialize(model)``) to ``path``; the metadata lists the
    layers of ``model`` that were compressed, with their ADTN structure."""
    document = build_metadata(model, config, DENSE_FORMAT)
    save_file(cpu_state_dict(dense_model), str(path), metadata={METADATA_KEY: document.to_json()})
    return document


def load_dense_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a dense export into the plain (uncompressed) ``model``, after checking the file."""
    model.load_state_dict(read_tensors(read_header(path)), strict=True)
    return model.eval()
