"""Describe an exported file without building a model: what ``adtn-studio inspect`` prints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from engine.export.bundle import check_bundle, read_checked
from engine.export.errors import BundleError
from engine.export.metadata import BUNDLE_FORMAT, ExportMetadata


@dataclass(frozen=True)
class FileSummary:
    """``kind`` is ``adtn-bundle``, ``adtn-dense`` or ``onnx``; ``metadata`` is None for ONNX."""

    path: str
    kind: str
    size_bytes: int
    tensor_count: int
    stored_numbers: int  # elements of all stored tensors (parameters and buffers)
    metadata: ExportMetadata | None = None
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> number of tensors
    onnx: dict[str, object] = field(default_factory=dict)  # opset, inputs, outputs
    checksum: str = ""  # "verified", or "absent" (a file written before checksums existed)


def inspect_file(path: str | Path) -> FileSummary:
    """Summarise a bundle, a dense export or an ONNX export; raise ``BundleError`` if invalid.

    A bundle passes exactly the checks ``load_bundle`` makes before building the model, so a
    file ``inspect`` describes is one that loads."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _inspect_onnx(path)
    checked = read_checked(path)
    header, document = checked.header, checked.document
    if document.format == BUNDLE_FORMAT:
        check_bundle(checked)
    dtypes: dict[str, int] = {}
    for entry in header.tensors.values():
        dtypes[entry.dtype] = dtypes.get(entry.dtype, 0) + 1
    return FileSummary(
        path=str(path),
        kind=document.format,
        size_bytes=header.file_size,
        tensor_count=len(header.tensors),
        stored_numbers=sum(math.prod(entry.shape) for entry in header.tensors.values()),
        metadata=document,
        dtypes=dtypes,
        checksum="verified" if checked.checksum_verified else "absent",
    )


def _inspect_onnx(path: Path) -> FileSummary:
    import onnx  # protobuf only: parsing cannot run code

    from engine.export.safe_read import open_regular_file

    open_regular_file(path).close()  # a FIFO named *.onnx must not block the reader
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises protobuf DecodeError, ValidationError, OSError...
        raise BundleError(
            f"{path.name}: not a valid ONNX model ({type(exc).__name__}: {exc})"
        ) from exc

    def describe(values) -> list[str]:
        """``name[dim, ...]`` per graph input or output; symbolic dimensions by name."""
        described = []
        for value in values:
            dims = (d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim)
            described.append(f"{value.name}[{', '.join(dims)}]")
        return described

    initializers = model.graph.initializer
    return FileSummary(
        path=str(path),
        kind="onnx",
        size_bytes=path.stat().st_size,
        tensor_count=len(initializers),
        stored_numbers=sum(math.prod(t.dims) for t in initializers),
        onnx={
            "opset": max(
                (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
            ),
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "inputs": describe(model.graph.input),
            "outputs": describe(model.graph.output),
        },
    )
