"""Dense versus ADTN versions of FC-2 and LeNet-5 on the real MNIST.

Every linear layer becomes an ADTN of depth 1 to 4; each variant is trained by the same
``engine.trainer.train`` as the application, from the ``fc2-mnist`` and ``lenet5-mnist``
presets (only the layers and the command-line overrides change). Prints a markdown table and
writes it to ``--out`` (``.json`` for the rows as JSON, anything else for markdown).

    python benchmarks/mnist_compression.py --device cuda --out benchmarks/mnist.md
    python benchmarks/mnist_compression.py --epochs 1 --limit-train 2000 --only fc2-dense,fc2-d1

Issue targets: LeNet-5 with its three linear layers as ADTNs at least 98.5 % test accuracy
with those layers compressed at least 30x; FC-2 with both layers as ADTNs at least 95 % with
at most 5,000 parameters in the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adtn_studio.commands.train import ConsoleProgress  # noqa: E402
from engine.config import LayerSpec, RunConfig  # noqa: E402
from engine.presets import load_preset  # noqa: E402
from engine.trainer import train  # noqa: E402

MODELS = {"fc2": ("fc2-mnist", ("fc1", "fc2")), "lenet5": ("lenet5-mnist", ("fc1", "fc2", "fc3"))}
DEPTHS = (0, 1, 2, 3, 4)  # 0: the dense model
TITLES = {"fc2": "FC-2", "lenet5": "LeNet-5"}


@dataclass
class Variant:
    model: str
    depth: int

    @property
    def key(self) -> str:
        return f"{self.model}-{'dense' if self.depth == 0 else f'd{self.depth}'}"

    @property
    def label(self) -> str:
        return "dense" if self.depth == 0 else f"ADTN, depth {self.depth}"


def variant_config(variant: Variant, args: argparse.Namespace) -> RunConfig:
    preset, linear_layers = MODELS[variant.model]
    config = load_preset(preset)
    layers = (
        [LayerSpec(name, depth=variant.depth) for name in linear_layers] if variant.depth else []
    )
    changes = dict(
        name=f"bench-{variant.key}",
        layers=layers,
        data_root=str(args.data_root),
        download=False,
        device=args.device,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
    )
    if args.epochs:
        changes["epochs"] = args.epochs
    return config.replace(**changes).validate()


def run_variant(variant: Variant, args: argparse.Namespace, runs_root: Path) -> dict:
    config = variant_config(variant, args)
    summary = train(config, runs_root / variant.key, callbacks=[ConsoleProgress(config)])
    report = summary.compression
    linear = MODELS[variant.model][1]
    dense_layer_params = report["compressed_layers_dense_params"] if variant.depth else None
    return {
        "model": TITLES[variant.model],
        "variant": variant.label,
        "compressed_layers": ", ".join(linear) if variant.depth else "",
        "layer_params": report["compressed_layers_encoded_params"] if variant.depth else None,
        "layer_dense_params": dense_layer_params,
        "layer_ratio": report["compressed_layers_ratio"] if variant.depth else 1.0,
        "model_params": summary.params_total,
        "model_ratio": summary.compression_ratio,
        "best_test_acc": summary.best_test_acc,
        "seconds_per_epoch": summary.seconds_per_epoch,
        "epochs": summary.epochs_completed,
        "device": summary.device,
        "status": summary.status
        if not summary.error_message
        else f"{summary.status}: {summary.error_message}",
        "run_dir": summary.run_dir,
    }


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| model | variant | ADTN-layer params | model params | layer ratio | model ratio "
        "| best test acc | s/epoch | device |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        layer = (
            f"{r['layer_params']:,} (of {r['layer_dense_params']:,})"
            if r["layer_params"] is not None
            else "-"
        )
        lines.append(
            f"| {r['model']} | {r['variant']} | {layer} | {r['model_params']:,} | "
            f"{r['layer_ratio']:.1f}x | {r['model_ratio']:.1f}x | {r['best_test_acc']:.2%} | "
            f"{r['seconds_per_epoch']:.1f} | {r['device']} |"
        )
    return "\n".join(lines)


def target_notes(rows: list[dict]) -> list[str]:
    notes = []
    lenet = [r for r in rows if r["model"] == "LeNet-5" and r["layer_params"] is not None]
    if lenet:
        met = [
            r["variant"] for r in lenet if r["best_test_acc"] >= 0.985 and r["layer_ratio"] >= 30
        ]
        notes.append(
            "LeNet-5 target (>= 98.5 %, linear layers >= 30x): "
            + (f"met by {', '.join(met)}" if met else "not met")
        )
    fc2 = [r for r in rows if r["model"] == "FC-2" and r["layer_params"] is not None]
    if fc2:
        met = [
            r["variant"] for r in fc2 if r["best_test_acc"] >= 0.95 and r["model_params"] <= 5000
        ]
        notes.append(
            "FC-2 target (>= 95 %, <= 5,000 model params): "
            + (f"met by {', '.join(met)}" if met else "not met")
        )
    return notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root",
        type=Path,
        default=REPO.parent / "shared" / "datasets",
        help="folder containing MNIST/raw (default: ../shared/datasets)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--epochs", type=int, default=0, help="epochs (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated variants (fc2-dense, fc2-d1 ... lenet5-d4) or models (fc2, lenet5)",
    )
    parser.add_argument("--limit-train", type=int, default=0, help="training examples (0: all)")
    parser.add_argument("--limit-test", type=int, default=0, help="test examples (0: all)")
    parser.add_argument("--runs-dir", type=Path, help="keep the run folders here")
    parser.add_argument("--out", type=Path, help="write the table (.md) or the rows (.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [Variant(model, depth) for model in MODELS for depth in DEPTHS]
    if args.only:
        wanted = {item.strip() for item in args.only.split(",") if item.strip()}
        unknown = wanted - {v.key for v in variants} - set(MODELS)
        if unknown:
            sys.exit(
                f"unknown variant(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(v.key for v in variants)}"
            )
        variants = [v for v in variants if v.key in wanted or v.model in wanted]
    with tempfile.TemporaryDirectory(prefix="adtn-bench-") as scratch:
        runs_root = args.runs_dir or Path(scratch)
        rows = [run_variant(variant, args, runs_root) for variant in variants]
    table = markdown_table(rows)
    notes = target_notes(rows)
    print(table)
    for note in notes:
        print(note)
    failed = [r for r in rows if not r["status"].startswith("finished")]
    for row in failed:
        print(f"{row['model']} {row['variant']}: {row['status']}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps({"rows": rows, "notes": notes}, indent=2) + "\n")
        else:
            args.out.write_text(table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
