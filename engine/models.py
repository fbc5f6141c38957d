"""The model zoo: FC-2, LeNet-5, AlexNet, ZFNet and VGG-16 for MNIST- and CIFAR-sized inputs.

Every model is an ``nn.Sequential`` of named children, so its layers have short, stable names
(``conv1``, ``fc1``...) that configs, reports and the UI use to pick the layers to compress.
AlexNet, ZFNet and VGG-16 are the usual small-image adaptations (3×3/5×5 kernels, stride 1)
of the ImageNet designs, keeping their characteristic 4096-wide classifiers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from engine.choices import MODEL_NAMES, MODEL_TITLES
from engine.errors import ConfigError

MIN_IMAGE_SIZE = 28  # the smallest input the convolutional stacks are built for


def build_fc2(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """FC-2: flatten → fc1 (→256) → ReLU → fc2 (→classes); 784→256→10 on MNIST."""
    in_features = in_channels * image_size * image_size
    return nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(in_features, 256)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(256, num_classes)),
            ]
        )
    )


def build_lenet5(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """LeNet-5: conv1 6@5×5, pool, conv2 16@5×5, pool, fc1 120, fc2 84, fc3 classes.

    Inputs smaller than 32×32 are zero-padded in ``conv1`` (padding 2 for 28×28) so that the
    flattened features are 16·5·5 = 400, as in the original design.
    """
    padding = max(0, (32 - image_size + 1) // 2)
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(in_channels, 6, 5, padding=padding)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
    ]
    features = _flat_features(layers, in_channels, image_size)
    layers += [
        ("fc1", nn.Linear(features, 120)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)),
        ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(84, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def build_alexnet(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """AlexNet for small images: five convolutions (64, 192, 384, 256, 256; 5×5 then 3×3),
    three max-pools, and the 4096-4096 classifier with dropout (fc1, fc2, fc3)."""
    layers = _conv_stack(
        in_channels,
        [
            (64, 5, 2, True),
            (192, 5, 2, True),
            (384, 3, 1, False),
            (256, 3, 1, False),
            (256, 3, 1, True),
        ],
    )
    return _with_classifier(layers, in_channels, image_size, num_classes, hidden=4096)


def build_zfnet(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """ZFNet for small images: AlexNet's layout with ZFNet's widths (96, 256, 384, 384, 256),
    a 7×7 first convolution, and the 4096-4096 classifier with dropout (fc1, fc2, fc3)."""
    layers = _conv_stack(
        in_channels,
        [
            (96, 7, 3, True),
            (256, 5, 2, True),
            (384, 3, 1, False),
            (384, 3, 1, False),
            (256, 3, 1, True),
        ],
    )
    return _with_classifier(layers, in_channels, image_size, num_classes, hidden=4096)


VGG16_WIDTHS = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def build_vgg16(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """VGG-16 with batch norm: 13 3×3 convolutions (conv1..conv13, bn1..bn13), five pools,
    classifier fc1 512→4096, fc2 4096→4096, fc3 4096→classes — fc1 and fc2 (weights
    4096×512 and 4096×4096) are the layers the ADTN paper compresses."""
    layers: list[tuple[str, nn.Module]] = []
    channels, conv_index, pool_index = in_channels, 0, 0
    for width in VGG16_WIDTHS:
        if isinstance(width, str):  # "M": a pool
            pool_index += 1
            # ceil_mode keeps a 1×1 map after the fifth pool for 28×28 inputs as for 32×32
            layers.append((f"pool{pool_index}", nn.MaxPool2d(2, ceil_mode=True)))
            continue
        conv_index += 1
        layers += [
            (f"conv{conv_index}", nn.Conv2d(channels, width, 3, padding=1, bias=False)),
            (f"bn{conv_index}", nn.BatchNorm2d(width)),
            (f"relu{conv_index}", nn.ReLU()),
        ]
        channels = width
    layers.append(("flatten", nn.Flatten()))
    features = _flat_features(layers, in_channels, image_size)
    layers += [
        ("fc1", nn.Linear(features, 4096)),
        ("relu14", nn.ReLU()),
        ("drop1", nn.Dropout(0.5)),
        ("fc2", nn.Linear(4096, 4096)),
        ("relu15", nn.ReLU()),
        ("drop2", nn.Dropout(0.5)),
        ("fc3", nn.Linear(4096, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


MODEL_FACTORIES: dict[str, Callable[[int, int, int], nn.Sequential]] = {
    "fc2": build_fc2,
    "lenet5": build_lenet5,
    "alexnet": build_alexnet,
    "zfnet": build_zfnet,
    "vgg16": build_vgg16,
}
# The zoo's names and titles are the shared vocabulary (engine.choices), one factory each.
assert tuple(MODEL_FACTORIES) == MODEL_NAMES, "engine.choices.MODEL_NAMES lists the zoo"


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build model ``name`` for square images of ``image_size`` pixels with ``in_channels``
    channels and ``num_classes`` outputs, freshly initialised. ``name`` is one of
    ``MODEL_NAMES``, ``torchvision:NAME`` or ``path/to/file.py:factory``
    (``engine.model_sources``)."""
    return build_model_noted(name, in_channels, image_size, num_classes).model


