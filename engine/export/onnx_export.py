"""ONNX export of the dense model (opset 18, dynamic batch axis).

torch 2.9+ exports through ``torch.export`` and onnxscript (``dynamo=True``); the TorchScript
exporter is deprecated, so it is not used. Everything goes into one file (no external data):
the largest zoo model (VGG-16) is ~130 MB, well under protobuf's 2 GB limit.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from engine.export.errors import ExportError

OPSET_VERSION = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def write_onnx(dense_model: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Export ``dense_model`` (eval mode), traced on ``example`` (a batch of at least 2), to
    ``path``."""
    if example.shape[0] < 2:
        raise ValueError(
            "the example batch needs at least 2 samples: a batch of 1 would be "
            "specialised and the batch axis would not stay dynamic"
        )
    batch = torch.export.Dim("batch")
    # The exporter prints progress and warnings of its own; the export report says what matters.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                dense_model.eval(),
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET_VERSION,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; the user needs one message
            raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
