"""``adtn-studio presets``: the built-in run configurations as a table."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list the built-in presets",
        description="List the built-in presets: model, data set, the layers encoded as ADTNs "
        "(name:depth), epochs and parameter counts.",
    )
    parser.set_defaults(func=run_presets)


def run_presets(args: argparse.Namespace) -> int:
    print(format_presets_table())
    return 0


def format_presets_table() -> str:
    import torch

    from engine.compression import plan_compression
    from engine.data import dataset_info
    from engine.models import build_model
    from engine.presets import list_presets, load_preset

    header = ("name", "model", "dataset", "ADTN layers", "epochs", "params", "dense params")
    rows = []
    for name in list_presets():
        config = load_preset(name)
        info = dataset_info(config.dataset)
        with torch.device("meta"):  # counts only: no memory, no initialisation
            model = build_model(config.model, info.in_channels, info.image_size, info.num_classes)
        report = plan_compression(model, config.layers)
        layers = " ".join(f"{spec.name}:{spec.depth}" for spec in config.layers) or "-"
        rows.append(
            (
                name,
                config.model,
                config.dataset,
                layers,
                str(config.total_epochs),
                f"{report.model_params_after:,}",
                f"{report.model_params_before:,}",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {4, 5, 6}  # numbers
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
