"""Models from outside the zoo: torchvision classifiers adapted to the data, the user's own
Python file, pretrained weights, layer selection by pattern, and their bundles."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from _imagefolders import write_folder
from safetensors.torch import save_file
from torch import nn

from engine.compression import compress, describe_layers
from engine.config import ConfigError, LayerSpec, RunConfig
from engine.export import load_bundle, save_bundle
from engine.export.errors import BundleError
from engine.layer_select import (
    conv_layer_names,
    group_by_parent,
    linear_layer_names,
    select_layer_names,
    select_layers,
)
from engine.model_sources import ModelSourceError, build_torchvision, record_model_source
from engine.models import build_model, build_model_noted
from engine.runs import build_config_model_noted
from engine.weights import WeightsError, apply_state_dict, load_weights, read_state_dict

TINY_MODEL = """
    from torch import nn

    def make(in_channels, image_size, num_classes):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4 * image_size * image_size, num_classes))

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU())
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.body(x))

    def broken(num_classes):
        raise RuntimeError("no GPU here")

    def not_a_model():
        return 42
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_nets.py"
    path.write_text(textwrap.dedent(TINY_MODEL))
    return path


@pytest.fixture(scope="module")
def resnet(one_torch_thread):
    torch.manual_seed(0)
    return build_torchvision("resnet18", 1, 32, 10)


# -- the user's own file ------------------------------------------------------------------


def test_a_factory_in_a_file_gets_the_data_shape_as_keywords(model_file):
    model = build_model(f"{model_file}:make", 3, 8, 5)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    built = build_model_noted(f"{model_file}:Fixed", 1, 28, 10)  # a class, no arguments
    assert [n for n, _ in built.model.named_modules()][-1] == "head"
    assert any("takes no in_channels" in note for note in built.notes)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{file}:missing", "has no 'missing'"),
        ("{file}:broken", "broken\\(num_classes=10\\) failed: RuntimeError: no GPU here"),
        ("{file}:not_a_model", "returned int, not a torch.nn.Module"),
        ("{dir}/nowhere.py:make", "model file not found"),
        ("{dir}/bad_syntax.py:make", "line 1: syntax error"),
        ("{dir}/bad_import.py:make", "failed to import: ModuleNotFoundError"),
        ("nonsense", "torchvision:NAME"),
        ("torchvision:resnet1800", "torchvision has no classifier 'resnet1800'"),
    ],
)
def test_bad_model_sources_get_one_clear_message(tmp_path, model_file, spec, message):
    (tmp_path / "bad_syntax.py").write_text("def make(:\n")
    (tmp_path / "bad_import.py").write_text("import no_such_module_here\n")
    with pytest.raises(ModelSourceError, match=message) as caught:
        build_model(spec.format(file=model_file, dir=tmp_path), 1, 28, 10)
    assert "\n" not in str(caught.value)


def test_config_accepts_prefixed_models_and_records_the_file_hash(tmp_path, model_file):
    for model in ("torchvision:resnet18", f"{model_file}:make", "lenet5"):
        RunConfig(model=model, dense_baseline=True).validate()
    with pytest.raises(ConfigError, match="model must be one of"):
        RunConfig(model="resnet", dense_baseline=True).validate()
    config = RunConfig(model=f"{model_file}:make", dense_baseline=True)
    notes = record_model_source(config, tmp_path)
    record = json.loads((tmp_path / "model_source.json").read_text())
    import hashlib

    assert record["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert record["path"] == str(model_file.resolve()) and record["sha256"] in notes[0]
    model_file.write_text(model_file.read_text() + "\n# edited\n")
    assert "changed since this run started" in record_model_source(config, tmp_path)[0]


# -- torchvision -----------------------------------------------------------------------------


def test_torchvision_model_is_adapted_to_small_grayscale_images_and_says_so(resnet):
    model = resnet.model
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, nn.Identity) and model.fc.out_features == 10
    text = " ".join(resnet.notes)
    assert "10 classes" in text and "1 channel" in text and "3×3 with stride 1" in text
    assert model.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    large = build_torchvision("resnet18", 3, 96, 1000)
    assert large.model.conv1.kernel_size == (7, 7) and not large.notes


