"""The command line with the user's own model and images, end to end in subprocesses:
``layers`` and ``train --model --dataset --encode`` without a configuration file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib

import pytest
import torch
from _imagefolders import write_folder

OWN_MODEL = """
    from torch import nn

    def small_cnn(in_channels, image_size, num_classes):
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(8 * (image_size // 2) ** 2, 32), nn.ReLU(),
            nn.Linear(32, num_classes))
"""


def adtn(*args, cwd=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adtn_studio", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture
def project(tmp_path):
    (tmp_path / "nets.py").write_text(textwrap.dedent(OWN_MODEL))
    write_folder(tmp_path / "images", classes=3, per_class=8, test_per_class=3, size=(16, 16))
    return tmp_path


def test_layers_lists_names_shapes_and_adtn_counts(project):
    result = adtn(
        "layers",
        "--model",
        "nets.py:small_cnn",
        "--dataset",
        "imagefolder:images",
        "--encode",
        "4,6",
        "--depth",
        "2",
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "3 linear/convolutional layers" in out
    assert "*4" in out and "*6" in out and " 0 " in out  # selected layers are marked
    assert "32×512" in out and "ADTN d=2" in out and "selected: 2 layer(s)" in out


def test_train_without_a_config_file_writes_the_resolved_config(project):
    run_dir = project / "run"
    result = adtn(
        "train",
        "--model",
        "nets.py:small_cnn",
        "--dataset",
        "imagefolder:images",
        "--encode",
        "4",
        "--depth",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--workers",
        "2",
        "--out",
        run_dir,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert "status:      finished" in result.stdout
    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert config["workers"] == 2  # kept for a folder too large for memory (this one is not)
    assert config["model"] == f"{project / 'nets.py'}:small_cnn"  # absolute: works anywhere
    assert config["dataset"] == f"imagefolder:{project / 'images'}"
    assert [(layer["name"], layer["depth"]) for layer in config["layers"]] == [("4", 2)]
    assert config["name"] == "small_cnn-images"
    source = json.loads((run_dir / "model_source.json").read_text())
    assert len(source["sha256"]) == 64
    assert "image folder" in result.stderr and "3 classes" in result.stderr  # the log notes


def test_pretrained_weights_give_a_before_and_after(project):
    sys.path.insert(0, str(project))
    try:
        import nets
    finally:
        sys.path.remove(str(project))
    torch.save(nets.small_cnn(1, 16, 3).state_dict(), project / "weights.pt")
    run_dir = project / "run"
    result = adtn(
        "train",
        "--model",
        "nets.py:small_cnn",
        "--dataset",
        "imagefolder:images",
        "--weights",
        "weights.pt",
        "--encode",
        "4",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        run_dir,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert "before:" in result.stdout and "before compression" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["dense_test_acc"] <= 1.0
    config = tomllib.loads((run_dir / "config.toml").read_text())
    # with weights, the ADTN is fitted to them (no dense epochs needed)
    assert config["init"] == "pretrained" and config["pretrain_epochs"] == 0
    assert config["weights"] == str(project / "weights.pt")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--encode", "fc9"], "layer pattern 'fc9' matches no layer of the model"),
        ([], "say which layers to compress with --encode"),
        (["--encode", "4", "--weights", "absent.pt"], "weights file not found"),
    ],
)
def test_bad_requests_exit_1_with_one_line(project, args, message):
    result = adtn(
        "train",
        "--model",
        "nets.py:small_cnn",
        "--dataset",
        "imagefolder:images",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--out",
        project / "run",
        *args,
        cwd=project,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 or "Traceback" not in result.stderr


def test_a_bad_image_folder_fails_the_run_with_the_folder_named(project):
    (project / "images" / "train" / "class_2").rename(project / "moved")
    result = adtn(
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "imagefolder:images",
        "--encode",
        "fc1",
        "--device",
        "cpu",
        "--out",
        project / "run",
        cwd=project,
    )
    assert result.returncode == 1
    assert "class 'class_2' is in the test split but not in" in result.stderr
    assert "Traceback" not in result.stderr


def test_torchvision_resnet18_trains_on_an_image_folder(project):
    write_folder(
        project / "colour", classes=2, per_class=4, test_per_class=2, mode="RGB", size=(32, 32)
    )
    result = adtn(
        "train",
        "--model",
        "torchvision:resnet18",
        "--dataset",
        "imagefolder:colour",
        "--encode",
        "fc,layer4.1.conv2",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--out",
        project / "run",
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert "3×3 with stride 1" in result.stderr and "2 classes" in result.stderr
    assert "layer4.1.conv2 (adtn" in result.stdout
