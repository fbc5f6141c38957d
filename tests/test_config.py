"""The run configuration: TOML round trip, validation messages, presets."""

from __future__ import annotations

import tomllib

import pytest

from engine.config import CONFIG_VERSION, ConfigError, LayerSpec, RunConfig
from engine.presets import list_presets, load_preset


def full_config() -> RunConfig:
    return RunConfig(
        name="demo",
        description="a demo",
        model="fc2",
        dataset="synthetic",
        data_root="/d",
        download=False,
        augment=False,
        layers=[
            LayerSpec("fc1", depth=3, activation="leaky_relu", layout="stair"),
            LayerSpec("fc2"),
        ],
        init="pretrained",
        pretrain_epochs=2,
        fit_steps=50,
        epochs=4,
        batch_size=32,
        optimizer="sgd",
        lr=0.05,
        adtn_lr=0.02,
        momentum=0.8,
        schedule="step",
        lr_milestones=[2, 3],
        lr_gamma=0.5,
        weight_decay=1e-4,
        seed=7,
        device="cpu",
        amp=False,
        workers=0,
        limit_train=100,
        limit_test=50,
    )


def test_toml_round_trip_keeps_every_field(tmp_path):
    config = full_config().validate()
    config.save(tmp_path / "run.toml")
    assert RunConfig.load(tmp_path / "run.toml") == config
    assert RunConfig.from_dict(config.to_dict()) == config


def test_save_leaves_no_temporary_files(tmp_path):
    full_config().save(tmp_path / "run.toml")
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"]


def test_defaults_are_valid_and_total_epochs_counts_pretraining():
    baseline = RunConfig(dense_baseline=True)
    assert baseline.validate().total_epochs == RunConfig().epochs
    assert full_config().total_epochs == 6


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "fc2"\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        RunConfig.load(path)


def test_unknown_layer_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"unknown key 'width' in layers\[0\]"):
        RunConfig.from_dict({"layers": [{"name": "fc1", "width": 3}]})


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("model = \n")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        RunConfig.load(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "resnet"}, "model must be one of fc2, lenet5"),
        (
            {"dataset": "imagenet"},
            "dataset must be one of mnist, fashionmnist, kmnist, cifar10, cifar100, synthetic or "
            ".imagefolder:DIR.",
        ),
        ({"name": 3}, "name must be a str"),
        ({"download": "yes"}, "download must be a bool"),
        ({"augment": 1}, "augment must be a bool"),
        ({"amp": None}, "amp must be a bool"),
        ({"init": "warm"}, "init must be one of scratch, pretrained"),
        ({"init": "pretrained", "pretrain_epochs": 0}, "pretrain_epochs must be at least 1"),
        ({"pretrain_epochs": -1}, "pretrain_epochs must be at least 0"),
        ({"fit_steps": 1.5}, "fit_steps must be a whole number"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of adam, adamw, sgd"),
        ({"lr": 0}, "lr must be greater than 0"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"adtn_lr": -1.0}, "adtn_lr must be 0 or more"),
        ({"momentum": -0.1}, "momentum must be 0 or more"),
        ({"schedule": "linear"}, "schedule must be one of none, cosine, step"),
        ({"schedule": "step"}, "lr_milestones must list at least one epoch"),
        ({"lr_milestones": [0]}, r"lr_milestones\[0\] must be at least 1"),
        ({"lr_gamma": 0.0}, "lr_gamma must be greater than 0"),
        ({"weight_decay": -1e-3}, "weight_decay must be 0 or more"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, cuda:N, cuda:all, mps"),
        ({"workers": -2}, "workers must be at least 0"),
        ({"limit_train": True}, "limit_train must be a whole number"),
        ({"limit_test": -5}, "limit_test must be at least 0"),
    ],
)
def test_each_validation_error_names_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes).validate()


