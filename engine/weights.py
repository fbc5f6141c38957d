"""Pretrained weights for a freshly built model: a file the user names, or torchvision's own.

``weights`` in a run configuration is one of

- a ``.safetensors`` file, or a PyTorch state dict read with ``torch.load(weights_only=True)``
  (tensors only: a file that holds pickled objects is refused, never run);
- ``torchvision:DEFAULT`` or ``torchvision:<WEIGHTS NAME>`` (e.g. ``IMAGENET1K_V1``) for a
  torchvision model: taken from the local torch cache, or downloaded with progress.

Layers adapted to the data set (first convolution, stem, classifier) keep what they can: a
first convolution built for grayscale gets the pretrained RGB filters summed over colour, a
layer whose shape changed otherwise keeps its fresh initialisation. Every such choice is a
note for the run's log. Any other mismatch is an error naming the tensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine.errors import WeightsError

TORCHVISION_WEIGHTS_PREFIX = "torchvision:"
ProgressCallback = Callable[[int, int], None]


def load_weights(
    model: nn.Module,
    weights: str,
    model_name: str,
    adapted: list[str] | tuple[str, ...] = (),
    allow_download: bool = False,
    progress: ProgressCallback | None = None,
) -> list[str]:
    """Load ``weights`` into ``model`` (built as ``model_name``); return notes for the log."""
    if weights.startswith(TORCHVISION_WEIGHTS_PREFIX):
        state, label = _torchvision_state(weights, model_name, allow_download, progress)
    else:
        state, label = read_state_dict(weights), weights
    return apply_state_dict(model, state, label, adapted)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or of a torch state dict (``weights_only``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"weights file not found: {path}")
    with open(file, "rb") as handle:
        head = handle.read(9)
    # safetensors: an 8-byte header length, then the JSON header itself
    if file.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file ({exc})") from exc
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} is neither safetensors nor a plain PyTorch state dict of "
            f"tensors (objects are never unpickled): {first}"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the usual {"state_dict": ..., "epoch": ...} wrapper
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path} does not hold a state dict (names mapped to tensors)")
    return state


def apply_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    label: str,
    adapted: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Copy ``state`` into ``model``; mismatches are allowed only in ``adapted`` layers."""
    state = {_strip_prefix(key): value for key, value in state.items()}
    own = model.state_dict()
    notes: list[str] = []
    missing = [k for k in own if k not in state and not _in_adapted(k, adapted)]
    unexpected = [k for k in state if k not in own and not _in_adapted(k, adapted)]
    if missing or unexpected:
        parts = [
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("not in the model", unexpected))
            if keys
        ]
        raise WeightsError(f"{label} does not fit the model ({'; '.join(parts)})")
    fitted: dict[str, torch.Tensor] = {}
    kept_fresh: set[str] = set()
    for key, target in own.items():
        value = state.get(key)
        if value is None:
            kept_fresh.add(key.rpartition(".")[0])
            continue
        if value.shape == target.shape:
            fitted[key] = value.to(target.dtype)
        elif _is_summable_conv(key, value, target, adapted):
            fitted[key] = value.to(target.dtype).sum(dim=1, keepdim=True)
            notes.append(
                f"{key.rpartition('.')[0]}: pretrained colour filters summed for "
                "single-channel images"
            )
        elif _in_adapted(key, adapted):
            kept_fresh.add(key.rpartition(".")[0])
        else:
            raise WeightsError(
                f"{label}: {key} has shape {list(value.shape)}, the model "
                f"needs {list(target.shape)}"
            )
    model.load_state_dict(fitted, strict=False)
    for layer in sorted(kept_fresh):
        notes.append(f"{layer}: freshly initialised (its shape differs from {label}'s)")
    notes.insert(0, f"weights loaded from {label} ({len(fitted)} of {len(own)} tensors)")
    return notes


def _strip_prefix(key: str) -> str:
    # DataParallel / DistributedDataParallel save their model's keys under "module."
    return key[len("module.") :] if key.startswith("module.") else key


def _in_adapted(key: str, adapted) -> bool:
    return any(key == layer or key.startswith(layer + ".") for layer in adapted)


def _is_summable_conv(key: str, value: torch.Tensor, target: torch.Tensor, adapted) -> bool:
    return (
        _in_adapted(key, adapted)
        and key.endswith("weight")
        and value.dim() == 4
        and target.dim() == 4
        and target.shape[1] == 1
        and value.shape[0] == target.shape[0]
        and value.shape[2:] == target.shape[2:]
    )


# -- torchvision's own weights --------------------------------------------------------------


def _torchvision_state(
    weights: str, model_name: str, allow_download: bool, progress: ProgressCallback | None
) -> tuple[dict, str]:
    from engine.model_sources import TORCHVISION_PREFIX

    if not model_name.startswith(TORCHVISION_PREFIX):
        raise WeightsError(
            f"weights {weights!r} are torchvision's; they fit only a "
            f"torchvision model (the model is {model_name!r})"
        )
    from torchvision import models

    arch = model_name[len(TORCHVISION_PREFIX) :]
    enum = models.get_model_weights(arch)
    wanted = weights[len(TORCHVISION_WEIGHTS_PREFIX) :] or "DEFAULT"
    try:
        entry = enum[wanted] if wanted != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise WeightsError(
            f"torchvision:{arch} has no weights {wanted!r}; choose one of {names}"
        ) from None
    file = torchvision_cache_file(entry.url)
    if not file.is_file():
        if not allow_download:
            raise WeightsError(
                f"torchvision's {arch} weights {entry.name} are not in the local torch cache "
                f"({file}) and downloading is switched off. Put the file there (from "
                f"{entry.url}), or pass it with --weights FILE."
            )
        _download(entry.url, file, progress)
    label = f"torchvision {arch} {entry.name}"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(
            f"{file} (torchvision {arch} weights) cannot be read: {exc}; "
            "delete it to download it again"
        ) from exc
    return state, label


def torchvision_cache_file(url: str) -> Path:
    """Where torch's hub keeps a downloaded checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download(url: str, file: Path, progress: ProgressCallback | None) -> None:
    from engine.data_files import DOWNLOAD_TIMEOUT_S, _fetch  # the data sets' downloader
    from engine.paths import atomic_write_bytes

    try:
        payload = _fetch(url, progress)
    except OSError as exc:
        raise WeightsError(
            f"torchvision weights are not in the local cache ({file}) and "
            f"could not be downloaded ({exc}; timeout {DOWNLOAD_TIMEOUT_S} s). "
            "Put the file there, or pass it with --weights FILE."
        ) from exc
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(file, payload)
