"""The run configuration: one dataclass, the single source of truth for a run.

The wizard fills it, the command line reads it from TOML, every run folder keeps the resolved
copy as ``config.toml`` and an export carries it.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from engine.choices import (
    DATASET_NAMES,
    IMAGEFOLDER_PREFIX,
    INITS,
    LEGACY_INDEX_ORDER,
    OPTIMIZERS,
    SCHEDULES,
)
from engine.errors import ConfigError
from engine.layer_spec import LayerSpec, LayerSpecError
from engine.limits import (
    MAX_BATCH_SIZE,
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_EPOCHS,
    MAX_EXAMPLES,
    MAX_FIT_STEPS,
    MAX_SEED,
    MAX_WORKERS,
)
from engine.model_spec import ModelSourceError, parse_model_spec
from engine.paths import atomic_write_text

# Version 2: an ADTN layer without ``index_order`` is interleaved (it was rows first in
# version 1); files without ``config_version`` are version 1 and are read as they were meant.
CONFIG_VERSION = 2

__all__ = ["ConfigError", "LayerSpec", "RunConfig"]

# "cuda:all": data-parallel on every GPU of the machine, one process each (torchrun)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+|:all)?)$")
MAX_IMAGE_SIZE = 1024  # image folders: input size, as large as a bundle may declare
LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerSpec))


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults give a quick LeNet-5 on MNIST."""

    name: str = ""  # run name; empty means "<model>-<dataset>"
    description: str = ""  # one line shown in preset lists
    # a zoo name, "torchvision:NAME" or "path/to/file.py:factory" (engine.model_sources)
    model: str = "lenet5"
    # a name of engine.choices.DATASET_NAMES, or "imagefolder:DIR" (engine.imagefolder)
    dataset: str = "mnist"
    data_root: str = ""  # empty: engine.paths.default_data_root()
    # pretrained weights: a safetensors / state-dict file, or "torchvision:DEFAULT" etc.
    weights: str = ""
    image_size: int = 0  # image folders: input size in pixels (0 = the images' own)
    test_fraction: float = 0.2  # image folders without test/: share of each class held out
    data_mean: list[float] = field(default_factory=list)  # empty: computed (image folders)
    data_std: list[float] = field(default_factory=list)
    download: bool = True  # fetch a missing data set
    augment: bool = True  # random crop + flip (CIFAR only)
    layers: list[LayerSpec] = field(default_factory=list)  # layers encoded as ADTNs
    # No layers to encode is refused unless asked for: an uncompressed reference run.
    dense_baseline: bool = False
    init: str = "scratch"  # "scratch": fresh ADTNs; "pretrained": train dense, fit, fine-tune
    pretrain_epochs: int = 0  # dense epochs before compression (init = "pretrained")
    fit_steps: int = 500  # optimisation steps fitting each ADTN to its dense weight
    epochs: int = 10  # epochs with the compressed model
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    adtn_lr: float = 0.0  # learning rate of ADTN parameters; 0 means the same as lr
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"
    lr_milestones: list[int] = field(default_factory=list)  # epochs where "step" decays
    lr_gamma: float = 0.1  # "step" decay factor
    warmup_epochs: int = 0  # linear learning-rate warm-up over the first epochs, by batch
    weight_decay: float = 0.0  # not applied to ADTN parameters
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA
    # Processes that decode an image folder too large for memory (0 = one per core, at most
    # 4); data sets held in memory (every built-in one, small folders) need none.
    workers: int = 0
    limit_train: int = 0  # use at most this many training examples (0 = all)
    limit_test: int = 0  # use at most this many test examples (0 = all)
    # Hold out this many training examples and evaluate on them instead of the test set
    # (0 = evaluate on the test set): learning-rate searches must never see the test set.
    holdout: int = 0
    # Knowledge distillation (engine.distill): a run folder or a weights file of a trained
    # model whose outputs the compressed model also learns from; "" for none.
    teacher: str = ""
    distill_weight: float = 0.5  # share of the loss taken from the teacher's outputs
    distill_temperature: float = 4.0  # how much both models' outputs are softened
    # The version of this file's meaning (CONFIG_VERSION); a file without it is version 1.
    config_version: int = CONFIG_VERSION

    # -- naming -------------------------------------------------------------------------

    @property
    def run_name(self) -> str:
        return self.name or f"{_short(self.model)}-{_short(self.dataset)}"

    @property
    def total_epochs(self) -> int:
        """Dense pre-training epochs (if any) plus the epochs of the compressed model."""
        return self.epochs + (self.pretrain_epochs if self.init == "pretrained" else 0)

    # -- conversion ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (TOML and JSON serialisable); layer options at their defaults are
        left out, so a configuration file lists only what was chosen."""
        data = dataclasses.asdict(self)
        data["layers"] = [
            spec.to_dict() if isinstance(spec, LayerSpec) else spec for spec in self.layers
        ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from plain values; unknown keys are errors naming the key. Not validated."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run configuration must be a table, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(known))}"
            )
        values = dict(data)
        version = values.get("config_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigError(f"config_version must be a whole number from 1 (got {version!r})")
        if version > CONFIG_VERSION:
            raise ConfigError(
                f"config_version {version} was written by a newer ADTN Studio (this one reads "
                f"up to {CONFIG_VERSION}); update ADTN Studio to use this file"
            )
        if "layers" in values:
            layers = values["layers"]
            if version == 1 and isinstance(layers, list):
                layers = [_layer_from_version_1(item) for item in layers]
            values["layers"] = _layers_from_data(layers)
        values["config_version"] = CONFIG_VERSION  # read as this version's meaning from here
        for key in ("data_mean", "data_std"):
            if isinstance(values.get(key), tuple):
                values[key] = list(values[key])
        if "lr_milestones" in values and isinstance(values["lr_milestones"], tuple):
            values["lr_milestones"] = list(values["lr_milestones"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a TOML file and validate it; any problem is one ``ConfigError`` line."""
        path = Path(path)
        data = _parse_toml(path)
        try:
            config = cls.from_dict(data)
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return config

    def save(self, path: str | Path) -> None:
        """Write as TOML (atomically)."""
        atomic_write_text(path, tomli_w.dumps(self.to_dict()))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (layers copied, so the copy is independent)."""
        copy = RunConfig.from_dict(self.to_dict())
        return dataclasses.replace(copy, **changes)

    # -- validation ---------------------------------------------------------------------

    def validate(self) -> RunConfig:
        """Raise ``ConfigError`` naming the first bad field and what it allows; return self."""
        for name in ("name", "description", "data_root"):
            _check_type(name, getattr(self, name), str)
        _check_model(self.model)
        _check_dataset(self.dataset)
        _check_type("weights", self.weights, str)
        _check_int("image_size", self.image_size, minimum=0)
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"image_size must be at most {MAX_IMAGE_SIZE} (got {self.image_size})"
            )
        _check_number("test_fraction", self.test_fraction, positive=True)
        if self.test_fraction >= 1:
            raise ConfigError(f"test_fraction must be below 1 (got {self.test_fraction})")
        _check_mean_std(self.data_mean, self.data_std)
        for name in ("download", "augment", "amp"):
            _check_type(name, getattr(self, name), bool)
        _check_layers(self.layers)
        _check_type("dense_baseline", self.dense_baseline, bool)
        _check_choice("init", self.init, INITS)
        _check_int("pretrain_epochs", self.pretrain_epochs, minimum=0)
        if self.init == "pretrained" and self.pretrain_epochs < 1 and not self.weights:
            raise ConfigError(
                "pretrain_epochs must be at least 1 when init = 'pretrained' "
                "(the dense model is trained first, then each ADTN is fitted to it)"
            )
        _check_int("fit_steps", self.fit_steps, minimum=0)
        _check_int("epochs", self.epochs, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_number("lr", self.lr, positive=True)
        _check_number("adtn_lr", self.adtn_lr)
        _check_number("momentum", self.momentum)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_type("lr_milestones", self.lr_milestones, list)
        for index, milestone in enumerate(self.lr_milestones):
            _check_int(f"lr_milestones[{index}]", milestone, minimum=1)
        if self.schedule == "step" and not self.lr_milestones:
            raise ConfigError("lr_milestones must list at least one epoch when schedule = 'step'")
        _check_number("lr_gamma", self.lr_gamma, positive=True)
        _check_int("warmup_epochs", self.warmup_epochs, minimum=0)
        _check_number("weight_decay", self.weight_decay)
        _check_int("seed", self.seed, minimum=0)
        _check_int("config_version", self.config_version, minimum=1)
        _check_type("teacher", self.teacher, str)
        _check_number("distill_weight", self.distill_weight)
        if not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"distill_weight must be between 0 and 1 (got {self.distill_weight})")
        _check_number("distill_temperature", self.distill_temperature, positive=True)
        if self.distill_temperature > 100:
            raise ConfigError(
                f"distill_temperature must be at most 100 (got {self.distill_temperature})"
            )
        _check_type("device", self.device, str)
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(
                f"device must be one of auto, cpu, cuda, cuda:N, cuda:all, mps "
                f"(got {self.device!r})"
            )
        for name in ("workers", "limit_train", "limit_test", "holdout"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_limits(self)
        return self


def _parse_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; a missing, huge, non-UTF-8, non-regular or absurdly
    nested file is a ``ConfigError`` naming what is wrong."""
    import os
    import stat

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise ConfigError(f"{path} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path} is {info.st_size:,} bytes; a run configuration is at "
                f"most {MAX_CONFIG_BYTES:,}"
            )
        with open(
            path,
            "rb",
            opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NONBLOCK", 0)),
        ) as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path} is UTF-16 text; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is harmless
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{path} holds NUL bytes: it is binary, not a TOML text file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:  # the parser recurses once per nested array or table
        raise ConfigError(
            f"{path} nests arrays or tables too deeply to be a run configuration"
        ) from None


