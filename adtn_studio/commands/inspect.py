"""``adtn-studio inspect``: describe an exported file (.adtn bundle, dense safetensors, ONNX)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from adtn_studio.cli import CommandError
from engine.units import format_bytes

KIND_TITLES = {
    "adtn-bundle": "ADTN bundle",
    "adtn-dense": "dense export (safetensors)",
    "onnx": "ONNX model",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show the metadata and layers of an exported file",
        description="Print what an exported file holds: for an .adtn bundle its metadata and "
        "a table of the compressed layers; for a dense safetensors or ONNX export a summary. "
        "The file is checked first and never unpickled.",
    )
    parser.add_argument("file", metavar="FILE", help="an .adtn, .safetensors or .onnx file")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.export import BundleError, inspect_file

    try:
        summary = inspect_file(args.file)
    except (BundleError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
    else:
        print(format_summary(summary))
    return 0


def format_summary(summary) -> str:
    lines = [f"{summary.path}: {KIND_TITLES[summary.kind]}, {format_bytes(summary.size_bytes)}"]
    dtypes = ", ".join(f"{dtype} {count}" for dtype, count in sorted(summary.dtypes.items()))
    lines.append(
        f"tensors: {summary.tensor_count}{f' ({dtypes})' if dtypes else ''}, "
        f"{summary.stored_numbers:,} numbers stored"
    )
    if summary.kind == "onnx":
        info = summary.onnx
        lines += [
            f"opset: {info['opset']}; producer: {info['producer']}",
            f"inputs: {', '.join(info['inputs'])}",
            f"outputs: {', '.join(info['outputs'])}",
        ]
        return "\n".join(lines)

    meta = summary.metadata
    lines.append(f"format: {meta.format} version {meta.format_version}, written by {meta.producer}")
    lines.append(
        "tensor data: checksum verified"
        if summary.checksum == "verified"
        else "tensor data: no checksum (written before ADTN Studio stored one; not verified)"
    )
    if meta.model is not None:
        model = meta.model
        lines.append(
            f"model: {model.name} for {model.in_channels}×{model.image_size}×"
            f"{model.image_size} inputs, {model.num_classes} classes; "
            f"data set: {meta.dataset}"
        )
    if meta.layers:
        lines.append(
            "encoded layers"
            + (" (materialised in this file):" if meta.format == "adtn-dense" else ":")
        )
        lines += layer_table(meta.layers)
    else:
        lines.append("encoded layers: none")
    if meta.config is not None:
        lines.append("run configuration:")
        lines += [f"  {key} = {_short(value)}" for key, value in meta.config.items()]
    return "\n".join(lines)


def layer_table(layers) -> list[str]:
    header = ("layer", "encoding", "weight shape", "params", "dense", "ratio", "options")
    rows = []
    for layer in layers:
        params = layer.params
        dense = math.prod(layer.weight_shape)
        rows.append(
            (
                layer.name,
                layer.encoding,
                "×".join(map(str, layer.weight_shape)),
                f"{params:,}",
                f"{dense:,}",
                f"{dense / params:,.1f}x",
                layer.detail,
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.ljust(w) if i in (0, 1, 2, 6) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (header, *rows)
    ]


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 100 else text[:97] + "..."