@pytest.mark.parametrize(
    "layers, message",
    [
        ([LayerSpec("")], r"layers\[0\].name must be a layer name"),
        ([LayerSpec("fc1"), LayerSpec("fc1")], r"layers\[1\].name: layer 'fc1' is listed twice"),
        ([LayerSpec("fc1", depth=0)], r"layers\[0\].depth must be at least 1"),
        ([LayerSpec("fc1", activation="tanh")], r"layers\[0\].activation must be one of relu"),
        ([LayerSpec("fc1", layout="ring")], r"layers\[0\].layout must be one of brick, stair"),
        (["fc1"], r"layers\[0\] must be a LayerSpec"),
    ],
)
def test_layer_errors_name_the_layer_entry(layers, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(layers=layers).validate()


def test_config_error_from_a_file_names_file_and_field(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epochs = -3\n")
    with pytest.raises(ConfigError, match=r"run.toml: epochs must be at least 1"):
        RunConfig.load(path)


def test_replace_copies_layers():
    config = full_config()
    copy = config.replace(epochs=9)
    copy.layers[0].depth = 1
    assert config.layers[0].depth == 3 and copy.epochs == 9


def test_the_papers_presets_exist_and_are_valid():
    names = list_presets()
    for required in (
        "fc2-mnist",
        "lenet5-mnist",
        "alexnet-cifar10",
        "zfnet-cifar10",
        "vgg16-cifar10",
        "vgg16-cifar100",
    ):
        assert required in names
    for name in names:
        config = load_preset(name)
        assert config.name == name and config.layers and config.description


def test_vgg_presets_compress_the_two_4096_wide_layers():
    for name in ("vgg16-cifar10", "vgg16-cifar100"):
        assert [spec.name for spec in load_preset(name).layers] == ["fc1", "fc2"]


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; available: .*fc2-mnist"):
        load_preset("nope")


# -- configuration versions: the ADTN's default index order changed in version 2 ------------


def test_a_version_1_file_keeps_its_rows_first_adtn_layers(tmp_path):
    path = tmp_path / "config.toml"  # as a run folder of an older release wrote it
    path.write_text(
        'model = "fc2"\ndataset = "mnist"\n\n'
        '[[layers]]\nname = "fc1"\ndepth = 3\n\n'
        '[[layers]]\nname = "fc2"\ndepth = 3\nindex_order = "interleaved"\n'
    )
    config = RunConfig.load(path)
    assert [spec.index_order for spec in config.layers] == ["rows_first", "interleaved"]
    assert config.config_version == CONFIG_VERSION
    config.save(tmp_path / "again.toml")  # saved in today's terms, it means the same
    again = RunConfig.load(tmp_path / "again.toml")
    assert [spec.index_order for spec in again.layers] == ["rows_first", "interleaved"]


def test_a_new_configuration_is_interleaved_and_says_so(tmp_path):
    config = RunConfig(model="fc2", layers=[LayerSpec("fc1", depth=3)])
    assert config.layers[0].index_order == "interleaved"
    config.save(tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text()
    assert f"config_version = {CONFIG_VERSION}" in text
    assert 'index_order = "interleaved"' in text  # explicit: the file reads alike anywhere
    data = tomllib.loads(text)
    for layer in data["layers"]:
        del layer["index_order"]  # a version-2 file that leaves it out means the default
    assert RunConfig.from_dict(data).layers[0].index_order == "interleaved"


def test_version_1_rule_leaves_other_encodings_alone():
    config = RunConfig.from_dict({"layers": [{"name": "fc1", "encoding": "tt", "depth": 2}]})
    assert config.layers[0].index_order == LayerSpec("x").index_order  # unused by a TT layer


def test_a_configuration_from_a_newer_release_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"config_version 3 was written by a newer"):
        RunConfig.from_dict({"config_version": CONFIG_VERSION + 1})


def test_every_preset_file_is_of_the_current_version():
    from importlib import resources

    files = list((resources.files("resources") / "presets").iterdir())
    presets = [f for f in files if f.name.endswith(".toml")]
    assert len(presets) == len(list_presets())
    for preset in presets:  # the raw file: loading would read an old one as today's anyway
        assert tomllib.loads(preset.read_text()).get("config_version") == CONFIG_VERSION, preset