def _layers_from_data(items: Any) -> list[LayerSpec]:
    if not isinstance(items, (list, tuple)):
        raise ConfigError("layers must be a list of tables like {name = 'fc1', depth = 2}")
    specs = []
    for index, item in enumerate(items):
        if isinstance(item, LayerSpec):
            specs.append(dataclasses.replace(item))
            continue
        if not isinstance(item, dict):
            raise ConfigError(f"layers[{index}] must be a table with a 'name' key")
        unknown = sorted(set(item) - set(LAYER_FIELDS))
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in layers[{index}]; "
                f"allowed keys: {', '.join(LAYER_FIELDS)}"
            )
        if "name" not in item:
            raise ConfigError(f"layers[{index}] needs a 'name'")
        values = dict(item)
        if isinstance(values.get("factors"), (list, tuple)):  # TOML may give tuples
            values["factors"] = [
                list(f) if isinstance(f, (list, tuple)) else f for f in values["factors"]
            ]
        if isinstance(values.get("ranks"), tuple):
            values["ranks"] = list(values["ranks"])
        specs.append(LayerSpec(**values))
    return specs


def _layer_from_version_1(item: Any) -> Any:
    """A version-1 layer entry in this version's terms: without ``index_order`` an ADTN layer
    was rows first then (the default became interleaved in version 2)."""
    if isinstance(item, dict) and item.get("encoding", "adtn") == "adtn":
        return {**item, "index_order": item.get("index_order", LEGACY_INDEX_ORDER)}
    return item


