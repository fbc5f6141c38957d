"""Data sets as in-memory uint8 tensors, and a batch iterator that normalises and augments on
the training device.

Each set is loaded once; per-batch work is a gather, a cast and (for CIFAR) a batched random
crop and flip — no per-sample PIL transforms, which would dominate a small CPU. Shuffling and
augmentation draw from generators seeded by (seed, epoch), so a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.choices import DATASET_NAMES, DATASET_TITLES, IMAGEFOLDER_PREFIX
from engine.errors import ConfigError, DataUnavailableError
from engine.paths import default_data_root

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.data_files import DataFiles, ProgressCallback

MNIST_LIKE = ("mnist", "fashionmnist", "kmnist")  # idx files, read alike
SYNTHETIC_SIZES = (2000, 500)  # default (train, test) examples of the generated set
CROP_PADDING = 4


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set, and how to normalise it."""

    name: str
    title: str
    in_channels: int
    image_size: int
    num_classes: int
    train_size: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentable: bool  # whether config.augment applies (crop + flip suit natural images)
    classes: tuple[str, ...] = ()  # class names, when the data set has them (image folders)


_INFOS = {
    "mnist": DatasetInfo(
        "mnist", DATASET_TITLES["mnist"], 1, 28, 10, 60000, 10000, (0.1307,), (0.3081,), False
    ),
    "fashionmnist": DatasetInfo(
        "fashionmnist",
        DATASET_TITLES["fashionmnist"],
        1,
        28,
        10,
        60000,
        10000,
        (0.2860,),
        (0.3530,),
        False,
    ),
    "kmnist": DatasetInfo(
        "kmnist", DATASET_TITLES["kmnist"], 1, 28, 10, 60000, 10000, (0.1918,), (0.3483,), False
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        DATASET_TITLES["cifar10"],
        3,
        32,
        10,
        50000,
        10000,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        True,
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        DATASET_TITLES["cifar100"],
        3,
        32,
        100,
        50000,
        10000,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        True,
    ),
    "synthetic": DatasetInfo(
        "synthetic",
        DATASET_TITLES["synthetic"],
        1,
        28,
        10,
        *SYNTHETIC_SIZES,
        (0.5,),
        (0.25,),
        False,
    ),
}


def dataset_info(
    name: str, image_size: int = 0, test_fraction: float = 0.2, seed: int = 0
) -> DatasetInfo:
    """Shape, class count, size and normalisation of data set ``name``.

    For ``imagefolder:DIR`` the folder is scanned (file names and a few image headers):
    ``image_size`` 0 means the images' own size (at most 224), and the mean and standard
    deviation are placeholders until ``load_data`` computes them on the training split.
    """
    if isinstance(name, str) and name.startswith(IMAGEFOLDER_PREFIX):
        return _folder_info(name, image_size, test_fraction, seed)
    if name not in _INFOS:
        raise ConfigError(
            f"dataset must be one of {', '.join(DATASET_NAMES)} or 'imagefolder:DIR' (got {name!r})"
        )
    return _INFOS[name]


def config_dataset_info(config: RunConfig) -> DatasetInfo:
    """``dataset_info`` with the configuration's image size, split and given mean/std."""
    info = dataset_info(
        config.dataset,
        getattr(config, "image_size", 0),
        getattr(config, "test_fraction", 0.2),
        config.seed,
    )
    mean, std = getattr(config, "data_mean", []), getattr(config, "data_std", [])
    if mean and std:
        info = replace(info, mean=tuple(mean), std=tuple(std))
    return info


def _folder_info(name: str, image_size: int, test_fraction: float, seed: int) -> DatasetInfo:
    from engine import imagefolder

    scanned = imagefolder.scan(imagefolder.folder_of(name), test_fraction, seed)
    channels = scanned.channels
    return DatasetInfo(
        name,
        f"image folder {scanned.root.name}",
        channels,
        scanned.image_size(image_size),
        len(scanned.classes),
        len(scanned.train),
        len(scanned.test),
        (0.5,) * channels,
        (0.25,) * channels,
        channels == 3,
        scanned.classes,
    )


