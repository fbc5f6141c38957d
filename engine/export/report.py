"""What an export produced and how well its files agree with the trained model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportedFile:
    """One written file: its format (``adtn``, ``dense`` or ``onnx``), path and size on disk."""

    format: str
    path: str
    size_bytes: int
    max_abs_diff: float  # largest |output - reference output| on the verification batch


@dataclass
class ExportReport:
    """The outcome of ``export_run`` / ``export_model``; ``to_dict()`` is JSON serialisable."""

    source: str  # the run folder (or "" for an in-memory model)
    checkpoint: str | None
    model: str | None
    dataset: str | None
    files: list[ExportedFile] = field(default_factory=list)
    params_compressed: int = 0  # parameters of the compressed model (what training updates)
    params_dense: int = 0  # parameters of the same model with every layer dense
    dense_float32_bytes: int = 0  # 4 bytes for every element of the dense state dict
    batch_shape: tuple[int, ...] = ()
    batch_source: str = ""  # "test set" or "random" (no data set available)
    tolerance: float = 0.0
    dense_latency_ms: float = 0.0  # median CPU time of one forward pass over the batch
    latency_runs: int = 0  # timed passes the median is taken over

    @property
    def compression_ratio(self) -> float:
        return self.params_dense / self.params_compressed if self.params_compressed else 0.0

    @property
    def max_abs_diff(self) -> float:
        return max((f.max_abs_diff for f in self.files), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_shape"] = list(self.batch_shape)
        data.update(
            compression_ratio=self.compression_ratio,
            max_abs_diff=self.max_abs_diff,
            passed=self.passed,
        )
        return data
