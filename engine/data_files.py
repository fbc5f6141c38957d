"""Data-set files on disk: where each set lives under a root, reading them into uint8 tensors,
and downloading them (with a progress callback) from the URLs torchvision's classes name.

CIFAR's python batches are pickles. They are read with an unpickler that only reconstructs
numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib
import io
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets as tv_datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from engine.paths import atomic_write_bytes

# (done_bytes, total_bytes); total 0 if unknown. Defined here, where files arrive, so that
# this module needs nothing of engine.data (which imports this one when files are needed).
ProgressCallback = Callable[[int, int], None]

DOWNLOAD_TIMEOUT_S = 30
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class DataFiles:
    """Where one data set's files sit under a root, and where they come from."""

    folder: str  # relative to the data root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    urls: tuple[tuple[tuple[str, ...], str], ...]  # (mirror urls, md5) of each archive

    def location(self, root: Path) -> Path:
        return root / self.folder

    def missing(self, root: Path) -> list[str]:
        folder = self.location(root)
        return [
            name for name in self.train_files + self.test_files if not (folder / name).is_file()
        ]


def _mnist_files(cls: type[Any] = tv_datasets.MNIST) -> DataFiles:
    """MNIST and its drop-in relatives (Fashion-MNIST, KMNIST): the same four idx files
    under ``<ClassName>/raw``, as torchvision lays them out."""
    names = [name.removesuffix(".gz") for name, _ in cls.resources]
    urls = tuple(
        (tuple(mirror + name for mirror in cls.mirrors), md5) for name, md5 in cls.resources
    )
    return DataFiles(
        f"{cls.__name__}/raw",
        tuple(n for n in names if n.startswith("train")),
        tuple(n for n in names if n.startswith("t10k")),
        urls,
    )


def _cifar_files(cls: type[Any]) -> DataFiles:
    return DataFiles(
        cls.base_folder,
        tuple(name for name, _ in cls.train_list),
        tuple(name for name, _ in cls.test_list),
        (((cls.url,), cls.tgz_md5),),
    )


FILES: dict[str, DataFiles] = {
    "mnist": _mnist_files(),
    "fashionmnist": _mnist_files(tv_datasets.FashionMNIST),
    "kmnist": _mnist_files(tv_datasets.KMNIST),
    "cifar10": _cifar_files(tv_datasets.CIFAR10),
    "cifar100": _cifar_files(tv_datasets.CIFAR100),
}


# -- reading ----------------------------------------------------------------------------


def read_mnist(folder: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N×1×28×28 uint8) and labels (N int64) from an (images, labels) idx pair."""
    image_file = next(name for name in files if "images" in name)
    label_file = next(name for name in files if "labels" in name)
    images = read_image_file(str(folder / image_file)).unsqueeze(1).contiguous()
    labels = read_label_file(str(folder / label_file)).long()
    return images, labels


def read_cifar(folder: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N×3×32×32 uint8) and labels (N int64) from CIFAR-10/100 python batches."""
    images, labels = [], []
    for name in files:
        path = folder / name
        with open(path, "rb") as handle:
            try:
                batch = _ArrayOnlyUnpickler(handle, encoding="latin1").load()
            except (pickle.UnpicklingError, EOFError, AttributeError) as exc:
                raise ValueError(f"{path} is not a CIFAR batch: {exc}") from exc
        if not isinstance(batch, dict):
            raise ValueError(f"{path} is not a CIFAR batch (expected a dictionary)")
        data = batch.get("data")
        label_list = batch.get("labels", batch.get("fine_labels"))
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path} is not a CIFAR batch (its 'data' is not N×3072)")
        if label_list is None or len(label_list) != data.shape[0]:
            raise ValueError(f"{path} is not a CIFAR batch (labels missing or miscounted)")
        images.append(torch.from_numpy(data.astype(np.uint8).reshape(-1, 3, 32, 32)))
        labels.append(torch.as_tensor(np.asarray(label_list), dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):  # pickle's hook for every global
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            return codecs.encode
        return getattr(_numpy_internal(module.rsplit(".", 1)[1]), name)


def _numpy_internal(submodule: str):
    """numpy's private ``_core.<submodule>`` (numpy 2) or ``core.<submodule>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


# -- downloading ------------------------------------------------------------------------


def download_files(files: DataFiles, root: Path, progress: ProgressCallback | None = None) -> None:
    """Fetch and unpack ``files`` under ``root``; raises ``OSError`` when that fails."""
    folder = files.location(root)
    folder.mkdir(parents=True, exist_ok=True)
    for mirrors, md5 in files.urls:
        url, payload = _fetch_from_any(mirrors, progress)
        digest = hashlib.md5(payload).hexdigest()
        if digest != md5:
            raise OSError(f"{url} arrived corrupted (md5 {digest}, expected {md5})")
        if url.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
                archive.extractall(root, filter="data")
        elif url.endswith(".gz"):
            name = url.rsplit("/", 1)[1].removesuffix(".gz")
            with gzip.GzipFile(fileobj=io.BytesIO(payload)) as unpacked:
                buffer = io.BytesIO()
                shutil.copyfileobj(unpacked, buffer)
            atomic_write_bytes(folder / name, buffer.getvalue())
        else:
            raise ValueError(f"unknown archive type: {url}")


def _fetch_from_any(
    mirrors: tuple[str, ...], progress: ProgressCallback | None
) -> tuple[str, bytes]:
    """(url, content) from the first mirror that answers; ``OSError`` if none does."""
    errors = []
    for url in mirrors:
        try:
            return url, _fetch(url, progress)
        except OSError as exc:
            errors.append(str(exc))
    raise OSError("; ".join(errors))


def _fetch(url: str, progress: ProgressCallback | None) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            chunks, done = [], 0
            while chunk := response.read(CHUNK_BYTES):
                chunks.append(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OSError(f"could not download {url}: {reason}") from exc
    return b"".join(chunks)