def _check_layers(specs: Any) -> None:
    _check_type("layers", specs, list)
    seen = set()
    for index, spec in enumerate(specs):
        where = f"layers[{index}]"
        if not isinstance(spec, LayerSpec):
            raise ConfigError(f"{where} must be a LayerSpec, not {type(spec).__name__}")
        if isinstance(spec.name, str) and spec.name in seen:
            raise ConfigError(f"{where}.name: layer {spec.name!r} is listed twice")
        seen.add(spec.name)
        try:
            spec.validate(where)
        except LayerSpecError as exc:
            raise ConfigError(str(exc)) from None


def _check_limits(config: RunConfig) -> None:
    """The bounds of engine.limits, checked when a configuration is read, so that a run that
    starts can also be exported (and an absurd one fails at once, not after hours)."""
    for index, spec in enumerate(config.layers):
        depth = getattr(spec, "depth", None)
        if (
            getattr(spec, "encoding", "adtn") == "adtn"
            and isinstance(depth, int)
            and depth > MAX_DEPTH
        ):
            raise ConfigError(
                f"layers[{index}].depth is {depth}; an ADTN has at most "
                f"{MAX_DEPTH} layers (export and loading refuse deeper ones)"
            )
    bounds = (
        ("epochs", MAX_EPOCHS),
        ("pretrain_epochs", MAX_EPOCHS),
        ("batch_size", MAX_BATCH_SIZE),
        ("fit_steps", MAX_FIT_STEPS),
        ("seed", MAX_SEED),
        ("limit_train", MAX_EXAMPLES),
        ("limit_test", MAX_EXAMPLES),
        ("holdout", MAX_EXAMPLES),
        ("workers", MAX_WORKERS),
    )
    for name, maximum in bounds:
        value = getattr(config, name)
        if isinstance(value, int) and not isinstance(value, bool) and value > maximum:
            raise ConfigError(f"{name} is {value:,}; at most {maximum:,} is allowed")
    milestones = config.lr_milestones if isinstance(config.lr_milestones, list) else []
    for index, milestone in enumerate(milestones):
        if isinstance(milestone, int) and milestone > MAX_EPOCHS:
            raise ConfigError(
                f"lr_milestones[{index}] is {milestone:,}; at most {MAX_EPOCHS:,} is allowed"
            )
    if not config.layers and not config.dense_baseline:
        raise ConfigError(
            "layers is empty: list at least one layer to encode (for example "
            "layers = [{name = 'fc1'}]), or set dense_baseline = true to train "
            "the uncompressed model as a baseline"
        )


