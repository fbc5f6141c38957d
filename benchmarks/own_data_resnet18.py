"""torchvision's ResNet-18 on an image folder: dense against ADTN-compressed.

The folder comes from ``benchmarks/make_mnist_imagefolder.py`` (part of the real MNIST as
PNG files). Both variants are trained by the same ``engine.trainer.train`` as the
application, from the same seed; the compressed one encodes ``--encode`` (default: the
classifier and every layer of ``layer4``) as ADTNs of ``--depth``. Prints a markdown table.

    python benchmarks/make_mnist_imagefolder.py --out /tmp/mnist-folder
    python benchmarks/own_data_resnet18.py --folder /tmp/mnist-folder --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adtn_studio.commands.train import ConsoleProgress, encode_layers  # noqa: E402
from engine.config import RunConfig  # noqa: E402
from engine.trainer import train  # noqa: E402


def run_variant(config: RunConfig, out: Path) -> dict:
    summary = train(config, out / config.name, callbacks=[ConsoleProgress(config)])
    if summary.status != "finished":
        raise SystemExit(f"{config.name}: {summary.status}: {summary.error_message}")
    report = summary.compression
    return {
        "variant": config.name,
        "params": summary.params_total,
        "dense_params": summary.dense_params_total,
        "ratio": summary.compression_ratio,
        "encoded": report.get("compressed_layers_encoded_params", 0),
        "encoded_dense": report.get("compressed_layers_dense_params", 0),
        "best": summary.best_test_acc,
        "last": summary.test_acc,
        "seconds_per_epoch": summary.seconds_per_epoch,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/mnist-folder"))
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--encode", default="fc,layer4.*")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, help="run folders (default: a temporary folder)")
    parser.add_argument("--variants", default="dense,adtn", help="dense, adtn or both")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = RunConfig(
        model=args.model,
        dataset=f"imagefolder:{args.folder.resolve()}",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        augment=False,
        seed=0,
    )
    dense = base.replace(name="dense", dense_baseline=True)
    compressed = base.replace(
        name=f"adtn-d{args.depth}", layers=encode_layers(base, args.encode, args.depth)
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="own-data-"))
    chosen = {"dense": dense, "adtn": compressed}
    wanted = [name.strip() for name in args.variants.split(",")]
    unknown = [name for name in wanted if name not in chosen]
    if unknown:
        parser.error(f"--variants: unknown {unknown[0]!r} (dense, adtn)")
    rows = [run_variant(chosen[name], out) for name in wanted]
    print(
        f"\n{args.model} on {args.folder} ({args.epochs} epochs, batch {args.batch_size}, "
        f"{args.device}); encoded: {args.encode} at depth {args.depth}\n"
    )
    print(
        "| variant | model parameters | encoded layers: dense → ADTN | smaller by "
        "| best test accuracy | last | s/epoch |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        layers = f"{row['encoded_dense']:,} → {row['encoded']:,}" if row["encoded"] else "–"
        print(
            f"| {row['variant']} | {row['params']:,} | {layers} | {row['ratio']:.2f}× | "
            f"{row['best']:.2%} | {row['last']:.2%} | {row['seconds_per_epoch']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
