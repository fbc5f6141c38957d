"""Image folders as data sets: both layouts, grayscale and colour, damaged files and every
structural error, in memory and streamed; Fashion-MNIST and KMNIST by name."""

from __future__ import annotations

import pytest
import torch
from _imagefolders import class_image, write_folder

from engine import imagefolder
from engine.config import ConfigError, RunConfig
from engine.data import (
    BatchIterator,
    DataUnavailableError,
    FileImageSet,
    ImageSet,
    config_dataset_info,
    dataset_info,
    load_data,
)
from engine.imagefolder import ImageFolderError


def folder_config(root, **changes) -> RunConfig:
    return RunConfig(dataset=f"imagefolder:{root}", dense_baseline=True, **changes)


def test_train_test_layout_grayscale_is_detected_resized_and_normalised(tmp_path):
    root = write_folder(tmp_path / "digits", classes=3, per_class=6, mode="L", size=(30, 34))
    info = dataset_info(f"imagefolder:{root}")
    assert (info.in_channels, info.num_classes, info.image_size) == (1, 3, 30)
    assert info.classes == ("class_0", "class_1", "class_2")
    assert (info.train_size, info.test_size) == (18, 9)

    loaded = load_data(folder_config(root, image_size=16))
    assert isinstance(loaded.train, ImageSet)
    assert loaded.train.images.shape == (18, 1, 16, 16)
    assert loaded.train.images.dtype == torch.uint8
    assert sorted(set(loaded.test.labels.tolist())) == [0, 1, 2]
    # mean and std come from the training split itself
    pixels = loaded.train.images.double() / 255
    assert loaded.info.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-3)
    assert loaded.info.std[0] == pytest.approx(pixels.std().item(), abs=2e-3)
    batch, labels = next(BatchIterator(loaded.train, loaded.info, 18, torch.device("cpu")).epoch(0))
    assert batch.mean().abs() < 1e-3 and batch.std() == pytest.approx(1.0, abs=0.02)


def test_single_folder_is_split_per_class_by_a_seeded_fraction(tmp_path):
    root = write_folder(tmp_path / "flat", classes=2, per_class=10, mode="RGB", layout="split")
    scan = imagefolder.scan(root, test_fraction=0.3, seed=5)
    assert scan.layout == "split" and scan.channels == 3
    assert len(scan.test) == 6 and len(scan.train) == 14  # 3 of 10 per class
    assert {path for path, _ in scan.train}.isdisjoint(path for path, _ in scan.test)
    assert imagefolder.scan(root, test_fraction=0.3, seed=5).test == scan.test
    assert imagefolder.scan(root, test_fraction=0.3, seed=6).test != scan.test
    info = config_dataset_info(folder_config(root, test_fraction=0.3, seed=5))
    assert (info.in_channels, info.num_classes, info.augmentable) == (3, 2, True)


def test_images_are_resized_by_their_shorter_side_and_centre_cropped(tmp_path):
    import numpy as np
    from PIL import Image

    # 20 high, 60 wide: a black left third, a white centre third, a grey right third
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, 20:40] = 255
    pixels[:, 40:] = 100
    Image.fromarray(pixels, "RGB").save(tmp_path / "wide.png")
    array = imagefolder.decode(tmp_path / "wide.png", 3, 10)
    assert array.shape == (3, 10, 10)  # 60×20 → 30×10 → its middle 10 columns
    assert (array[:, :, 1:9] == 255).all()  # the centre third only (edges blend)
    gray = imagefolder.decode(tmp_path / "wide.png", 1, 10)
    assert gray.shape == (1, 10, 10) and (gray[:, :, 1:9] == 255).all()


def test_corrupt_and_truncated_files_are_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / "damaged", classes=2, per_class=5)
    (root / "train" / "class_0" / "zz_garbage.png").write_bytes(b"not an image at all")
    good = (root / "train" / "class_1" / "img000.png").read_bytes()
    (root / "train" / "class_1" / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    loaded = load_data(folder_config(root))
    assert len(loaded.train) == 10
    note = next(n for n in loaded.notes if "skipped" in n)
    assert "skipped 2 unreadable" in note and "zz_garbage.png" in note


@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty", "is empty"),
        ("one class", "only one class"),
        ("empty class", "holds no images"),
        ("unknown test class", "not in"),
        ("no test folder", "no test/ or val/"),
        ("loose images", "no class folders"),
        ("missing", "not found"),
    ],
)
def test_bad_folders_get_one_message_naming_the_folder(tmp_path, damage, message):
    root = tmp_path / "data"
    if damage == "empty":
        root.mkdir()
    elif damage == "one class":
        write_folder(root, classes=1, layout="split")
    elif damage == "empty class":
        write_folder(root, classes=2)
        (root / "train" / "class_9").mkdir()
    elif damage == "unknown test class":
        write_folder(root, classes=2)
        write_folder(tmp_path / "other", classes=3)
        (tmp_path / "other" / "test" / "class_2").rename(root / "test" / "class_2")
    elif damage == "no test folder":
        write_folder(root, classes=2)
        (root / "test").rename(tmp_path / "elsewhere")
    elif damage == "loose images":
        root.mkdir()
        class_image(__import__("numpy").random.default_rng(0), 0, (8, 8), "L").save(root / "a.png")
    with pytest.raises(ImageFolderError, match=message) as caught:
        dataset_info(f"imagefolder:{root}")
    assert str(root) in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, DataUnavailableError)  # the trainer reports it as such


