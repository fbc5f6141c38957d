"""The model zoo: every model runs on every data set's input shape, names are stable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.data import DATASET_NAMES, dataset_info
from engine.models import MODEL_NAMES, build_model, describe_model

# data sets that share a shape (mnist, synthetic) are one case
INPUT_SHAPES = sorted(
    {
        (dataset_info(n).in_channels, dataset_info(n).image_size, dataset_info(n).num_classes)
        for n in DATASET_NAMES
    }
)


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_gives_one_logit_per_class(name, shape):
    channels, size, classes = shape
    torch.manual_seed(0)
    model = build_model(name, channels, size, classes).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()


def test_layer_names_are_stable_and_readable():
    lenet = build_model("lenet5", 1, 28, 10)
    linear = {
        n: tuple(m.weight.shape) for n, m in lenet.named_modules() if isinstance(m, nn.Linear)
    }
    assert linear == {"fc1": (120, 400), "fc2": (84, 120), "fc3": (10, 84)}
    assert isinstance(lenet.conv1, nn.Conv2d) and lenet.conv1.padding == (2, 2)
    assert {
        n for n, m in build_model("fc2", 1, 28, 10).named_modules() if isinstance(m, nn.Linear)
    } == {"fc1", "fc2"}


def test_vgg16_classifier_has_the_papers_4096_wide_layers():
    vgg = build_model("vgg16", 3, 32, 100)
    assert tuple(vgg.fc1.weight.shape) == (4096, 512)
    assert tuple(vgg.fc2.weight.shape) == (4096, 4096)
    assert tuple(vgg.fc3.weight.shape) == (100, 4096)
    convs = [n for n, m in vgg.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == [f"conv{i}" for i in range(1, 14)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 13


@pytest.mark.parametrize(
    "args, field",
    [
        (("resnet", 1, 28, 10), "model"),
        (("fc2", 0, 28, 10), "in_channels"),
        (("lenet5", 1, 8, 10), "image_size"),
        (("fc2", 1, 28, 1), "num_classes"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(args, field):
    with pytest.raises(ValueError, match=field):
        build_model(*args)


def test_every_model_has_a_description():
    for name in MODEL_NAMES:
        assert describe_model(name)
