"""Measurements behind the export report: output agreement and CPU latency."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

TOLERANCE = 1e-4  # largest absolute output difference an export may show
LATENCY_RUNS = 7


@torch.inference_mode()
def model_outputs(model: nn.Module, batch: torch.Tensor) -> np.ndarray:
    return model.eval()(batch).float().numpy()


def onnx_outputs(path: str | Path, batch: torch.Tensor) -> np.ndarray:
    """Run an ONNX file with onnxruntime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: a user does not need graph-optimiser notes
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    (input_meta,) = session.get_inputs()
    return session.run(None, {input_meta.name: batch.numpy()})[0]


def max_abs_diff(reference: np.ndarray, other: np.ndarray) -> float:
    if reference.shape != other.shape:
        return float("inf")
    return float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64))))


@torch.inference_mode()
def median_latency_ms(model: nn.Module, batch: torch.Tensor, repeats: int = LATENCY_RUNS) -> float:
    """Median wall time of one forward pass over ``batch`` on the CPU, after one warm-up."""
    model = model.eval()
    model(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