def test_a_model_that_cannot_take_the_image_size_says_so():
    with pytest.raises(ModelSourceError, match="inception_v3 cannot take 32×32 images"):
        build_torchvision("inception_v3", 3, 32, 10)


def test_resnet18_layers_compress_train_export_and_reload(resnet, tmp_path):
    model = build_torchvision("resnet18", 1, 32, 10).model
    model.load_state_dict(resnet.model.state_dict())
    infos = describe_layers(model)
    names = [info.name for info in infos]
    assert "layer1.0.conv1" in names and "layer2.0.downsample.0" in names and names[-1] == "fc"
    chosen = select_layers(model, "fc, layer4.1.*")
    assert chosen == ["layer4.1.conv1", "layer4.1.conv2", "fc"]
    compress(model, [LayerSpec(name=n) for n in chosen])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    folder = write_folder(
        tmp_path / "images", classes=10, per_class=1, test_per_class=1, size=(32, 32)
    )
    config = RunConfig(
        model="torchvision:resnet18",
        dataset=f"imagefolder:{folder}",
        layers=[LayerSpec(name=n) for n in chosen],
    )
    path = tmp_path / "resnet.adtn"
    model.eval()
    expected = model(images)
    document = save_bundle(model, path, config)
    assert (document.model.name, document.model.image_size) == ("torchvision:resnet18", 32)
    loaded = load_bundle(path)  # torchvision models rebuild by themselves
    assert torch.allclose(loaded(images), expected, atol=1e-4)


# -- layer selection ------------------------------------------------------------------------


def test_layer_patterns_select_in_model_order_and_name_what_matches_nothing(resnet):
    infos = describe_layers(resnet.model)
    assert select_layer_names(infos, ["layer4.*.conv2", "fc"]) == [
        "layer4.0.conv2",
        "layer4.1.conv2",
        "fc",
    ]
    with pytest.raises(ValueError, match="'layr4.\\*' matches no layer .*layer1.0.conv1"):
        select_layer_names(infos, "fc,layr4.*")
    with pytest.raises(ValueError, match="no layer pattern"):
        select_layer_names(infos, " , ")
    assert linear_layer_names(infos) == ["fc"]
    big = conv_layer_names(infos, min_params=1_000_000)
    assert big and all(n.startswith("layer4") for n in big)
    groups = dict(group_by_parent(infos))
    assert [i.name for i in groups["layer1.0"]] == ["layer1.0.conv1", "layer1.0.conv2"]


# -- pretrained weights ----------------------------------------------------------------------


def test_weights_from_safetensors_and_torch_files_load_exactly(tmp_path, model_file):
    source = build_model(f"{model_file}:make", 1, 8, 3)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        target = build_model(f"{model_file}:make", 1, 8, 3)
        notes = load_weights(target, str(tmp_path / name), f"{model_file}:make")
        assert "4 of 4 tensors" in notes[0]
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value)


