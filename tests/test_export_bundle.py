"""The .adtn bundle: a trained compressed model survives save and load exactly."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from engine.compression import LayerSpec, compress, materialize
from engine.config import RunConfig
from engine.export import BundleError, load_bundle, read_bundle_metadata, save_bundle
from engine.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = [
    LayerSpec("conv2", depth=2),
    LayerSpec("fc1", depth=2, activation="leaky_relu"),
    LayerSpec("fc2", depth=1, activation="none", layout="stair"),
]


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, RunConfig]:
    """LeNet-5 with three ADTN layers after two Adam steps on random data."""
    torch.manual_seed(0)
    config = RunConfig(model="lenet5", dataset="synthetic", layers=list(LAYERS))
    model = build_model("lenet5", 1, 28, 10)
    compress(model, config.layers)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()
    return model.eval(), config


def test_round_trip_gives_identical_outputs_and_trainable_model(tmp_path, trained):
    model, config = trained
    path = tmp_path / "lenet.adtn"
    save_bundle(model, path, config)

    loaded = load_bundle(path)
    batch = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert not loaded.training
    assert {name for name, _ in loaded.named_parameters()} == {
        name for name, _ in model.named_parameters()
    }
    # Ready to train further: gradients reach the ADTN tensors.
    loaded.train()
    loaded(batch).sum().backward()
    assert loaded.fc1.adtn.gate_values.grad is not None


def test_bundle_holds_exactly_the_state_dict_and_its_metadata(tmp_path, trained):
    model, config = trained
    path = tmp_path / "lenet.adtn"
    save_bundle(model, path, config)

    stored = load_file(path)
    assert stored.keys() == model.state_dict().keys()
    assert "fc1.weight" not in stored and "fc1.bias" in stored

    meta = read_bundle_metadata(path)
    assert (meta.format, meta.format_version, meta.dataset) == ("adtn-bundle", 1, "synthetic")
    assert (meta.model.name, meta.model.in_channels, meta.model.image_size) == ("lenet5", 1, 28)
    assert RunConfig.from_dict(meta.config) == config
    fc1 = next(layer for layer in meta.layers if layer.name == "fc1")
    adtn = model.fc1.adtn
    assert fc1.weight_shape == (120, 400) and fc1.padded_shape == (128, 512) and fc1.Q == 16
    assert (fc1.depth, fc1.activation, fc1.negative_slope) == (2, "leaky_relu", 0.01)
    assert [(g.layer, g.pair, g.columns) for g in fc1.gates] == [
        (s.layer, s.pair, s.columns) for s in adtn.gate_specs()
    ]
    assert [g.tensor for g in fc1.gates] == [f"fc1.adtn.gates.{i}" for i in range(len(adtn.gates))]


def test_file_is_four_bytes_a_parameter_plus_a_small_header(tmp_path, trained):
    model, config = trained
    path = tmp_path / "lenet.adtn"
    save_bundle(model, path, config)
    (header_size,) = struct.unpack("<Q", path.read_bytes()[:8])
    numbers = sum(t.numel() for t in model.state_dict().values())
    assert path.stat().st_size == 8 + header_size + 4 * numbers
    assert header_size < 32 * 1024
    assert json.loads(path.read_bytes()[8 : 8 + header_size])["__metadata__"]["adtn"]


def test_bundle_without_config_loads_into_a_given_architecture(tmp_path, trained):
    model, _ = trained
    path = tmp_path / "bare.adtn"
    save_bundle(model, path)
    with pytest.raises(BundleError, match="names no zoo model"):
        load_bundle(path)
    loaded = load_bundle(path, model=build_model("lenet5", 1, 28, 10))
    with torch.no_grad():
        batch = torch.randn(3, 1, 28, 28)
        assert torch.equal(loaded(batch), model(batch))


def test_wrong_architecture_is_refused_before_loading(tmp_path, trained):
    model, config = trained
    path = tmp_path / "lenet.adtn"
    save_bundle(model, path, config)
    with pytest.raises(BundleError, match=r"conv1.weight.*the model needs \[6, 3, 5, 5\]"):
        load_bundle(path, model=build_model("lenet5", 3, 32, 10))


def test_materialised_weights_match_the_bundle_model(trained):
    model, _ = trained
    dense = materialize(model)
    with torch.no_grad():
        torch.testing.assert_close(dense.fc1.weight, model.fc1.adtn())


MIXED = [
    LayerSpec("conv1", encoding="tucker", ranks=[3, 1, 3, 2]),
    LayerSpec("conv2", encoding="cp", rank=5),
    LayerSpec("fc1", encoding="tt", ranks=[3, 2], factors=[[4, 5, 6], [4, 10, 10]]),
    LayerSpec("fc2", encoding="lowrank", rank=4),
    LayerSpec("fc3", depth=2),
]


def test_every_encoding_round_trips_with_its_own_factors(tmp_path):
    torch.manual_seed(0)
    config = RunConfig(model="lenet5", dataset="synthetic", layers=list(MIXED))
    model = build_model("lenet5", 1, 28, 10)
    compress(model, config.layers)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    path = tmp_path / "mixed.adtn"
    save_bundle(model.eval(), path, config)
    document = read_bundle_metadata(path)
    by_name = {layer.name: layer for layer in document.layers}
    assert {name: layer.encoding for name, layer in by_name.items()} == {
        "conv1": "tucker",
        "conv2": "cp",
        "fc1": "tt",
        "fc2": "lowrank",
        "fc3": "adtn",
    }
    assert {f.role for f in by_name["fc1"].factors} == {"core_0", "core_1", "core_2"}
    assert by_name["fc2"].options == {"rank": 4}
    stored = load_file(str(path))
    assert "fc1.weight" not in stored and stored["fc2.lowrank.U"].shape == (84, 4)
    loaded = load_bundle(path)
    batch = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
        assert torch.allclose(materialize(loaded)(batch), model(batch), atol=1e-5)
    assert loaded.fc1.encoding == "tt"
    loaded.train()
    loaded(batch).sum().backward()
    assert loaded.fc2.lowrank.U.grad is not None


def test_factor_shapes_that_disagree_with_the_options_are_refused(tmp_path):
    torch.manual_seed(0)
    config = RunConfig(model="lenet5", dataset="synthetic", layers=list(MIXED))
    model = build_model("lenet5", 1, 28, 10)
    compress(model, config.layers)
    path = tmp_path / "mixed.adtn"
    save_bundle(model.eval(), path, config)
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    document = json.loads(header["__metadata__"]["adtn"])
    layer = next(entry for entry in document["layers"] if entry["name"] == "fc2")
    layer["options"]["rank"] = 5  # the stored U and V have rank 4
    header["__metadata__"]["adtn"] = json.dumps(document)
    text = json.dumps(header).encode()
    bad = tmp_path / "bad.adtn"
    bad.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
    with pytest.raises(BundleError, match=r"factors\[\d\]\.shape"):
        load_bundle(bad)
