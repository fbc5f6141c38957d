"""Models from outside the built-in zoo: torchvision's classifiers and a user's own Python file.

A model is named by one string, the same in configs, the command line and bundles:

- ``fc2``, ``lenet5``, ... — the zoo (``engine.models``);
- ``torchvision:resnet18`` — any image classifier of ``torchvision.models.list_models``,
  built untrained for the data set's channels, image size and class count;
- ``path/to/file.py:factory`` — a function or class in the user's file, called with
  ``in_channels``, ``image_size`` and ``num_classes`` as keywords when it takes them.

Building a torchvision model returns notes in plain words about what was adapted (first
convolution, small-image stem, classifier), which the trainer shows in its log.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Parsing a model name needs no PyTorch (engine.choices, engine.model_spec); these names stay
# importable from here.
from engine.choices import TORCHVISION_PREFIX  # noqa: F401
from engine.model_spec import ModelSource, ModelSourceError, parse_model_spec  # noqa: F401

SMALL_STEM_MAX_SIZE = 64  # at or below this size, ResNet-style stems keep the full resolution
IMAGENET_CLASSES = 1000


@dataclass
class BuiltModel:
    """A freshly built model and what was changed to fit it to the data."""

    model: nn.Module
    notes: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # layer names replaced or resized


def torchvision_names() -> list[str]:
    """Every image classifier torchvision offers (ImageNet models, not detection etc.)."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def check_model_spec(spec: str) -> ModelSource:
    """``parse_model_spec`` plus the checks that need no building: the torchvision name
    exists, the user's file exists."""
    source = parse_model_spec(spec)
    if source.kind == "torchvision" and source.name not in torchvision_names():
        close = [n for n in torchvision_names() if n.startswith(source.name[:4])][:6]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelSourceError(
            f"torchvision has no classifier {source.name!r} (see "
            f"'adtn-studio layers --list-models'{hint})"
        )
    if source.kind == "file" and not Path(source.path).expanduser().is_file():
        raise ModelSourceError(f"model file not found: {source.path}")
    return source


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- building -----------------------------------------------------------------------------


def build_source_model(
    spec: str, in_channels: int, image_size: int, num_classes: int
) -> BuiltModel:
    """Build a torchvision or file model (the zoo is ``engine.models.build_model``)."""
    source = check_model_spec(spec)
    if source.kind == "torchvision":
        return build_torchvision(source.name, in_channels, image_size, num_classes)
    if source.kind == "file":
        return build_from_file(source.path, source.name, in_channels, image_size, num_classes)
    raise ModelSourceError(f"{spec!r} is a zoo model; use engine.models.build_model")


def build_torchvision(name: str, in_channels: int, image_size: int, num_classes: int) -> BuiltModel:
    """torchvision's ``name``, untrained, for ``in_channels`` × ``image_size``² inputs and
    ``num_classes`` outputs. Its first convolution takes ``in_channels``; a ResNet-style
    stem (7×7 stride-2 convolution and max-pool) becomes a 3×3 stride-1 convolution for
    images of at most 64 pixels, which it would otherwise shrink to almost nothing."""
    from torchvision import models

    builder = models.get_model_builder(name)
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)  # one output, no init warning
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size  # its position embedding is sized by the input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = builder(**kwargs)
        except (ValueError, TypeError, AssertionError) as exc:
            raise ModelSourceError(
                f"torchvision:{name} cannot be built for {image_size}-pixel "
                f"images with {num_classes} classes: {exc}"
            ) from exc
    built = BuiltModel(model)
    if num_classes != IMAGENET_CLASSES:
        built.notes.append(
            f"torchvision:{name}: classifier built for {num_classes} classes "
            f"(ImageNet has {IMAGENET_CLASSES})"
        )
        built.adapted.append(_classifier_name(model))
    _adapt_first_conv(built, name, in_channels)
    _adapt_small_stem(built, name, image_size)
    _check_forward(built.model, name, in_channels, image_size)
    return built


def _classifier_name(model: nn.Module) -> str:
    last = ""
    for layer_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = layer_name
    return last


def _adapt_first_conv(built: BuiltModel, name: str, in_channels: int) -> None:
    for layer_name, module in built.model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != in_channels:
                _replace(built.model, layer_name, _conv_like(module, in_channels=in_channels))
                built.notes.append(
                    f"torchvision:{name}: first convolution {layer_name} takes "
                    f"{in_channels} channel(s) instead of {module.in_channels}"
                )
                built.adapted.append(layer_name)
            return


