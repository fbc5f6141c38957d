"""Write part of the real MNIST as PNG files in an image-folder layout, for
``imagefolder:DIR`` runs: ``OUT/train/<digit>/*.png`` and ``OUT/test/<digit>/*.png``.

    python benchmarks/make_mnist_imagefolder.py --out /tmp/mnist-folder --train-per-class 300 \
        --test-per-class 50

The first N images of each digit (in file order) are written, so the folder is the same every
time. Reads ``../shared/datasets/MNIST/raw`` (or ``--mnist``); keep the output outside the
repository.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "datasets" / "MNIST" / "raw"


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format: magic, dimensions, then unsigned bytes) as an array."""
    data = path.read_bytes()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_split(images: np.ndarray, labels: np.ndarray, per_class: int, folder: Path) -> int:
    written = 0
    for digit in range(10):
        target = folder / str(digit)
        target.mkdir(parents=True, exist_ok=True)
        for _rank, index in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            Image.fromarray(images[index], "L").save(target / f"{index:05d}.png")
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST/raw folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mnist-folder"))
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=50)
    args = parser.parse_args(argv)
    if args.out.resolve().is_relative_to(REPO):
        parser.error("write the images outside the repository")
    if not (args.mnist / "train-images-idx3-ubyte").is_file():
        parser.error(f"MNIST not found in {args.mnist}")
    counts = {}
    for split, prefix, per_class in (
        ("train", "train", args.train_per_class),
        ("test", "t10k", args.test_per_class),
    ):
        images = read_idx(args.mnist / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(args.mnist / f"{prefix}-labels-idx1-ubyte")
        counts[split] = write_split(images, labels, per_class, args.out / split)
    print(
        f"{args.out}: {counts['train']} training and {counts['test']} test PNG images, 10 classes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