def build_model_noted(name: str, in_channels: int, image_size: int, num_classes: int):
    """``build_model`` plus what was adapted to fit the data, as an
    ``engine.model_sources.BuiltModel`` (its ``notes`` belong in the run's log)."""
    from engine.model_sources import BuiltModel, build_source_model, parse_model_spec

    source = parse_model_spec(name)
    minimum_size = MIN_IMAGE_SIZE if source.kind == "zoo" else 1
    for arg, value, minimum in (
        ("in_channels", in_channels, 1),
        ("image_size", image_size, minimum_size),
        ("num_classes", num_classes, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{arg} must be a whole number of at least {minimum} (got {value!r})")
    if source.kind != "zoo":
        return build_source_model(name, in_channels, image_size, num_classes)
    return BuiltModel(MODEL_FACTORIES[name](in_channels, image_size, num_classes))


def model_title(name: str) -> str:
    """How lists show model ``name``."""
    return MODEL_TITLES.get(name, name)


def describe_model(name: str) -> str:
    """The first paragraph of the factory's docstring, on one line (for lists)."""
    if name not in MODEL_FACTORIES:
        raise ConfigError(f"model must be one of {', '.join(MODEL_NAMES)} (got {name!r})")
    first_paragraph = (MODEL_FACTORIES[name].__doc__ or "").strip().split("\n\n")[0]
    return " ".join(first_paragraph.split())


def _conv_stack(
    in_channels: int, spec: list[tuple[int, int, int, bool]]
) -> list[tuple[str, nn.Module]]:
    """conv{i} → relu{i} (→ pool{j}) for (width, kernel, padding, pool_after) entries."""
    layers: list[tuple[str, nn.Module]] = []
    channels, pool_index = in_channels, 0
    for index, (width, kernel, padding, pool_after) in enumerate(spec, start=1):
        layers += [
            (f"conv{index}", nn.Conv2d(channels, width, kernel, padding=padding)),
            (f"relu{index}", nn.ReLU()),
        ]
        if pool_after:
            pool_index += 1
            layers.append((f"pool{pool_index}", nn.MaxPool2d(2)))
        channels = width
    layers.append(("flatten", nn.Flatten()))
    return layers


def _with_classifier(
    layers: list[tuple[str, nn.Module]],
    in_channels: int,
    image_size: int,
    num_classes: int,
    hidden: int,
) -> nn.Sequential:
    """Append the dropout → fc1 → fc2 → fc3 classifier of AlexNet-style networks."""
    features = _flat_features(layers, in_channels, image_size)
    relu_index = sum(1 for name, _ in layers if name.startswith("relu"))
    layers = layers + [
        ("drop1", nn.Dropout(0.5)),
        ("fc1", nn.Linear(features, hidden)),
        (f"relu{relu_index + 1}", nn.ReLU()),
        ("drop2", nn.Dropout(0.5)),
        ("fc2", nn.Linear(hidden, hidden)),
        (f"relu{relu_index + 2}", nn.ReLU()),
        ("fc3", nn.Linear(hidden, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _side(value: int | tuple[int, ...]) -> int:
    """One side of a pooling window, stride or padding (the models pool square maps)."""
    return value if isinstance(value, int) else value[0]


def _flat_features(layers: list[tuple[str, nn.Module]], in_channels: int, image_size: int) -> int:
    """Width of the flattened feature vector after the convolutions and pools of ``layers``
    (shape arithmetic only, so building a model costs no forward pass)."""
    channels, size = in_channels, image_size
    for _, layer in layers:
        if isinstance(layer, nn.Conv2d):
            kernel, stride = layer.kernel_size[0], layer.stride[0]
            if layer.padding != "same":  # "same" (stride 1 only) keeps the size
                padding = 0 if isinstance(layer.padding, str) else layer.padding[0]  # or "valid"
                size = (size + 2 * padding - layer.dilation[0] * (kernel - 1) - 1) // stride + 1
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            pool, pool_stride = _side(layer.kernel_size), _side(layer.stride)
            span = size + 2 * _side(layer.padding) - pool
            size = (-(-span // pool_stride) if layer.ceil_mode else span // pool_stride) + 1
        if size < 1:
            raise ConfigError(f"image_size {image_size} is too small for this model")
    return channels * size * size
