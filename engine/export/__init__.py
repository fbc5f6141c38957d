"""Export of compressed models: the ``.adtn`` bundle, dense safetensors and ONNX, verified.

docs/FORMAT.md specifies the files. Every file a user opens is validated byte by byte before
it is read (``safe_read``) and nothing is ever unpickled.
"""

from engine.export.bundle import load_bundle, read_bundle_metadata, save_bundle
from engine.export.errors import BundleError, ExportError
from engine.export.inspect_file import FileSummary, inspect_file
from engine.export.metadata import ExportMetadata, GateRecord, LayerRecord, ModelRecord
from engine.export.report import ExportedFile, ExportReport
from engine.export.run_export import FORMATS, export_model, export_run

__all__ = [
    "FORMATS",
    "BundleError",
    "ExportError",
    "ExportMetadata",
    "ExportReport",
    "ExportedFile",
    "FileSummary",
    "GateRecord",
    "LayerRecord",
    "ModelRecord",
    "export_model",
    "export_run",
    "inspect_file",
    "load_bundle",
    "read_bundle_metadata",
    "save_bundle",
]