def test_weights_files_that_hold_objects_or_do_not_fit_are_refused(tmp_path, model_file):
    torch.save({"weight": torch.zeros(2), "hook": print}, tmp_path / "pickled.pt")
    with pytest.raises(WeightsError, match="objects are never unpickled"):
        read_state_dict(tmp_path / "pickled.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match="weights file not found"):
        read_state_dict(tmp_path / "none.pt")
    model = build_model(f"{model_file}:make", 1, 8, 3)
    with pytest.raises(WeightsError, match="missing: 0.bias"):
        apply_state_dict(model, {"0.weight": torch.zeros(4, 1, 3, 3)}, "w.pt")
    state = dict(model.state_dict())
    state["3.weight"] = torch.zeros(5, 256)
    with pytest.raises(WeightsError, match="3.weight has shape \\[5, 256\\]"):
        apply_state_dict(model, state, "w.pt")


def test_imagenet_weights_fit_an_adapted_model_keeping_what_they_can(resnet):
    rgb = build_torchvision("resnet18", 3, 224, 1000).model  # stands in for ImageNet weights
    model = build_torchvision("resnet18", 1, 224, 10)
    notes = apply_state_dict(model.model, rgb.state_dict(), "imagenet.pt", model.adapted)
    summed = rgb.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.equal(model.model.conv1.weight, summed)
    assert torch.equal(model.model.layer3[0].conv1.weight, rgb.layer3[0].conv1.weight)
    assert any("fc: freshly initialised" in n for n in notes)
    assert any("colour filters summed" in n for n in notes)


def test_torchvision_weights_missing_from_the_cache_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = build_model("torchvision:resnet18", 3, 32, 10)
    with pytest.raises(WeightsError, match="not in the local torch cache .*--weights FILE"):
        load_weights(model, "torchvision:DEFAULT", "torchvision:resnet18")
    with pytest.raises(WeightsError, match="has no weights 'NOPE'; choose one of DEFAULT"):
        load_weights(model, "torchvision:NOPE", "torchvision:resnet18")
    with pytest.raises(WeightsError, match="fit only a torchvision model"):
        load_weights(build_model("lenet5", 1, 28, 10), "torchvision:DEFAULT", "lenet5")


def test_torchvision_weights_in_the_cache_are_used(tmp_path, monkeypatch):
    from torchvision import models

    from engine.weights import torchvision_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = build_torchvision("resnet18", 3, 224, 1000).model
    url = models.get_model_weights("resnet18").DEFAULT.url
    cached = torchvision_cache_file(url)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = build_model_noted("torchvision:resnet18", 3, 224, 1000)
    notes = load_weights(model.model, "torchvision:DEFAULT", "torchvision:resnet18")
    assert "torchvision resnet18 IMAGENET1K_V1" in notes[0]
    assert torch.equal(model.model.fc.weight, reference.fc.weight)


def test_config_model_with_weights_loads_them_before_compressing(tmp_path, model_file):
    source = build_model(f"{model_file}:make", 1, 28, 10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    config = RunConfig(
        model=f"{model_file}:make",
        dataset="synthetic",
        weights=str(tmp_path / "w.pt"),
        init="pretrained",
        pretrain_epochs=0,
        layers=[LayerSpec(name="3")],
    )
    config.validate()  # pretrained with no dense epochs is fine when weights are given
    model, report, notes = build_config_model_noted(config, compressed=False, load_weights=True)
    assert torch.equal(model[3].weight, source[3].weight)
    assert any("weights loaded from" in n for n in notes)
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        config.replace(weights="").validate()


# -- bundles of a user's model --------------------------------------------------------------


def test_a_bundle_of_a_users_model_needs_its_factory(tmp_path, model_file):
    spec = f"{model_file}:make"
    config = RunConfig(model=spec, dataset="synthetic", layers=[LayerSpec(name="3")])
    model = build_model(spec, 1, 28, 10)
    compress(model, ["3"])
    model.eval()
    path = tmp_path / "own.adtn"
    save_bundle(model, path, config)
    with pytest.raises(BundleError, match=f"built by {model_file}:make; .*model_factory="):
        load_bundle(path)
    from engine.model_sources import load_factory

    loaded = load_bundle(path, model_factory=load_factory(str(model_file), "make"))
    images = torch.randn(3, 1, 28, 28)
    assert torch.allclose(loaded(images), model(images), atol=1e-5)
    with pytest.raises(BundleError, match="returned int"):
        load_bundle(path, model_factory=lambda: 42)


def test_a_bundle_never_imports_the_file_it_names(tmp_path, model_file):
    """A bundle whose metadata names a Python file is refused without running that file."""
    trap = tmp_path / "trap.py"
    marker = tmp_path / "ran"
    trap.write_text(f"open({str(marker)!r}, 'w').close()\n" + textwrap.dedent(TINY_MODEL))
    spec = f"{trap}:make"
    model = build_model(f"{model_file}:make", 1, 28, 10)  # the same network, another file
    compress(model, ["3"])
    path = tmp_path / "trap.adtn"
    save_bundle(
        model, path, RunConfig(model=spec, dataset="synthetic", layers=[LayerSpec(name="3")])
    )
    assert not marker.exists()
    with pytest.raises(BundleError, match="model_factory"):
        load_bundle(path)
    assert not marker.exists()
