"""``adtn-studio layers``: the linear and convolutional layers of a model built for a data
set, with their shapes and what an ADTN of a given depth would hold instead."""

from __future__ import annotations

import argparse

from adtn_studio.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "layers",
        help="list a model's layers, their shapes and ADTN parameter counts",
        description="List every Linear and Conv2d layer of MODEL built for DATASET, by the "
        "dotted name that --encode patterns and configs use.",
    )
    parser.add_argument(
        "--model", metavar="MODEL", help="lenet5, ...; torchvision:NAME; or path/to/file.py:factory"
    )
    parser.add_argument(
        "--dataset",
        metavar="DATASET",
        default="mnist",
        help="mnist, cifar10, ..., or imagefolder:DIR (default: mnist)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        default=0,
        help="image folders: input size in pixels (default: the images' own)",
    )
    parser.add_argument(
        "--depth",
        type=int,
        metavar="N",
        default=1,
        help="ADTN depth the counts are given for (default 1)",
    )
    parser.add_argument(
        "--encode",
        metavar="PATTERNS",
        help="mark the layers these patterns select (e.g. 'fc,layer4.*')",
    )
    parser.add_argument(
        "--list-models",
        action="store_true",
        help="list the model names instead (zoo and torchvision)",
    )
    parser.set_defaults(func=run_layers)


def run_layers(args: argparse.Namespace) -> int:
    if args.list_models:
        print(format_model_list())
        return 0
    if not args.model:
        raise CommandError("name the model: --model MODEL (or --list-models)")
    from adtn_studio.commands.train import absolute_dataset, absolute_model, config_skeleton
    from engine.compression import describe_layers
    from engine.config import ConfigError, RunConfig
    from engine.limits import MAX_DEPTH

    if not 1 <= args.depth <= MAX_DEPTH:
        raise CommandError(f"--depth must be between 1 and {MAX_DEPTH} (got {args.depth})")
    try:
        config = RunConfig(
            model=absolute_model(args.model),
            dataset=absolute_dataset(args.dataset),
            image_size=args.image_size,
            dense_baseline=True,
        )
        config.validate()
    except (ConfigError, TypeError) as exc:
        raise CommandError(str(exc)) from None
    model = config_skeleton(config)
    infos = describe_layers(model)
    selected: list[str] = []
    if args.encode:
        from engine.layer_select import select_layer_names

        try:
            selected = select_layer_names(infos, args.encode)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    print(format_layers(model, infos, args.depth, selected, config))
    return 0


def format_layers(model, infos, depth: int, selected: list[str], config) -> str:
    """One row a layer, grouped by parent module; counts from the engine's planner."""
    from engine.compression import LayerSpec, plan_compression
    from engine.layer_select import group_by_parent

    encodable = [LayerSpec(name=info.name, depth=depth) for info in infos if info.encodable]
    rows = {row.name: row for row in plan_compression(model, encodable).rows}
    name_width = max([len("layer")] + [len(info.name) for info in infos]) + 2
    header = (
        f" {'layer':<{name_width}}{'kind':<8}{'weight shape':<22}{'Q':>3}"
        f"{'dense':>13}{f'ADTN d={depth}':>12}{'ratio':>10}"
    )
    lines = [
        f"{config.model} on {config.dataset}: {len(infos)} linear/convolutional layers",
        header,
        "-" * len(header),
    ]
    for parent, members in group_by_parent(infos):
        if parent and len(members) > 1:
            lines.append(f" [{parent}]")
        for info in members:
            mark = "*" if info.name in selected else " "
            shape = "×".join(str(d) for d in info.weight_shape)
            row = rows.get(info.name)
            if row is not None:
                encoded = getattr(row, "encoded_params", getattr(row, "adtn_params", 0))
                count, ratio = f"{encoded:,}", f"{row.ratio:,.0f}×"
            else:
                count, ratio = "-", (info.reason or "not encodable")[:24]
            lines.append(
                f"{mark}{info.name:<{name_width}}{info.kind:<8}{shape:<22}"
                f"{info.Q:>3}{info.dense_params:>13,}{count:>12}{ratio:>10}"
            )
    total = sum(info.dense_params for info in infos)
    lines.append(f"total in these layers: {total:,} parameters (weights and biases)")
    if selected:
        report = plan_compression(model, [LayerSpec(name=n, depth=depth) for n in selected])
        lines.append(
            f"* selected: {len(selected)} layer(s); the model would hold "
            f"{report.model_params_after:,} parameters instead of "
            f"{report.model_params_before:,} ({report.ratio:.1f}× smaller)"
        )
    return "\n".join(lines)


def format_model_list() -> str:
    from engine.model_sources import torchvision_names
    from engine.models import MODEL_NAMES, model_title

    zoo = ", ".join(f"{name} ({model_title(name)})" for name in MODEL_NAMES)
    names = torchvision_names()
    rows = [
        ", ".join(f"torchvision:{n}" for n in names[i : i + 4]) for i in range(0, len(names), 4)
    ]
    return (
        "built in: "
        + zoo
        + "\n\ntorchvision (image classifiers):\n  "
        + "\n  ".join(rows)
        + "\n\nyour own: path/to/file.py:factory (called with in_channels, image_size, "
        "num_classes when it takes them)"
    )
