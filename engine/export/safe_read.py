"""Validate a safetensors file from its raw bytes before anything is allocated.

safetensors never unpickles, but it trusts the sizes a header declares. Every file a user opens
goes through ``read_header`` first: the header is parsed here with hard limits and checked
against the file's real size, so a truncated, edited or hostile file is refused with one clear
message before a single tensor is read.

Layout (see docs/FORMAT.md): 8 bytes little-endian unsigned header length N, N bytes of UTF-8
JSON, then the tensor data; each tensor's ``data_offsets`` are relative to the data start.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.export.errors import BundleError

MAX_HEADER_BYTES = 16 * 1024 * 1024  # a bundle's header is a few kB; this leaves room, not risk
MAX_TENSORS = 100_000
MAX_DIMS = 8

# Bytes per element of the dtypes a model file may hold; anything else is refused.
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# Leading bytes of files that must never be handed to a pickle-based loader.
_FOREIGN_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive (torch.save output?)"),
    (b"\x80", "a Python pickle"),
    (b"\x08", "a protobuf file (ONNX?)"),
)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it (offsets relative to the data start)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A header that has passed every check against the file it came from."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _fail(path: Path, reason: str) -> BundleError:
    return BundleError(f"{path.name}: {reason}")


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    # json.loads would silently keep the last of two equal keys: an edited file could hide one.
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in JSON object")
    return dict(pairs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(path: Path, name: str, raw: object) -> TensorEntry:
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise _fail(path, f"tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:  # a list is not even hashable
        raise _fail(path, f"tensor {name!r} has unsupported dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise _fail(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _fail(path, f"tensor {name!r} has invalid data offsets {offsets!r}")
    begin, end = offsets
    declared = math.prod(shape) * DTYPE_SIZES[dtype]
    if declared != end - begin:
        raise _fail(
            path,
            f"tensor {name!r}: shape {shape} of {dtype} needs {declared} bytes "
            f"but its byte range holds {end - begin}",
        )
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_layout(path: Path, tensors: dict[str, TensorEntry], data_size: int) -> None:
    """Byte ranges must tile the data section exactly: no gaps, overlaps or bytes past the end."""
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.end > data_size:
            raise _fail(
                path,
                f"file is truncated: tensor {name!r} ends at data byte "
                f"{entry.end}, the file holds {data_size}",
            )
        if entry.begin != position:
            raise _fail(path, f"tensor {name!r} starts at byte {entry.begin}, expected {position}")
        position = entry.end
    if position != data_size:
        raise _fail(path, f"{data_size - position} unexplained bytes after the last tensor")


def _sniff_foreign(path: Path, head: bytes) -> None:
    # A real safetensors header is shorter than 64 KiB in practice, so bytes 2..7 of its
    # length are zero: a damaged safetensors file whose length merely begins with 0x80 or
    # 0x08 is not taken for a pickle or protobuf (those carry data in those bytes).
    if len(head) == 8 and not any(head[2:]):
        return
    for signature, what in _FOREIGN_SIGNATURES:
        if head.startswith(signature):
            raise _fail(path, f"this is {what}, not a safetensors file; refusing to open it")


def open_regular_file(path: Path):
    """Open ``path`` for reading only if it is a regular file. A FIFO, device or socket named
    like a model file would block ``open`` (or never end); it is refused before opening, and
    the descriptor is checked again after (the name could be swapped in between)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise _fail(path, f"{kind}; refusing to open it")
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX: opening a FIFO must not wait
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | nonblocking)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _fail(path, "not a regular file; refusing to read it")
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file at ``path``; raise ``BundleError``."""
    path = Path(path)
    try:
        with open_regular_file(path) as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"file is too short ({file_size} bytes) to be a safetensors file")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_BYTES:
                _sniff_foreign(path, prefix)
                raise _fail(
                    path,
                    f"declared header size {header_size} bytes exceeds the limit of "
                    f"{MAX_HEADER_BYTES} (corrupted or not a safetensors file)",
                )
            if 8 + header_size > file_size:
                raise _fail(
                    path,
                    f"file is truncated: header needs {header_size} bytes, "
                    f"{file_size - 8} are present",
                )
            header_bytes = handle.read(header_size)
    except OSError as exc:
        raise _fail(path, f"cannot read file: {exc.strerror or exc}") from exc

    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        _sniff_foreign(path, prefix)
        raise _fail(path, f"header is not valid JSON ({exc}); the file is corrupted") from exc
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "header metadata must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise _fail(path, f"header declares {len(header)} tensors (limit {MAX_TENSORS})")

    tensors = {name: _parse_entry(path, name, raw) for name, raw in header.items()}
    data_start = 8 + header_size
    _check_layout(path, tensors, file_size - data_start)
    return SafetensorsHeader(
        path=path, tensors=tensors, metadata=metadata, data_start=data_start, file_size=file_size
    )


def read_data(header: SafetensorsHeader) -> bytes:
    """The data section of a file whose header passed ``read_header``, read in one go."""
    try:
        with open_regular_file(header.path) as handle:
            if os.fstat(handle.fileno()).st_size != header.file_size:
                raise _fail(header.path, "the file changed while it was being read")
            handle.seek(header.data_start)
            data = handle.read(header.file_size - header.data_start)
    except OSError as exc:
        raise _fail(header.path, f"cannot read file: {exc.strerror or exc}") from exc
    if len(data) != header.file_size - header.data_start:
        raise _fail(header.path, "the file changed while it was being read")
    return data


def tensors_from_data(header: SafetensorsHeader, data: bytes) -> dict[str, torch.Tensor]:
    """CPU tensors over ``data`` (little-endian, as the format stores them; never unpickles)."""
    tensors = {}
    for name, entry in header.tensors.items():
        dtype = TORCH_DTYPES[entry.dtype]
        if entry.end == entry.begin:
            tensors[name] = torch.empty(entry.shape, dtype=dtype)
            continue
        # A copy per tensor: its own aligned, writable memory, whatever the file's offsets.
        buffer = bytearray(data[entry.begin : entry.end])
        tensors[name] = torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
    return tensors


def data_sha256(header: SafetensorsHeader, data: bytes) -> str:
    """The checksum docs/FORMAT.md defines: SHA-256 of every tensor's bytes, tensors taken in
    sorted order of their names (independent of where the writer placed them)."""
    digest = hashlib.sha256()
    for name in sorted(header.tensors):
        entry = header.tensors[name]
        digest.update(data[entry.begin : entry.end])
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """``data_sha256`` of the file that stores ``tensors`` (contiguous CPU tensors)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_tensors(header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """Load the tensors of a file whose header passed ``read_header`` (CPU, never unpickles)."""
    return tensors_from_data(header, read_data(header))