@dataclass
class ImageSet:
    """A whole split in memory: ``images`` N×C×H×W uint8, ``labels`` N int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int) -> ImageSet:
        """The first ``limit`` examples (all of them when ``limit`` is 0)."""
        if limit <= 0 or limit >= len(self):
            return self
        return ImageSet(self.images[:limit], self.labels[:limit])


class FileImageSet:
    """A split too large for memory: image files decoded batch by batch by ``workers``
    DataLoader processes (``engine.imagefolder``)."""

    def __init__(self, files: list, channels: int, image_size: int, workers: int) -> None:
        self.files, self.channels, self.image_size = list(files), channels, image_size
        self.workers = workers
        self.labels = torch.tensor([label for _, label in self.files], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def head(self, limit: int) -> FileImageSet:
        if limit <= 0 or limit >= len(self):
            return self
        return FileImageSet(self.files[:limit], self.channels, self.image_size, self.workers)


@dataclass
class LoadedData:
    """Both splits of a configuration's data set, its resolved info, and notes for the log."""

    train: ImageSet | FileImageSet
    test: ImageSet | FileImageSet
    info: DatasetInfo
    notes: list[str] = field(default_factory=list)


# -- loading ----------------------------------------------------------------------------


def resolve_data_root(data_root: str | Path | None) -> Path:
    """``data_root`` if given, else ``$ADTN_DATA_DIR``, else the per-user data folder."""
    return Path(data_root).expanduser() if data_root else default_data_root()


def load_datasets(
    config: RunConfig, progress: ProgressCallback | None = None
) -> tuple[ImageSet | FileImageSet, ImageSet | FileImageSet]:
    """The (train, test) sets of ``config.dataset``, capped by ``limit_train``/``limit_test``.

    A missing set is downloaded when ``config.download`` is true (``progress`` receives
    (done_bytes, total_bytes)); otherwise, or when that fails, ``DataUnavailableError``.
    """
    loaded = load_data(config, progress)
    return loaded.train, loaded.test


def load_data(
    config: RunConfig,
    progress: ProgressCallback | None = None,
    load_progress: ProgressCallback | None = None,
) -> LoadedData:
    """``load_datasets`` plus the resolved ``DatasetInfo`` (an image folder's mean and
    standard deviation computed on its training split) and notes for the run's log.
    ``load_progress`` receives (images decoded, images in all) while an image folder loads."""
    if config.dataset.startswith(IMAGEFOLDER_PREFIX):
        loaded = _load_folder(config, load_progress)
    else:
        info = config_dataset_info(config)
        train, test = _load_named(info, config, progress)
        loaded = LoadedData(train, test, info)
    if getattr(config, "holdout", 0):
        loaded = hold_out(loaded, config.holdout)
    return loaded


# The held-out examples do not depend on the run's seed: every method of a comparison is
# tuned on the same examples.
HOLDOUT_SEED = 20_230_510


