"""One set of limits, checked when a configuration is read: what trains can be exported, and
a hostile configuration file is one ConfigError line."""

from __future__ import annotations

import logging

import pytest

from adtn_studio.cli import run_cli
from engine.config import ConfigError, LayerSpec, RunConfig
from engine.limits import MAX_DEPTH, MAX_EPOCHS

QUICK = 'model = "fc2"\ndataset = "synthetic"\n\n[[layers]]\nname = "fc2"\n'


@pytest.mark.parametrize(
    "content, message",
    [
        (QUICK.encode("utf-16"), r"is UTF-16 text; save it as UTF-8"),
        (QUICK.encode("utf-16-le"), r"holds NUL bytes: it is binary"),
        (bytes(range(256)) * 4, r"is not UTF-8 text \(byte \d+ cannot be decoded\)"),
        (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", r"nests arrays or tables too deeply"),
        (
            b"x = " + b"{a = " * 100_000 + b"1" + b"}" * 100_000 + b"\n",
            r"nests arrays or tables too deeply",
        ),
    ],
)
def test_hostile_config_file_is_one_config_error_line(tmp_path, capsys, content, message):
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as refused:
        RunConfig.load(path)
    assert "\n" not in str(refused.value)
    assert run_cli(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("adtn-studio train: ")
    assert not (tmp_path / "run").exists()


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(QUICK.encode("utf-8-sig"))
    assert RunConfig.load(path).layers[0].name == "fc2"


def test_huge_config_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(ConfigError, match=r"a run configuration is at most"):
        RunConfig.load(path)


def base(**changes) -> RunConfig:
    config = RunConfig(model="fc2", dataset="synthetic", layers=[LayerSpec("fc1", depth=2)])
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_depth_beyond_what_export_accepts_is_refused_when_read(tmp_path):
    base(layers=[LayerSpec("fc1", depth=MAX_DEPTH)]).validate()
    # (the layer check of engine.layer_spec or the limit check of validate(), same limit)
    with pytest.raises(
        ConfigError,
        match=rf"layers\[0\]\.depth (is 65; an ADTN has at most "
        rf"{MAX_DEPTH} layers|must be at most {MAX_DEPTH})",
    ):
        base(layers=[LayerSpec("fc1", depth=MAX_DEPTH + 1)]).validate()
    path = tmp_path / "deep.toml"
    path.write_text(
        'model = "fc2"\ndataset = "synthetic"\n[[layers]]\nname = "fc1"\ndepth = 1000\n'
    )
    with pytest.raises(ConfigError, match=r"deep.toml: layers\[0\]\.(depth is 1000|depth must)"):
        RunConfig.load(path)


def test_export_and_config_share_the_depth_limit():
    from engine.export import metadata

    assert metadata.MAX_DEPTH == MAX_DEPTH


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 10**12),
        ("pretrain_epochs", MAX_EPOCHS + 1),
        ("batch_size", 10**9),
        ("fit_steps", 10**12),
        ("seed", 2**70),
        ("limit_train", 2**60),
        ("workers", 10**6),
        ("lr_milestones", [10**12]),
    ],
)
def test_absurd_sizes_are_refused_when_read(field, value):
    config = base(**{field: value})
    if field == "lr_milestones":
        config.schedule = "step"
    with pytest.raises(ConfigError, match=rf"{field}(\[0\])? is [\d,]+; at most [\d,]+ is allowed"):
        config.validate()


def test_no_layers_to_encode_needs_dense_baseline():
    with pytest.raises(
        ConfigError,
        match=r"layers is empty: list at least one layer to encode"
        r".*or set dense_baseline = true",
    ):
        base(layers=[]).validate()
    base(layers=[], dense_baseline=True).validate()


def test_every_preset_still_loads():
    from engine.presets import list_presets, load_preset

    for name in list_presets():
        assert load_preset(name).layers


def test_dense_baseline_run_says_so(tmp_path, caplog):
    from engine.trainer import train

    config = base(
        layers=[],
        dense_baseline=True,
        epochs=1,
        batch_size=32,
        limit_train=64,
        limit_test=32,
        device="cpu",
    )
    with caplog.at_level(logging.INFO, logger="engine.trainer"):
        summary = train(config, tmp_path / "run")
    assert summary.status == "finished"
    assert "dense baseline run" in caplog.text
