"""Image folders as data sets: ``imagefolder:DIR`` with one sub-folder per class.

Two layouts: ``DIR/train/<class>/*`` with ``DIR/test/<class>/*`` (or ``val/``), or
``DIR/<class>/*`` split into train and test by a seeded fraction, per class. Images (PNG,
JPEG, BMP, GIF, WebP, TIFF, read with Pillow) are resized so that their shorter side is the
model's input size and centre-cropped to a square; grayscale or colour is detected from the
files. Sets that fit in memory are decoded once into a uint8 tensor (with progress); larger
ones are streamed from disk by DataLoader worker processes. Unreadable or truncated files are
skipped and counted, never fatal; structural problems (no classes, one class, an empty class,
test classes the training split lacks) raise ``ImageFolderError`` naming the folder.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.choices import IMAGEFOLDER_PREFIX as PREFIX
from engine.errors import ImageFolderError

if TYPE_CHECKING:
    from engine.data import FileImageSet, ImageSet

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TEST_FOLDERS = ("test", "val")
MAX_AUTO_SIZE = 224  # automatic input size: the images' shorter side, at most this
MODE_SAMPLE = 64  # images opened to tell grayscale from colour
STATS_SAMPLE = 2000  # streamed sets: images that mean and std are computed on
SKIPPED_NAMED = 3  # skipped files named in the log note
IN_MEMORY_LIMIT_BYTES = 2 << 30  # larger decoded sets are streamed from disk
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

LoadProgress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class FolderScan:
    """The files of an image folder, split into train and test, with their labels."""

    root: Path
    layout: str  # "train/test" or "split"
    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]
    test: tuple[tuple[Path, int], ...]
    channels: int  # 1 (grayscale) or 3 (colour)
    native_size: int  # shorter side of the first readable training image

    def image_size(self, requested: int = 0) -> int:
        return requested or min(self.native_size, MAX_AUTO_SIZE)


@dataclass
class LoadedFolder:
    """Both splits of a folder, decoded or ready to stream, and what loading found."""

    train: ImageSet | FileImageSet
    test: ImageSet | FileImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: list[str] = field(default_factory=list)


def folder_of(spec: str) -> Path:
    """The folder of ``imagefolder:DIR`` (``ValueError`` when the spec has no folder)."""
    if not spec.startswith(PREFIX) or not spec[len(PREFIX) :].strip():
        raise ImageFolderError(f"an image folder data set is 'imagefolder:DIR' (got {spec!r})")
    return Path(spec[len(PREFIX) :]).expanduser()


# -- scanning -----------------------------------------------------------------------------


def scan(root: str | Path, test_fraction: float = 0.2, seed: int = 0) -> FolderScan:
    """Find classes and files, split them, detect channels and size (reads only headers)."""
    root = Path(root).expanduser()
    try:
        stamp = tuple(os.stat(p).st_mtime_ns for p in _stamp_paths(root))
    except OSError:
        stamp = ()
    return _scan_cached(
        str(root.resolve() if root.exists() else root), float(test_fraction), int(seed), stamp
    )


def _stamp_paths(root: Path) -> list[Path]:
    """The folders whose modification times change when images or classes are added or
    removed: the root, its splits and their class folders (a rescan is needed then)."""
    paths = [root]
    splits = [root / name for name in ("train", *TEST_FOLDERS) if (root / name).is_dir()]
    for folder in splits or [root]:
        if folder is not root:
            paths.append(folder)
        paths += [child for child in folder.iterdir() if child.is_dir()]
    return paths


@functools.lru_cache(maxsize=8)
def _scan_cached(root_text: str, test_fraction: float, seed: int, _stamp: tuple) -> FolderScan:
    root = Path(root_text)
    if not root.is_dir():
        raise ImageFolderError(f"image folder not found: {root}")
    train_dir = root / "train"
    test_dir = next((root / n for n in TEST_FOLDERS if (root / n).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        classes = _class_folders(train_dir)
        train = _files_of(train_dir, classes, require_each=True)
        test_classes = _class_folders(test_dir, allow_none=True)
        unknown = [name for name in test_classes if name not in classes]
        if unknown:
            raise ImageFolderError(
                f"{test_dir / unknown[0]}: class {unknown[0]!r} is in the {test_dir.name} "
                f"split but not in {train_dir}; every test class needs training images"
            )
        test = _files_of(test_dir, classes, require_each=False)
        if not test:
            raise ImageFolderError(f"{test_dir} holds no images")
        layout = "train/test"
    elif train_dir.is_dir():
        raise ImageFolderError(
            f"{root} has a train/ folder but no test/ or val/ folder; add "
            "one, or put the class folders directly in the folder"
        )
    else:
        if not 0.0 < test_fraction < 1.0:
            raise ImageFolderError(f"test_fraction must be between 0 and 1 (got {test_fraction})")
        classes = _class_folders(root)
        every = _files_of(root, classes, require_each=True)
        train, test = _split(every, len(classes), test_fraction, seed, root)
        layout = "split"
    channels, native = _detect_format(root, train)
    return FolderScan(root, layout, tuple(classes), tuple(train), tuple(test), channels, native)


def _class_folders(folder: Path, allow_none: bool = False) -> list[str]:
    names = sorted(
        child.name
        for child in folder.iterdir()
        if child.is_dir() and not child.name.startswith(".")
    )
    if allow_none:
        return names
    if not names:
        has_images = any(p.suffix.lower() in SUFFIXES for p in folder.iterdir())
        what = (
            "holds images but no class folders (put each class's images in a folder "
            "named after the class)"
            if has_images
            else "is empty"
        )
        raise ImageFolderError(f"{folder} {what}")
    if len(names) == 1:
        raise ImageFolderError(
            f"{folder} holds only one class ({names[0]!r}); a classifier "
            "needs at least two class folders"
        )
    return names


def _files_of(folder: Path, classes: list[str], require_each: bool) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        found = (
            sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
            if class_dir.is_dir()
            else []
        )
        if require_each and not found:
            raise ImageFolderError(
                f"{class_dir} holds no images (PNG, JPEG, BMP, GIF, WebP "
                "or TIFF); add some or remove the folder"
            )
        files += [(path, label) for path in found]
    return files


def _split(
    files: list[tuple[Path, int]], num_classes: int, fraction: float, seed: int, root: Path
) -> tuple[list, list]:
    """Per class, a seeded ``fraction`` of the files (at least one) goes to the test split."""
    rng = random.Random(seed)
    train, test = [], []
    for label in range(num_classes):
        members = [item for item in files if item[1] == label]
        if len(members) < 2:
            raise ImageFolderError(
                f"{members[0][0].parent} holds one image; splitting into "
                "train and test needs at least two a class"
            )
        rng.shuffle(members)
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        test += members[:count]
        train += members[count:]
    return sorted(train), sorted(test)


def _detect_format(root: Path, train: list[tuple[Path, int]]) -> tuple[int, int]:
    """(channels, shorter side of the first readable image) from a sample of headers."""
    from PIL import Image

    step = max(1, len(train) // MODE_SAMPLE)
    colour, native = False, 0
    for path, _ in train[::step][:MODE_SAMPLE]:
        try:
            with Image.open(path) as image:
                colour = colour or image.mode not in GRAY_MODES
                native = native or min(image.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not native:
        raise ImageFolderError(f"none of the sampled images in {root} can be read")
    return (3 if colour else 1), native


# -- decoding -----------------------------------------------------------------------------


def decode(path: Path, channels: int, size: int) -> np.ndarray:
    """One image as a ``channels × size × size`` uint8 array: shorter side resized to
    ``size``, centre-cropped. Raises ``OSError``/``ValueError`` for a bad file."""
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()  # a truncated file fails here, not later
        image = opened.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = size / min(width, height)
    if scale != 1.0:
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BILINEAR)
        width, height = new
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _decode_or_none(path: Path, channels: int, size: int) -> np.ndarray | None:
    from PIL import Image

    try:
        return decode(path, channels, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


# -- loading ------------------------------------------------------------------------------


def load(
    scan_result: FolderScan,
    image_size: int,
    limit_train: int = 0,
    limit_test: int = 0,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    workers: int = 0,
    progress: LoadProgress | None = None,
    memory_limit: int | None = None,
) -> LoadedFolder:
    """Both splits (capped by the limits), in memory when they fit, else streamed."""
    from engine.data import FileImageSet

    size = scan_result.image_size(image_size)
    train_files = _head(scan_result.train, limit_train, seed=1)
    test_files = _head(scan_result.test, limit_test, seed=2)
    bytes_needed = (len(train_files) + len(test_files)) * scan_result.channels * size * size
    limit = IN_MEMORY_LIMIT_BYTES if memory_limit is None else memory_limit
    notes = [
        f"image folder {scan_result.root} ({scan_result.layout}): "
        f"{len(scan_result.classes)} classes, {len(train_files)} training and "
        f"{len(test_files)} test images, "
        f"{'grayscale' if scan_result.channels == 1 else 'colour'}, {size}×{size} pixels"
    ]
    if bytes_needed <= limit:
        total = len(train_files) + len(test_files)
        counter = _Counter(progress, total)
        train, skipped_train = _decode_all(train_files, scan_result.channels, size, counter)
        test, skipped_test = _decode_all(test_files, scan_result.channels, size, counter)
        skipped = skipped_train + skipped_test
        _check_left(train, scan_result, "training")
        _check_left(test, scan_result, "test")
        stats_images = train.images
    else:
        workers = workers or min(4, os.cpu_count() or 1)
        notes.append(
            f"the decoded images would need {bytes_needed / 2**30:.1f} GiB, more than "
            f"{limit / 2**30:.1f} GiB: streamed from disk by {workers} worker "
            "process(es)"
        )
        train = FileImageSet(train_files, scan_result.channels, size, workers)
        test = FileImageSet(test_files, scan_result.channels, size, workers)
        skipped = []
        stats_images = None
    if skipped:
        named = ", ".join(str(p) for p in skipped[:SKIPPED_NAMED])
        more = f" and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
        notes.append(f"skipped {len(skipped)} unreadable image file(s): {named}{more}")
    if not mean or not std:
        if stats_images is None:
            stats_images = _sample_images(train_files, scan_result.channels, size)
        mean, std = channel_stats(stats_images)
        notes.append(
            "normalised with the training split's mean "
            f"{_fmt(mean)} and standard deviation {_fmt(std)}"
        )
    return LoadedFolder(train, test, tuple(mean), tuple(std), notes)


def _head(files: tuple[tuple[Path, int], ...], limit: int, seed: int) -> list:
    """All files, or ``limit`` of them drawn with a fixed seed (classes stay mixed)."""
    if limit <= 0 or limit >= len(files):
        return list(files)
    chosen = random.Random(seed).sample(range(len(files)), limit)
    return [files[i] for i in sorted(chosen)]


class _Counter:
    def __init__(self, progress: LoadProgress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.every = max(1, total // 200)

    def step(self) -> None:
        self.done += 1
        if self.progress and (self.done % self.every == 0 or self.done == self.total):
            self.progress(self.done, self.total)


def _decode_all(files: list, channels: int, size: int, counter: _Counter):
    from engine.data import ImageSet

    images = np.empty((len(files), channels, size, size), dtype=np.uint8)
    labels, skipped, kept = [], [], 0
    for path, label in files:
        array = _decode_or_none(path, channels, size)
        counter.step()
        if array is None:
            skipped.append(path)
            continue
        images[kept] = array
        labels.append(label)
        kept += 1
    return (
        ImageSet(torch.from_numpy(images[:kept]), torch.tensor(labels, dtype=torch.long)),
        skipped,
    )


def _check_left(data, scan_result: FolderScan, split: str) -> None:
    if len(data) == 0:
        raise ImageFolderError(f"no image of the {split} split in {scan_result.root} could be read")
    if split == "training":
        present = set(data.labels.tolist())
        lost = [scan_result.classes[i] for i in range(len(scan_result.classes)) if i not in present]
        if lost:
            raise ImageFolderError(
                f"no image of class {lost[0]!r} in {scan_result.root} "
                "could be read; the class cannot be learnt"
            )


def _sample_images(files: list, channels: int, size: int) -> torch.Tensor:
    step = max(1, len(files) // STATS_SAMPLE)
    arrays = [
        a for a in (_decode_or_none(p, channels, size) for p, _ in files[::step]) if a is not None
    ]
    if not arrays:
        raise ImageFolderError("none of the sampled training images can be read")
    return torch.from_numpy(np.stack(arrays))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation of N×C×H×W uint8 images, in [0, 1] units."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float64).div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


# -- streaming ----------------------------------------------------------------------------


class FileDataset(torch.utils.data.Dataset):
    """Decodes one file per item in a worker; a bad file gives label -1 (dropped later)."""

    def __init__(self, files: list, channels: int, size: int) -> None:
        self.files, self.channels, self.size = files, channels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path, label = self.files[index]
        array = _decode_or_none(path, self.channels, self.size)
        if array is None:
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), -1
        return torch.from_numpy(array.copy()), label