def hold_out(loaded: LoadedData, count: int) -> LoadedData:
    """``count`` training examples, drawn by a fixed seed, become the evaluation set in place
    of the test set (which is then not used at all); the rest stay for training."""
    train = loaded.train
    if count >= len(train):
        raise ConfigError(
            f"holdout = {count} leaves no training examples (the training split has {len(train)})"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    kept, held = order[count:].sort().values, order[:count].sort().values
    rest: ImageSet | FileImageSet
    evaluation: ImageSet | FileImageSet
    if isinstance(train, ImageSet):
        rest = ImageSet(train.images[kept], train.labels[kept])
        evaluation = ImageSet(train.images[held], train.labels[held])
    else:
        files = train.files
        rest = FileImageSet(
            [files[i] for i in kept.tolist()], train.channels, train.image_size, train.workers
        )
        evaluation = FileImageSet(
            [files[i] for i in held.tolist()], train.channels, train.image_size, train.workers
        )
    note = (
        f"evaluating on {count:,} held-out training examples, not on the test set; "
        f"{len(rest):,} examples train"
    )
    return replace(loaded, train=rest, test=evaluation, notes=[*loaded.notes, note])


def _load_folder(config: RunConfig, load_progress: ProgressCallback | None) -> LoadedData:
    from engine import imagefolder

    info = config_dataset_info(config)
    scanned = imagefolder.scan(
        imagefolder.folder_of(config.dataset), getattr(config, "test_fraction", 0.2), config.seed
    )
    loaded = imagefolder.load(
        scanned,
        info.image_size,
        config.limit_train,
        config.limit_test,
        tuple(getattr(config, "data_mean", ())),
        tuple(getattr(config, "data_std", ())),
        config.workers,
        load_progress,
    )
    info = replace(
        info,
        mean=loaded.mean,
        std=loaded.std,
        train_size=len(loaded.train),
        test_size=len(loaded.test),
    )
    return LoadedData(loaded.train, loaded.test, info, loaded.notes)


def _load_named(
    info: DatasetInfo, config: RunConfig, progress: ProgressCallback | None
) -> tuple[ImageSet, ImageSet]:
    if info.name == "synthetic":
        train, test = synthetic_sets(
            config.limit_train or SYNTHETIC_SIZES[0], config.limit_test or SYNTHETIC_SIZES[1]
        )
    else:
        train, test = _load_files(
            info, resolve_data_root(config.data_root), config.download, progress
        )
    return train.head(config.limit_train), test.head(config.limit_test)


def download_dataset(
    name: str, root: str | Path | None = None, progress: ProgressCallback | None = None
) -> Path:
    """Download data set ``name`` into ``root`` (default: the data root) unless it is there
    already; return its folder. Raises ``DataUnavailableError`` when the download fails."""
    from engine import data_files  # torchvision loads only when files are needed

    info = dataset_info(name)
    if name == "synthetic" or name.startswith(IMAGEFOLDER_PREFIX):
        raise ValueError(f"the {info.title} data set is not downloaded")
    files = data_files.FILES[name]
    root = resolve_data_root(root)
    if files.missing(root):
        try:
            data_files.download_files(files, root, progress)
        except OSError as exc:
            reason = f"the download failed ({exc})"
            raise DataUnavailableError(_unavailable_message(info, root, files, reason)) from exc
    return files.location(root)


def _load_files(
    info: DatasetInfo, root: Path, download: bool, progress: ProgressCallback | None
) -> tuple[ImageSet, ImageSet]:
    from engine import data_files

    files = data_files.FILES[info.name]
    if files.missing(root):
        if not download:
            raise DataUnavailableError(
                _unavailable_message(info, root, files, "downloading is switched off")
            )
        download_dataset(info.name, root, progress)
    reader = data_files.read_mnist if info.name in MNIST_LIKE else data_files.read_cifar
    folder = files.location(root)
    try:
        train = ImageSet(*reader(folder, files.train_files))
        test = ImageSet(*reader(folder, files.test_files))
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataUnavailableError(
            f"{info.title} in {folder} could not be read ({exc}). Delete the folder to "
            "download it again, or point --data-root / ADTN_DATA_DIR at a good copy."
        ) from exc
    return train, test


def _unavailable_message(info: DatasetInfo, root: Path, files: DataFiles, reason: str) -> str:
    missing = ", ".join(files.missing(root)) or "its files"
    return (
        f"{info.title} is not available: {missing} not found in {files.location(root)} and "
        f"{reason}. Provide it with --data-root DIR (or data_root in the config, or the "
        f"ADTN_DATA_DIR environment variable) pointing at a folder that contains "
        f"{files.folder}/, or download it on a machine with internet access (download = true)."
    )


# -- the generated set ------------------------------------------------------------------


def synthetic_sets(train_size: int, test_size: int) -> tuple[ImageSet, ImageSet]:
    """A learnable MNIST-shaped set: each class is a fixed smooth 28×28 pattern, each example
    its class pattern plus noise. Always the same numbers for the same sizes."""
    generator = torch.Generator().manual_seed(20230510)
    coarse = torch.rand(10, 1, 7, 7, generator=generator)
    patterns = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)

    def make(size: int) -> ImageSet:
        labels = torch.randint(0, 10, (size,), generator=generator)
        noise = 0.35 * torch.randn(size, 1, 28, 28, generator=generator)
        images = (patterns[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return ImageSet(images, labels)

    return make(train_size), make(test_size)


# -- batches ----------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for one (run seed, epoch, purpose) triple; distinct triples rarely collide."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


class BatchIterator:
    """Batches of one split on ``device``: normalised float images and int64 labels.

    The uint8 set is moved to ``device`` once. ``epoch(n)`` yields the batches of epoch ``n``:
    shuffled by a generator seeded by (seed, n) when ``shuffle``, randomly cropped (padding 4)
    and flipped when ``augment``.
    """

    def __init__(
        self,
        data: ImageSet | FileImageSet,
        info: DatasetInfo,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        if len(data) == 0:
            raise DataUnavailableError(f"the {info.title} split is empty")
        self.files = data if isinstance(data, FileImageSet) else None  # streamed from disk
        self.skipped_files: set[str] = set()  # unreadable files met while streaming
        self.images = None if isinstance(data, FileImageSet) else data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        shape = (1, info.in_channels, 1, 1)
        self.mean = torch.tensor(info.mean, device=device).view(shape)
        self.std = torch.tensor(info.std, device=device).view(shape)

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        return len(self.batch_bounds())

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, stream=1))
            order = torch.randperm(self.num_examples, generator=generator).to(self.device)
        augment_rng = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, stream=2))
        if self.files is not None:
            yield from self._streamed(order, augment_rng)
            return
        assert self.images is not None  # held in memory unless streamed from files
        for start, stop in self.batch_bounds():
            index = order[start:stop] if order is not None else slice(start, stop)
            images = self.images[index].float().div_(255)
            if self.augment:
                images = _random_crop_and_flip(images, augment_rng)
            yield (images - self.mean) / self.std, self.labels[index]

    def _streamed(
        self, order: torch.Tensor | None, augment_rng: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches as in memory, decoded by DataLoader workers in the same order;
        files that fail to decode are dropped from their batch."""
        from engine.imagefolder import FileDataset

        assert self.files is not None  # only a set of files is streamed
        indices = order.cpu().tolist() if order is not None else list(range(self.num_examples))
        batches = [indices[start:stop] for start, stop in self.batch_bounds()]
        dataset = FileDataset(self.files.files, self.files.channels, self.files.image_size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.files.workers,
            pin_memory=self.device.type == "cuda",
            multiprocessing_context=_worker_context() if self.files.workers > 0 else None,
        )
        skipped: list[str] = []
        for batch, (images, labels) in zip(batches, loader):
            keep = labels >= 0
            if not bool(keep.all()):
                skipped += [
                    str(self.files.files[batch[j]][0]) for j in (~keep).nonzero().flatten().tolist()
                ]
                images, labels = images[keep], labels[keep]
            if labels.numel() == 0:
                continue
            images = images.to(self.device, non_blocking=True).float().div_(255)
            if self.augment:
                images = _random_crop_and_flip(images, augment_rng)
            yield (images - self.mean) / self.std, labels.to(self.device)
        # Counted in the log once per file (every epoch meets the same broken files again).
        new = sorted(set(skipped) - self.skipped_files)
        if new:
            self.skipped_files.update(new)
            shown = ", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else "")
            log.warning("skipped %d unreadable image file(s) while streaming: %s", len(new), shown)

    def batch_bounds(self) -> list[tuple[int, int]]:
        """(start, stop) of each batch of an epoch in the epoch's order of examples."""
        n, size = self.num_examples, self.batch_size
        bounds = [(start, min(start + size, n)) for start in range(0, n, size)]
        # a training batch of one example would break batch norm; drop such a remainder
        if self.shuffle and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
            bounds.pop()
        return bounds


def _worker_context():
    """Worker processes are spawned, not forked: the training process may run threads (the
    window's worker) whose locks a fork would copy mid-use."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _random_crop_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-example random crop of the zero-padded images back to their size, then a random
    horizontal flip of half of them; the random numbers come from ``generator`` (CPU)."""
    count, _, height, width = images.shape
    padded = F.pad(images, (CROP_PADDING,) * 4)
    span = 2 * CROP_PADDING + 1
    top = torch.randint(0, span, (count,), generator=generator).to(images.device)
    left = torch.randint(0, span, (count,), generator=generator).to(images.device)
    flip = (torch.rand(count, generator=generator) < 0.5).to(images.device)
    rows = top[:, None] + torch.arange(height, device=images.device)  # count × H
    cols = left[:, None] + torch.arange(width, device=images.device)  # count × W
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(count, device=images.device)[:, None, None]
    # advanced indices on dims 0, 2, 3 → result count × H × W × C
    cropped = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()
