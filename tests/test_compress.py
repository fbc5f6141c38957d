"""compress / plan_compression / describe_layers / materialize on whole models."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from engine import ADTNConv2d, ADTNLinear, compress, describe_layers, materialize, plan_compression
from engine.compression import LayerSpec


def lenet_like() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 5, padding=2),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(400, 120),
            act3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            act4=nn.ReLU(),
            fc3=nn.Linear(84, 10),
        )
    )


class VGGLike(nn.Module):
    """Nested modules, batch norm, and the paper's two large linear layers."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(8, 4096),
                relu=nn.ReLU(),
                fc2=nn.Linear(4096, 512),
                out=nn.Linear(512, 10),
            )
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_compress_lenet_replaces_layers_and_reports_counts():
    torch.manual_seed(0)
    model = lenet_like()
    before = sum(p.numel() for p in model.parameters())
    report = compress(model, ["conv2", "fc1", "fc2", "fc3"], depth=2)
    assert isinstance(model.conv2, ADTNConv2d) and isinstance(model.fc1, ADTNLinear)
    assert isinstance(model.conv1, nn.Conv2d)
    assert [r.name for r in report.rows] == ["conv2", "fc1", "fc2", "fc3"]
    fc1 = report.rows[1]
    assert (fc1.kind, fc1.weight_shape, fc1.Q, fc1.depth) == ("linear", (120, 400), 16, 2)
    assert fc1.dense_params == 48_000
    assert fc1.encoded_params == model.fc1.adtn.num_parameters()
    assert fc1.ratio == pytest.approx(48_000 / fc1.encoded_params)
    after = sum(p.numel() for p in model.parameters())
    assert (report.model_params_before, report.model_params_after) == (before, after)
    assert report.ratio == pytest.approx(before / after)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_like_paper_layers_and_nested_names():
    model = VGGLike()
    report = compress(model, {"classifier.fc1": 1, "classifier.fc2": 1})
    assert isinstance(model.classifier.fc2, ADTNLinear)
    shapes = {r.name: r.weight_shape for r in report.rows}
    assert shapes == {"classifier.fc1": (4096, 8), "classifier.fc2": (512, 4096)}
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_plan_matches_compress_without_building():
    model = lenet_like()
    specs = [LayerSpec("fc1", 3), LayerSpec("fc2", 2, "leaky_relu", "stair"), LayerSpec("conv1", 1)]
    planned = plan_compression(model, specs)
    assert isinstance(model.fc1, nn.Linear)  # planning changes nothing
    done = compress(model, specs)
    assert planned.to_dict() == {**done.to_dict(), "fit_errors": {}}
    assert planned.model_params_after == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "layers, message",
    [
        (["fc9"], "'fc9' is not a layer"),
        (["act1"], "'act1' is a ReLU"),
        (["fc1", "fc1"], "listed twice"),
        ([LayerSpec("fc1", depth=0)], "depth"),
        ([LayerSpec("fc1", activation="gelu")], "activation"),
        ([LayerSpec("fc1", layout="ring")], "layout"),
    ],
)
def test_bad_requests_raise_and_replace_nothing(layers, message):
    model = lenet_like()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        compress(model, ["fc2"] + layers)
    assert isinstance(model.fc2, nn.Linear)  # nothing half-replaced
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_layers_too_small_to_encode_are_named():
    model = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 2))
    with pytest.raises(ValueError, match="'0' cannot be encoded.*'1' cannot be encoded"):
        compress(model, ["0", "1"])
    infos = describe_layers(model)
    assert [i.encodable for i in infos] == [False, False] and "at least 3" in infos[0].reason


def test_already_compressed_layers_are_refused():
    model = lenet_like()
    compress(model, ["fc1"])
    with pytest.raises(ValueError, match="already an encoded layer"):
        compress(model, ["fc1"])
    assert [i.compressed for i in describe_layers(model) if i.name == "fc1"] == [True]


def test_copy_mode_leaves_the_original_alone():
    model = lenet_like()
    report = compress(model, ["fc1"], inplace=False)
    assert isinstance(model.fc1, nn.Linear)
    assert isinstance(report.model.fc1, ADTNLinear)


def test_pretrained_fit_reports_errors():
    model = lenet_like()
    report = compress(model, ["fc3"], fit=True, fit_steps=20)
    assert set(report.fit_errors) == {"fc3"} and 0 < report.fit_errors["fc3"] < 1.5


def test_materialize_gives_a_dense_model_with_the_same_outputs_and_keys():
    torch.manual_seed(1)
    model = lenet_like()
    reference_keys = {k: v.shape for k, v in lenet_like().state_dict().items()}
    compress(model, ["conv2", "fc1", "fc2"], depth=2)
    dense = materialize(model)
    assert not any(isinstance(m, (ADTNLinear, ADTNConv2d)) for m in dense.modules())
    assert {k: v.shape for k, v in dense.state_dict().items()} == reference_keys
    x = torch.randn(3, 1, 28, 28)
    model.eval()
    dense.eval()
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-6)


def test_describe_layers_lists_every_weight_layer():
    infos = describe_layers(lenet_like())
    assert [i.name for i in infos] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert (
        infos[0].kind == "conv2d"
        and infos[0].weight_shape == (6, 1, 5, 5)
        and infos[0].dense_params == 156
    )
    assert all(i.encodable for i in infos)


def test_report_table_and_dict():
    report = plan_compression(lenet_like(), ["fc1", "fc2"])
    table = report.format_table()
    assert "fc1" in table and "model:" in table
    d = report.to_dict()
    assert d["model_params_after"] == report.model_params_after
    assert d["layers"][0]["weight_shape"] == [120, 400]


def test_engine_exports_the_function_even_after_its_module_is_imported():
    import engine
    import engine.compression  # noqa: F401  (a submodule named like the function would shadow it)

    assert callable(engine.compress) and engine.compress.__name__ == "compress"
