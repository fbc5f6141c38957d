"""A model name split into where the model comes from; no PyTorch, so that a run
configuration can be checked (by the window, by ``RunConfig.validate``) before it loads.

``lenet5`` names the zoo, ``torchvision:resnet18`` a torchvision classifier and
``path/to/file.py:factory`` a function in the user's file (``engine.model_sources`` builds
them).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.choices import MODEL_NAMES, TORCHVISION_PREFIX
from engine.errors import ModelSourceError


@dataclass(frozen=True)
class ModelSource:
    """What a model name points at: ``kind`` is "zoo", "torchvision" or "file"."""

    kind: str
    name: str  # zoo or torchvision name, or the factory's name in the file
    path: str = ""  # the Python file (kind "file")

    @property
    def spec(self) -> str:
        if self.kind == "torchvision":
            return TORCHVISION_PREFIX + self.name
        if self.kind == "file":
            return f"{self.path}:{self.name}"
        return self.name


def parse_model_spec(spec: str) -> ModelSource:
    """Split a model name into its source; ``ModelSourceError`` when it fits none."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSourceError(
            "model must be a name such as 'lenet5', 'torchvision:resnet18' "
            "or 'path/to/file.py:factory'"
        )
    if spec in MODEL_NAMES:
        return ModelSource("zoo", spec)
    if spec.startswith(TORCHVISION_PREFIX):
        return ModelSource("torchvision", spec[len(TORCHVISION_PREFIX) :])
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory.isidentifier():
        return ModelSource("file", factory, path)
    raise ModelSourceError(
        f"model must be one of {', '.join(MODEL_NAMES)}, 'torchvision:NAME' or "
        f"'path/to/file.py:factory' (got {spec!r})"
    )