def _short(source: str) -> str:
    """A model or data-set name without its path: ``torchvision:resnet18`` → ``resnet18``,
    ``nets/my.py:build`` → ``build``, ``imagefolder:/data/cats`` → ``cats``."""
    head, sep, tail = source.partition(":")
    if not sep:
        return source
    if head == "imagefolder":
        return Path(tail.rstrip("/\\")).name or "imagefolder"
    return source.rpartition(":")[2] or source


def _check_model(value: Any) -> None:
    """A zoo name, ``torchvision:NAME`` or ``FILE.py:factory`` (the file's existence and
    torchvision's list are checked when the model is built, not here: a config may be read
    on another machine)."""
    _check_type("model", value, str)
    try:
        parse_model_spec(value)
    except ModelSourceError as exc:
        raise ConfigError(str(exc)) from None


def _check_dataset(value: Any) -> None:
    _check_type("dataset", value, str)
    if value.startswith(IMAGEFOLDER_PREFIX):
        if not value[len(IMAGEFOLDER_PREFIX) :].strip():
            raise ConfigError("dataset 'imagefolder:DIR' needs the folder (DIR)")
        return
    if value not in DATASET_NAMES:
        raise ConfigError(
            f"dataset must be one of {', '.join(DATASET_NAMES)} or "
            f"'imagefolder:DIR' (got {value!r})"
        )


def _check_mean_std(mean: Any, std: Any) -> None:
    for name, values in (("data_mean", mean), ("data_std", std)):
        _check_type(name, values, list)
        if len(values) not in (0, 1, 3):
            raise ConfigError(f"{name} must list one value (grayscale) or three (RGB)")
        for index, value in enumerate(values):
            _check_number(f"{name}[{index}]", value, positive=name == "data_std")
    if len(mean) != len(std):
        raise ConfigError("data_mean and data_std must both be given, with as many values")


def _check_type(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {kind.__name__}, not {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum} (got {value})")


def _check_number(name: str, value: Any, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number (got {value})")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be greater than 0 (got {value})")
    if not positive and value < 0:
        raise ConfigError(f"{name} must be 0 or more (got {value})")