def test_a_class_whose_every_image_is_unreadable_is_named(tmp_path):
    root = write_folder(tmp_path / "data", classes=2, per_class=2)
    for path in (root / "train" / "class_1").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(ImageFolderError, match="class_1"):
        load_data(folder_config(root))


def test_val_folder_counts_as_the_test_split(tmp_path):
    root = write_folder(tmp_path / "data", classes=2)
    (root / "test").rename(root / "val")
    assert dataset_info(f"imagefolder:{root}").test_size == 6


def test_large_sets_are_streamed_by_worker_processes_with_the_same_batches(tmp_path, caplog):
    root = write_folder(tmp_path / "data", classes=2, per_class=6, mode="RGB")
    (root / "train" / "class_0" / "zz_bad.png").write_bytes(b"broken")
    scan = imagefolder.scan(root)
    in_memory = imagefolder.load(scan, 12)
    streamed = imagefolder.load(scan, 12, workers=1, memory_limit=100)
    assert isinstance(streamed.train, FileImageSet)
    assert any("streamed from disk by 1 worker" in note for note in streamed.notes)
    info = dataset_info(f"imagefolder:{root}")
    batches = BatchIterator(streamed.train, info, 5, torch.device("cpu"), shuffle=True, seed=3)
    with caplog.at_level("WARNING", logger="engine.data"):
        seen = list(batches.epoch(1))
        list(batches.epoch(2))
    # the unreadable file is dropped from its batch, counted and named in the log once;
    # every good image arrives once
    assert sum(len(labels) for _, labels in seen) == 12
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 1 unreadable" in warnings[0]
    assert "zz_bad.png" in warnings[0]
    reference = BatchIterator(in_memory.train, info, 5, torch.device("cpu"))
    all_images = torch.cat([images for images, _ in reference.epoch(0)])
    streamed_images = torch.cat([images for images, _ in seen])
    assert torch.allclose(streamed_images.sum(0), all_images.sum(0), atol=1e-3)


def test_given_mean_and_std_are_used(tmp_path):
    root = write_folder(tmp_path / "data", classes=2)
    loaded = load_data(folder_config(root, data_mean=[0.5], data_std=[0.2]))
    assert loaded.info.mean == (0.5,) and loaded.info.std == (0.2,)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"dataset": "imagefolder:"}, "needs the folder"),
        ({"dataset": "imagenet"}, "imagefolder:DIR"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"image_size": -1}, "image_size"),
        ({"data_mean": [0.5], "data_std": []}, "data_mean and data_std"),
        ({"data_mean": [0.5, 0.5], "data_std": [0.2, 0.2]}, "one value"),
    ],
)
def test_config_refuses_bad_data_fields(changes, field):
    with pytest.raises(ConfigError, match=field):
        RunConfig(dense_baseline=True, **changes).validate()


@pytest.mark.parametrize(
    "name, title, folder",
    [
        ("fashionmnist", "Fashion-MNIST", "FashionMNIST/raw"),
        ("kmnist", "Kuzushiji-MNIST", "KMNIST/raw"),
    ],
)
def test_fashion_and_kuzushiji_mnist_say_how_to_provide_them(tmp_path, name, title, folder):
    info = dataset_info(name)
    assert (info.in_channels, info.image_size, info.num_classes) == (1, 28, 10)
    config = RunConfig(dataset=name, data_root=str(tmp_path), download=False, dense_baseline=True)
    with pytest.raises(DataUnavailableError) as caught:
        load_data(config)
    text = str(caught.value)
    assert title in text and folder in text and "--data-root" in text


def test_fashion_mnist_reads_idx_files_like_mnist(tmp_path, shared_datasets):
    # the idx format is MNIST's; a copy of MNIST's files under FashionMNIST/raw reads alike
    import shutil

    target = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(shared_datasets / "MNIST" / "raw", target)
    config = RunConfig(
        dataset="fashionmnist",
        data_root=str(tmp_path),
        download=False,
        limit_train=50,
        limit_test=20,
        dense_baseline=True,
    )
    loaded = load_data(config)
    assert loaded.train.images.shape == (50, 1, 28, 28) and len(loaded.test) == 20


def test_images_added_later_are_seen_by_the_next_scan(tmp_path):
    root = write_folder(tmp_path / "data", classes=2, per_class=3)
    assert dataset_info(f"imagefolder:{root}").train_size == 6
    import os
    import time

    extra = root / "train" / "class_1" / "late.png"
    extra.write_bytes((root / "train" / "class_1" / "img000.png").read_bytes())
    later = time.time_ns() + 10**9  # a coarse file-system clock must still see a change
    os.utime(extra.parent, ns=(later, later))
    assert dataset_info(f"imagefolder:{root}").train_size == 7
