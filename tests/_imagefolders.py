"""Writing small image folders of PNG files for the tests (learnable: each class has its
own brightness pattern)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def class_image(rng: np.random.Generator, label: int, size: tuple[int, int], mode: str):
    height, width = size
    base = np.zeros((height, width), dtype=np.float64)
    base[:, : width * (label + 1) // 4] = 160.0  # a class-dependent bright band
    noise = rng.normal(0, 25, (height, width))
    gray = np.clip(base + noise + 40, 0, 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(gray, "L")
    colour = np.stack([gray, np.roll(gray, 3, axis=1), 255 - gray], axis=-1)
    return Image.fromarray(colour, "RGB")


def write_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 8,
    mode: str = "L",
    size: tuple[int, int] = (30, 34),
    layout: str = "train/test",
    test_per_class: int = 3,
    seed: int = 0,
) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` (layout "train/test"),
    or ``root/<class>/*.png`` (layout "split")."""
    rng = np.random.default_rng(seed)
    splits = (
        {"train": per_class, "test": test_per_class} if layout == "train/test" else {"": per_class}
    )
    for split, count in splits.items():
        for label in range(classes):
            folder = root / split / f"class_{label}" if split else root / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                class_image(rng, label, size, mode).save(folder / f"img{index:03d}.png")
    return root
