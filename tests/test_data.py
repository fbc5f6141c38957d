"""Data sets: loaders on real and written files, the generated set, batches, downloads."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from engine import data_files
from engine.config import RunConfig
from engine.data import (
    BatchIterator,
    DataUnavailableError,
    ImageSet,
    dataset_info,
    download_dataset,
    load_datasets,
    resolve_data_root,
    synthetic_sets,
)


def write_cifar(root, dataset: str, train_size: int = 12, test_size: int = 6) -> None:
    """Small CIFAR python batches in torchvision's layout; label = example index % classes."""
    files = data_files.FILES[dataset]
    classes = dataset_info(dataset).num_classes
    folder = files.location(root)
    folder.mkdir(parents=True)
    label_key = "labels" if dataset == "cifar10" else "fine_labels"
    per_file = {name: train_size // len(files.train_files) for name in files.train_files}
    per_file.update({name: test_size for name in files.test_files})
    for name, count in per_file.items():
        data = np.arange(count * 3072, dtype=np.int64).reshape(count, 3072) % 256
        batch = {"data": data.astype(np.uint8), label_key: [i % classes for i in range(count)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


@pytest.mark.parametrize("dataset, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loader_reads_torchvision_layout(tmp_path, dataset, classes):
    write_cifar(tmp_path, dataset, train_size=10, test_size=4)
    config = RunConfig(dataset=dataset, data_root=str(tmp_path), download=False)
    train, test = load_datasets(config)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (4, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and int(train.labels.max()) < classes
    # channel-major rows: the first 1024 values are the red plane
    assert train.images[0, 0, 0, :3].tolist() == [0, 1, 2]
    assert train.images[0, 1, 0, 0].item() == 1024 % 256


def test_cifar_loader_refuses_pickles_that_would_run_code(tmp_path):
    write_cifar(tmp_path, "cifar10")
    evil = tmp_path / "cifar-10-batches-py" / "test_batch"
    evil.write_bytes(pickle.dumps({"data": os.system, "labels": []}))
    config = RunConfig(dataset="cifar10", data_root=str(tmp_path), download=False)
    with pytest.raises(DataUnavailableError, match="refusing to load posix.system"):
        load_datasets(config)


def test_mnist_loader_on_the_shared_copy(shared_datasets):
    config = RunConfig(
        dataset="mnist", data_root=str(shared_datasets), download=False, limit_train=500
    )
    train, test = load_datasets(config)
    assert train.images.shape == (500, 1, 28, 28) and len(test) == 10000
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's well-known first labels


def test_missing_data_says_what_where_and_how(tmp_path):
    config = RunConfig(dataset="mnist", data_root=str(tmp_path / "empty"), download=False)
    with pytest.raises(DataUnavailableError) as caught:
        load_datasets(config)
    message = str(caught.value)
    assert "MNIST is not available" in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "--data-root" in message and "ADTN_DATA_DIR" in message and "download" in message


def test_failed_download_gives_the_same_clear_message(tmp_path, monkeypatch):
    def offline(files, root, progress=None):
        raise OSError("could not download https://example: no network")

    monkeypatch.setattr(data_files, "download_files", offline)
    config = RunConfig(dataset="cifar100", data_root=str(tmp_path), download=True)
    with pytest.raises(DataUnavailableError, match="CIFAR-100 is not available.*no network"):
        load_datasets(config)


def test_download_checks_md5_unpacks_and_reports_progress(tmp_path):
    source = tmp_path / "source"
    write_cifar(source, "cifar10")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive_path = tmp_path / "cifar.tar.gz"
    archive_path.write_bytes(archive.getvalue())
    real = data_files.FILES["cifar10"]
    md5 = hashlib.md5(archive.getvalue()).hexdigest()
    local = data_files.DataFiles(
        real.folder, real.train_files, real.test_files, (((archive_path.as_uri(),), md5),)
    )
    calls = []
    data_files.download_files(local, tmp_path / "root", progress=lambda d, t: calls.append(d))
    assert not local.missing(tmp_path / "root")
    assert calls and calls[-1] == len(archive.getvalue())

    mirrors = ((tmp_path / "absent").as_uri(), archive_path.as_uri())  # first one fails
    corrupt = data_files.DataFiles(
        real.folder, real.train_files, real.test_files, ((mirrors, "0" * 32),)
    )
    with pytest.raises(OSError, match="corrupted"):
        data_files.download_files(corrupt, tmp_path / "other")


def test_download_dataset_is_a_no_op_when_present(tmp_path):
    write_cifar(tmp_path, "cifar10")
    assert download_dataset("cifar10", tmp_path) == tmp_path / "cifar-10-batches-py"


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("ADTN_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root("") == tmp_path / "env"
    assert resolve_data_root(str(tmp_path / "cfg")) == tmp_path / "cfg"


def test_synthetic_set_is_deterministic_and_sized_by_limits():
    first, _ = synthetic_sets(64, 16)
    again, _ = synthetic_sets(64, 16)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    train, test = load_datasets(RunConfig(dataset="synthetic", limit_train=100, limit_test=30))
    assert (len(train), len(test)) == (100, 30)
    assert train.images.shape[1:] == (1, 28, 28) and set(train.labels.tolist()) <= set(range(10))


def tiny_set(count: int = 10) -> ImageSet:
    images = torch.randint(
        0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return ImageSet(images, torch.arange(count))


def test_batches_are_normalised_and_cover_the_set():
    info = dataset_info("cifar10")
    batches = BatchIterator(tiny_set(), info, 4, torch.device("cpu"))
    out = list(batches.epoch(1))
    assert len(batches) == 3 and [len(y) for _, y in out] == [4, 4, 2]
    expected = (
        tiny_set().images[:4].float() / 255 - torch.tensor(info.mean).view(1, 3, 1, 1)
    ) / torch.tensor(info.std).view(1, 3, 1, 1)
    assert torch.allclose(out[0][0], expected)


def test_shuffle_order_depends_only_on_seed_and_epoch():
    info = dataset_info("cifar10")
    a = BatchIterator(tiny_set(), info, 4, torch.device("cpu"), shuffle=True, seed=3)
    b = BatchIterator(tiny_set(), info, 4, torch.device("cpu"), shuffle=True, seed=3)
    order = lambda it, epoch: torch.cat([y for _, y in it.epoch(epoch)]).tolist()  # noqa: E731
    assert order(a, 2) == order(b, 2)
    assert order(a, 1) != order(a, 2)
    assert sorted(order(a, 1)) == list(range(10))


def test_a_lone_last_training_example_is_dropped():
    batches = BatchIterator(
        tiny_set(9), dataset_info("cifar10"), 4, torch.device("cpu"), shuffle=True
    )
    assert [len(y) for _, y in batches.epoch(1)] == [4, 4]


def test_augmentation_is_a_padded_crop_with_optional_flip():
    info = dataset_info("cifar10")
    data = tiny_set(6)
    batches = BatchIterator(data, info, 6, torch.device("cpu"), augment=True, seed=1)
    images, labels = next(batches.epoch(1))
    raw = images * torch.tensor(info.std).view(1, 3, 1, 1) + torch.tensor(info.mean).view(
        1, 3, 1, 1
    )
    padded = torch.nn.functional.pad(data.images.float() / 255, (4, 4, 4, 4))
    for augmented, label in zip(raw, labels):
        source = padded[label]
        candidates = [
            crop.flip(2) if flip else crop
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            for crop in [source[:, top : top + 32, left : left + 32]]
        ]
        assert any(torch.allclose(augmented, c, atol=1e-5) for c in candidates)
    plain = BatchIterator(data, info, 6, torch.device("cpu"), augment=True, seed=1)
    assert torch.equal(next(plain.epoch(1))[0], images)  # same seed and epoch, same crops
