"""Checkpoints: model and optimiser tensors in safetensors, everything else as JSON.

The JSON state (epoch, phase, metrics history, optimiser hyper-parameters, ...) travels inside
the safetensors header, so one atomic rename publishes tensors and state together; a readable
copy is written beside it as ``<name>.json`` for people and tools that want the numbers without
the tensors. Nothing is ever pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from engine.errors import CheckpointError
from engine.paths import atomic_write_bytes, atomic_write_text

FORMAT = "adtn-studio-checkpoint"
VERSION = 1
STATE_KEY = "adtn_studio_state"
MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model's state dict, the optimiser's (or None), the JSON state."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    state: dict[str, Any]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``model`` (and ``optimizer``) tensors plus the JSON-able ``state`` to ``path``
    (a ``.safetensors`` file) and its ``.json`` sidecar, each atomically."""
    path = Path(path)
    tensors = {
        MODEL_PREFIX + key: value.detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    full_state = {"format": FORMAT, "version": VERSION, **state}
    if optimizer is not None:
        optimizer_tensors, optimizer_json = _split_optimizer_state(optimizer.state_dict())
        tensors.update(optimizer_tensors)
        full_state["optimizer"] = optimizer_json
    payload = safetensors.torch.save(tensors, metadata={STATE_KEY: json.dumps(full_state)})
    atomic_write_bytes(path, payload)
    atomic_write_text(path.with_suffix(".json"), json.dumps(full_state, indent=2) + "\n")


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The JSON state of a checkpoint without loading its tensors."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return _parse_state(path, handle.metadata())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; tensors land on ``device``."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device=str(device)) as handle:
            state = _parse_state(path, handle.metadata())
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from exc
    model_state = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in tensors.items()
        if key.startswith(MODEL_PREFIX)
    }
    optimizer_state = None
    if "optimizer" in state:
        optimizer_state = _join_optimizer_state(state.pop("optimizer"), tensors)
    return Checkpoint(model_state, optimizer_state, state)


def _parse_state(path: Path, metadata: dict[str, str] | None) -> dict[str, Any]:
    try:
        state = json.loads((metadata or {})[STATE_KEY])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not an ADTN Studio checkpoint") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has format {state.get('format')!r} version {state.get('version')!r}; "
            f"this version reads {FORMAT!r} version {VERSION}"
        )
    return state


def _split_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (moments, step counts) as ``optimizer.<param>.<key>``; the rest as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(param_id), {})[key] = value
    return tensors, {"state": plain, "param_groups": state_dict["param_groups"]}


def _join_optimizer_state(
    plain: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {
        int(param_id): dict(entries) for param_id, entries in plain["state"].items()
    }
    for name, value in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            param_id, key = name[len(OPTIMIZER_PREFIX) :].split(".", 1)
            state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}
