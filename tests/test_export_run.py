"""export_run and the export/inspect commands on a real (small) run folder."""

from __future__ import annotations

import onnx
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from adtn_studio.cli import run_cli
from engine.compression import LayerSpec
from engine.config import RunConfig
from engine.export import ExportError, export_run, inspect_file, load_bundle
from engine.export import run_export as run_export_module
from engine.export.run_export import plain_model, verification_batch
from engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished one-epoch LeNet-5 run with two ADTN layers on the generated data set."""
    config = RunConfig(
        model="lenet5",
        dataset="synthetic",
        epochs=1,
        batch_size=32,
        limit_train=64,
        limit_test=32,
        device="cpu",
        amp=False,
        layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2", depth=1, activation="leaky_relu")],
    )
    folder = tmp_path_factory.mktemp("runs") / "lenet"
    summary = train(config, folder)
    assert summary.status == "finished", summary
    return folder


def files_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_export_all_formats_verified_and_readable_elsewhere(run_dir, tmp_path):
    steps = []
    report = export_run(run_dir, tmp_path, progress=lambda f, m: steps.append((f, m)))

    assert report.passed and report.max_abs_diff <= 1e-4
    assert [f.format for f in report.files] == ["adtn", "dense", "onnx"]
    assert files_in(tmp_path) == [
        "lenet5-synthetic.adtn",
        "lenet5-synthetic.onnx",
        "lenet5-synthetic.safetensors",
    ]
    sizes = {f.format: f.size_bytes for f in report.files}
    assert sizes["adtn"] < report.dense_float32_bytes / 5 < sizes["dense"]
    assert report.compression_ratio > 5 and report.dense_latency_ms > 0
    assert report.batch_source == "test set" and report.batch_shape == (32, 1, 28, 28)
    fractions = [fraction for fraction, _ in steps]
    assert steps[-1] == (1.0, "done") and fractions == sorted(fractions)
    assert report.to_dict()["passed"] is True

    # The dense file loads into the plain zoo model; ONNX runs any batch size.
    config = RunConfig.load(run_dir / "config.toml")
    dense = plain_model(config)
    dense.load_state_dict(load_file(tmp_path / "lenet5-synthetic.safetensors"), strict=True)
    compressed = load_bundle(tmp_path / "lenet5-synthetic.adtn")
    batch = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = compressed(batch).numpy()
        torch.testing.assert_close(dense.eval()(batch).numpy(), expected, atol=1e-5, rtol=0)
    onnx_path = tmp_path / "lenet5-synthetic.onnx"
    graph = onnx.load(onnx_path)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": batch.numpy()})
    assert abs(got - expected).max() <= 1e-4
    summary = inspect_file(onnx_path)
    assert summary.kind == "onnx" and summary.onnx["inputs"] == ["input[batch, 1, 28, 28]"]


def test_one_format_goes_to_the_path_given(run_dir, tmp_path):
    target = tmp_path / "out" / "mine.adtn"
    report = export_run(run_dir, target, formats=("adtn",), checkpoint="last")
    assert [f.path for f in report.files] == [str(target)]
    assert files_in(target.parent) == ["mine.adtn"]


def test_interrupted_export_leaves_no_file_and_keeps_the_old_one(run_dir, tmp_path, monkeypatch):
    old = tmp_path / "lenet5-synthetic.safetensors"
    old.write_bytes(b"previous export")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_export_module, "write_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(run_dir, tmp_path)
    assert files_in(tmp_path) == ["lenet5-synthetic.safetensors"]
    assert old.read_bytes() == b"previous export"


def test_failed_verification_leaves_no_file(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_export_module, "max_abs_diff", lambda a, b: 0.5)
    with pytest.raises(ExportError, match=r"verification failed.*adtn 0\.5.*nothing was written"):
        export_run(run_dir, tmp_path, formats=("adtn", "dense"))
    assert files_in(tmp_path) == []


def test_cli_export_and_inspect(run_dir, tmp_path, capsys):
    assert run_cli(["export", str(run_dir), "--format", "dense", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lenet5-synthetic.safetensors" in out and "passed" in out and "latency" in out

    bundle = tmp_path / "model.adtn"
    assert run_cli(["export", str(run_dir), "--format", "adtn", "--out", str(bundle)]) == 0
    capsys.readouterr()
    assert run_cli(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "ADTN bundle" in out and "fc1" in out and "120×400" in out and "leaky_relu" in out

    assert run_cli(["inspect", str(tmp_path / "lenet5-synthetic.safetensors")]) == 0
    assert "dense export" in capsys.readouterr().out


def test_cli_reports_failures_in_one_line(run_dir, tmp_path, capsys):
    assert run_cli(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    assert run_cli(["inspect", str(run_dir / "config.toml")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith("adtn-studio export: ")
    assert errors[1].startswith("adtn-studio inspect: config.toml: ")
    assert files_in(tmp_path) == []


def test_verification_batch_comes_from_the_data_set_or_is_random(tmp_path, shared_datasets):
    missing = RunConfig(model="lenet5", dataset="mnist", data_root=str(tmp_path))
    batch, source = verification_batch(missing)
    assert source == "random" and batch.shape == (32, 1, 28, 28)
    present = missing.replace(data_root=str(shared_datasets))
    batch, source = verification_batch(present)
    assert source == "test set" and batch.shape == (32, 1, 28, 28)
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def disk_full_writer(error):
    """A bundle writer that gets part of the file out, then meets a full disk."""

    def write(model, path, config=None):
        with open(path, "wb") as handle:
            handle.write(b"\0" * 100)
        raise error

    return write


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        # what safetensors' writer raises instead of an OSError
        __import__("safetensors").SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
            'message: "No space left on device" })'
        ),
    ],
)
def test_full_disk_during_export_is_one_line_and_leaves_nothing(
    run_dir, tmp_path, monkeypatch, capsys, error
):
    monkeypatch.setattr(run_export_module, "write_bundle", disk_full_writer(error))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="the disk is full") as caught:
        export_run(run_dir, out, formats=("dense", "adtn"))
    assert "\n" not in str(caught.value)
    assert files_in(out) == []  # neither the partial bundle nor the finished dense file

    assert run_cli(["export", str(run_dir), "--out", str(out)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "the disk is full" in errors[0]
    assert files_in(out) == []


def test_save_bundle_on_a_full_disk_is_an_export_error(tmp_path, monkeypatch):
    from engine.export import bundle as bundle_module
    from engine.export import save_bundle

    def full(tensors, path, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "save_file", full)
    model = load_bundle_model()
    with pytest.raises(ExportError, match="disk is full"):
        save_bundle(model, tmp_path / "m.adtn")
    assert files_in(tmp_path) == []


def load_bundle_model():
    from engine.compression import compress
    from engine.models import build_model

    model = build_model("fc2", 1, 28, 10)
    compress(model, [LayerSpec("fc2")])
    return model


def test_every_encoding_exports_to_all_formats_verified(tmp_path):
    """Bundle, dense safetensors and ONNX of a model holding every encoding agree."""
    import torch

    from engine.compression import compress
    from engine.export.run_export import export_model
    from engine.layer_spec import LayerSpec as Spec
    from engine.models import build_model

    torch.manual_seed(0)
    config = RunConfig(
        model="lenet5",
        dataset="synthetic",
        name="mixed",
        layers=[
            Spec("conv1", encoding="tucker", ranks=[3, 1, 3, 2]),
            Spec("conv2", encoding="cp", rank=5),
            Spec("fc1", encoding="tt", budget=900),
            Spec("fc2", encoding="lowrank", rank=4),
            Spec("fc3", depth=2),
        ],
    )
    model = build_model("lenet5", 1, 28, 10)
    compress(model, config.layers)
    report = export_model(model, config, tmp_path / "out")
    assert {written.format for written in report.files} == {"adtn", "dense", "onnx"}
    assert report.passed and report.max_abs_diff <= report.tolerance
    assert (tmp_path / "out" / "mixed.adtn").is_file() and (
        tmp_path / "out" / "mixed.onnx"
    ).is_file()