def _adapt_small_stem(built: BuiltModel, name: str, image_size: int) -> None:
    model = built.model
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (7, 7)
        and conv.stride == (2, 2)
        and isinstance(pool, nn.MaxPool2d)
    ):
        return  # not a ResNet stem
    if image_size > SMALL_STEM_MAX_SIZE:
        return
    model.conv1 = _conv_like(conv, kernel_size=3, stride=1, padding=1)
    model.maxpool = nn.Identity()
    built.notes.append(
        f"torchvision:{name}: {image_size}-pixel images are small, so the stem "
        "conv1 is 3×3 with stride 1 and the max-pool after it is removed"
    )
    if "conv1" not in built.adapted:
        built.adapted.append("conv1")


def _conv_like(conv: nn.Conv2d, **changes: Any) -> nn.Conv2d:
    arguments: dict[str, Any] = dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    arguments.update(changes)
    if arguments["groups"] > 1 and arguments["in_channels"] % arguments["groups"]:
        arguments["groups"] = 1
    return nn.Conv2d(**arguments)


def _replace(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _check_forward(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """One forward pass on the meta device (no memory, no arithmetic): a model that cannot
    take this image size fails here with a clear message, not in the first batch."""
    import copy

    try:
        probe = copy.deepcopy(model).to("meta").eval()
        with torch.no_grad():
            probe(torch.empty(2, in_channels, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelSourceError(
            f"torchvision:{name} cannot take {image_size}×{image_size} "
            f"images ({reason}); use larger images (image_size) or "
            "another model"
        ) from exc


# -- the user's own file ------------------------------------------------------------------


def build_from_file(
    path: str, factory: str, in_channels: int, image_size: int, num_classes: int
) -> BuiltModel:
    """Import the user's ``path`` and call ``factory`` with the keywords it accepts."""
    function = load_factory(path, factory)
    model, accepted = _call(function, f"{path}:{factory}", in_channels, image_size, num_classes)
    built = BuiltModel(model)
    if not accepted:
        built.notes.append(
            f"{path}:{factory} takes no in_channels/image_size/num_classes; "
            "it must fit the data set by itself"
        )
    return built


def call_factory(function, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Call a model factory as training does (the keywords it takes); ``ModelSourceError``
    when it fails or returns no ``nn.Module``."""
    label = getattr(function, "__qualname__", None) or repr(function)
    return _call(function, label, in_channels, image_size, num_classes)[0]


def _call(function, label: str, in_channels: int, image_size: int, num_classes: int):
    arguments = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    try:
        parameters = inspect.signature(function).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
        accepted = {k: v for k, v in arguments.items() if takes_any or k in parameters}
    except (TypeError, ValueError):  # a builtin without a signature
        accepted = {}
    try:
        model = function(**accepted)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise ModelSourceError(
            f"{label}({_kwargs_text(accepted)}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{label} returned {type(model).__name__}, not a torch.nn.Module")
    return model, accepted


def load_factory(path: str, factory: str):
    """The callable ``factory`` of the Python file ``path`` (imported afresh each call)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelSourceError(f"model file not found: {path}")
    module_name = f"adtn_user_model_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ModelSourceError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling by workers look it up
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise ModelSourceError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}") from exc
    except Exception as exc:  # noqa: BLE001 - importing the user's code may raise anything
        sys.modules.pop(module_name, None)
        raise ModelSourceError(f"{path} failed to import: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, factory, None)
    if function is None:
        found = [
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", "") == module_name
        ]
        hint = f" (it defines: {', '.join(found[:8])})" if found else ""
        raise ModelSourceError(f"{path} has no {factory!r}{hint}")
    if not callable(function):
        raise ModelSourceError(f"{path}:{factory} is not a function or class")
    return function


def _kwargs_text(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


# -- the run folder's record of a user's model -------------------------------------------

MODEL_SOURCE_FILE = "model_source.json"


def record_model_source(config: Any, run_dir: str | Path) -> list[str]:
    """For a model from the user's file, write its path and SHA-256 to
    ``<run_dir>/model_source.json`` (first run), or compare them (resumed run); return notes.
    A changed file is said in the log: the checkpoint may no longer fit it."""
    import json

    from engine.paths import atomic_write_text

    source = parse_model_spec(config.model)
    if source.kind != "file":
        return []
    path = Path(source.path).expanduser().resolve()
    digest = file_sha256(path)
    record_file = Path(run_dir) / MODEL_SOURCE_FILE
    try:
        previous = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and previous.get("sha256") not in (None, digest):
        return [
            f"{path} changed since this run started (SHA-256 {digest[:12]}…, was "
            f"{str(previous.get('sha256'))[:12]}…)"
        ]
    atomic_write_text(
        record_file,
        json.dumps(
            {"model": config.model, "path": str(path), "factory": source.name, "sha256": digest},
            indent=2,
        )
        + "\n",
    )
    return [f"model {source.name} from {path} (SHA-256 {digest})"]
