"""Truncated, corrupted, edited or hostile files are refused with one clear message."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from engine.compression import LayerSpec, compress, materialize
from engine.config import RunConfig
from engine.export import BundleError, inspect_file, load_bundle, save_bundle
from engine.export.dense import write_dense
from engine.models import build_model


@pytest.fixture(scope="module")
def bundle_bytes(tmp_path_factory) -> bytes:
    """A valid LeNet-5 bundle with fc1 and fc2 as ADTNs."""
    config = RunConfig(
        model="lenet5", dataset="synthetic", layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2")]
    )
    model = build_model("lenet5", 1, 28, 10)
    compress(model, config.layers)
    path = tmp_path_factory.mktemp("bundle") / "good.adtn"
    save_bundle(model, path, config)
    return path.read_bytes()


def split(raw: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def edit_header(edit):
    def mutate(raw: bytes) -> bytes:
        header, data = split(raw)
        edit(header)
        return join(header, data)

    return mutate


def edit_metadata(edit):
    def change(header: dict) -> None:
        document = json.loads(header["__metadata__"]["adtn"])
        edit(document)
        header["__metadata__"]["adtn"] = json.dumps(document)

    return edit_header(change)


def fc1(document: dict) -> dict:
    return next(layer for layer in document["layers"] if layer["name"] == "fc1")


def flip_header_byte(raw: bytes) -> bytes:
    corrupted = bytearray(raw)
    corrupted[8] ^= 0xFF  # the opening brace of the JSON header
    return bytes(corrupted)


def resize_first_gate(header: dict) -> None:
    header["fc1.adtn.gates.0"]["shape"] = [2, 2]  # same 4 numbers, another shape


def declare_huge_tensor(header: dict) -> None:
    entry = header["conv1.weight"]
    entry["shape"] = [2**40, 2**20]
    entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][0] + 2**62]


def flip_data_byte(raw: bytes) -> bytes:
    corrupted = bytearray(raw)
    corrupted[-3] ^= 0x01  # one bit of the last tensor's data: the header stays valid
    return bytes(corrupted)


def skip_a_gate_layer(document: dict) -> None:
    layer = fc1(document)  # depth 2: claim depth 3 with no gate in layer 1
    layer["depth"] = 3
    for gate in layer["gates"]:
        if gate["layer"] == 1:
            gate["layer"] = 2


def shift_offsets(header: dict) -> None:
    begin, end = header["conv1.bias"]["data_offsets"]
    header["conv1.bias"]["data_offsets"] = [begin + 4, end + 4]


def duplicate_key(raw: bytes) -> bytes:
    header, data = split(raw)
    text = json.dumps(header)
    text = text.replace(
        '"conv1.bias":',
        '"conv1.bias": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "conv1.bias":',
        1,
    )
    encoded = text.encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


BAD_FILES = {
    "truncated data": (
        lambda raw: raw[:-100],
        r"file is truncated: tensor '[\w.]+' ends at data byte \d+, the file holds",
    ),
    "truncated header": (lambda raw: raw[:60], r"file is truncated: header needs"),
    "too short": (lambda raw: raw[:5], r"too short"),
    "empty": (lambda raw: b"", r"too short"),
    "flipped byte in header": (flip_header_byte, r"header is not valid JSON"),
    "duplicate header key": (duplicate_key, r"duplicate key"),
    "deeply nested header": (
        lambda raw: struct.pack("<Q", 200_000) + b"[" * 200_000,
        r"header is not valid JSON",
    ),
    "huge header length": (
        lambda raw: struct.pack("<Q", 2**60) + raw[8:],
        r"header size \d+ bytes exceeds the limit",
    ),
    "unknown dtype": (
        edit_header(lambda h: h["conv1.bias"].update(dtype="F8_E4M3")),
        r"unsupported dtype 'F8_E4M3'",
    ),
    "dtype size mismatch": (
        edit_header(lambda h: h["conv1.bias"].update(dtype="F64")),
        r"'conv1.bias': shape \[6\] of F64 needs 48 bytes but its byte "
        r"range holds 24",
    ),
    "integer ADTN tensor": (
        edit_header(lambda h: h["fc1.adtn.gates.9"].update(dtype="I32")),
        r"'fc1.adtn.gates.9' has dtype I32; encoding tensors must be floating",
    ),
    "shape differs from metadata": (
        edit_header(resize_first_gate),
        r"'fc1.adtn.gates.0' has shape \[2, 2\] but the metadata "
        r"describes \[4, 1\]",
    ),
    "huge declared tensor": (
        edit_header(declare_huge_tensor),
        r"truncated: tensor 'conv1.weight' ends at data byte 4611686",
    ),
    "extra bytes": (lambda raw: raw + b"\0" * 8, r"8 unexplained bytes after the last tensor"),
    "gap between tensors": (edit_header(shift_offsets), r"starts at byte"),
    "unknown version": (
        edit_metadata(lambda d: d.update(format_version=2)),
        r"format version 2 is not supported",
    ),
    "metadata not JSON": (
        edit_header(lambda h: h["__metadata__"].update(adtn="{oops")),
        r"ADTN metadata is not valid JSON",
    ),
    "no metadata": (edit_header(lambda h: h.pop("__metadata__")), r"no ADTN metadata"),
    "huge Q": (
        edit_metadata(lambda d: fc1(d).update(weight_shape=[2**20, 2**20])),
        r"weight_shape \[1048576, 1048576\] needs Q = 40; allowed 2 to 28",
    ),
    "huge depth": (
        edit_metadata(lambda d: fc1(d).update(depth=10**9)),
        r"layers\[0\]\.depth is 1000000000, outside \[1, 64\]",
    ),
    "inconsistent mode bits": (
        edit_metadata(lambda d: fc1(d).update(mode_bits=[8, 8])),
        r"mode_bits does not match weight_shape",
    ),
    "weight shape differs from model": (
        edit_metadata(lambda d: fc1(d).update(weight_shape=[121, 400])),
        r"layer 'fc1' has weight shape \[121, 400\] in the metadata but \[120, 400\] in the model",
    ),
    "missing gate tensor": (
        edit_metadata(lambda d: fc1(d)["gates"][3].update(tensor="nope")),
        r"needs tensor 'nope', which the file does not contain",
    ),
    "gate outside the network": (
        edit_metadata(lambda d: fc1(d)["gates"][3].update(pair=[20, 21])),
        r"gates\[3\] lies outside the network",
    ),
    "hostile model size": (
        edit_metadata(lambda d: d["model"].update(num_classes=10**6)),
        r"'fc3.weight' has shape \[10, 84\], the model needs \[1000000, 84\]",
    ),
    "unknown model": (
        edit_metadata(lambda d: d["model"].update(name="resnet")),
        r"describes no buildable model: model must be one of",
    ),
    "unknown activation": (
        edit_metadata(lambda d: fc1(d).update(activation="gelu")),
        r"activation is 'gelu'; expected one of relu, leaky_relu, none",
    ),
    "gates describe another network": (
        edit_metadata(lambda d: fc1(d).update(layout="stair")),
        r"layer 'fc1' describes a network this version of ADTN Studio does not build",
    ),
    "dtype is a list": (
        edit_header(lambda h: h["conv1.bias"].update(dtype=["F32"])),
        r"'conv1.bias' has unsupported dtype \['F32'\]",
    ),
    "integer bias": (
        edit_header(lambda h: h["conv1.bias"].update(dtype="I32")),
        r"tensor 'conv1.bias' has dtype I32; the model needs a floating-point "
        r"tensor there",
    ),
    "flipped data byte": (
        flip_data_byte,
        r"the tensor data does not match its checksum; the file is corrupted",
    ),
    "malformed checksum": (
        edit_metadata(lambda d: d.update(data_sha256="00")),
        r"data_sha256 must be 64 lowercase hexadecimal digits",
    ),
    "unknown encoding": (
        edit_metadata(lambda d: fc1(d).update(encoding="mera")),
        r"layers\[0\]\.encoding is 'mera'; this version of ADTN Studio reads "
        r"adtn, tt, lowrank, tucker, cp",
    ),
    "known encoding, wrong record": (
        edit_metadata(lambda d: fc1(d).update(encoding="tt")),
        r"layers\[0\]\.options is missing",
    ),
    "gate layer skipped": (
        edit_metadata(skip_a_gate_layer),
        r"gates must run through gate layers 0 to 2 in contraction order",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_refused_with_one_clear_message(case, bundle_bytes, tmp_path):
    mutate, message = BAD_FILES[case]
    path = tmp_path / "model.adtn"
    path.write_bytes(mutate(bundle_bytes))
    with pytest.raises(BundleError, match=message) as refused:
        load_bundle(path)
    text = str(refused.value)
    assert text.startswith("model.adtn: ") and "\n" not in text


def test_pickle_renamed_adtn_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    raw_pickle = tmp_path / "raw.adtn"
    raw_pickle.write_bytes(pickle.dumps(Payload(), protocol=4))
    torch_file = tmp_path / "torch.adtn"
    torch.save({"weights": torch.zeros(3), "payload": Payload()}, torch_file)

    with pytest.raises(BundleError, match=r"raw.adtn: this is a Python pickle, not a safetensors"):
        load_bundle(raw_pickle)
    with pytest.raises(BundleError, match=r"this is a zip archive \(torch.save output\?\)"):
        inspect_file(torch_file)
    assert not marker.exists()


def test_dense_export_is_not_taken_for_a_bundle(tmp_path):
    model = build_model("lenet5", 1, 28, 10)
    compress(model, ["fc1"])
    path = tmp_path / "dense.safetensors"
    write_dense(model, materialize(model), path)
    with pytest.raises(BundleError, match=r"an 'adtn-dense' file, expected 'adtn-bundle'"):
        load_bundle(path)


def test_plain_safetensors_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.adtn"
    save_file({"weight": torch.zeros(2, 2)}, path)
    with pytest.raises(BundleError, match=r"no ADTN metadata"):
        load_bundle(path)


def test_corrupt_onnx_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a model")
    with pytest.raises(BundleError, match=r"model.onnx: not a valid ONNX model"):
        inspect_file(path)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_inspect_refuses_every_file_load_bundle_refuses(case, bundle_bytes, tmp_path):
    mutate, message = BAD_FILES[case]
    path = tmp_path / "model.adtn"
    path.write_bytes(mutate(bundle_bytes))
    with pytest.raises(BundleError, match=message):
        inspect_file(path)


def test_a_damaged_header_whose_length_starts_like_a_pickle_is_not_called_one(
    bundle_bytes, tmp_path
):
    header, data = split(bundle_bytes)
    text = json.dumps(header)
    text += " " * ((0x180 - len(text)) % 256)  # length ends in byte 0x80, a pickle's first byte
    raw = bytearray(struct.pack("<Q", len(text)) + text.encode() + data)
    assert raw[0] == 0x80
    raw[8] ^= 0xFF
    path = tmp_path / "model.adtn"
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"header is not valid JSON"):
        load_bundle(path)


def run_with_deadline(function, *args, seconds: float = 20):
    """``function(*args)`` in a thread; fail (instead of hanging the suite) if it blocks."""
    import threading

    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} blocked on a FIFO"
    return outcome


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifo_named_like_a_model_or_config_is_refused_without_blocking(tmp_path):
    from engine.config import ConfigError

    fifo = tmp_path / "model.adtn"
    os.mkfifo(fifo)  # opening it for reading would wait forever for a writer
    for function, error in (
        (load_bundle, BundleError),
        (inspect_file, BundleError),
        (RunConfig.load, ConfigError),
    ):
        outcome = run_with_deadline(function, fifo)
        assert isinstance(outcome.get("error"), error), outcome
        assert "not a regular file" in str(outcome["error"])


def test_bundle_needing_more_memory_than_the_limit_is_refused_before_building(tmp_path):
    """A tiny file describing FC-2 at image size 1024 (Q = 28 for fc1): refused with one line
    from its description, nothing allocated for the model."""
    import resource

    from engine.export.metadata import BUNDLE_FORMAT, build_metadata
    from engine.export.safe_read import tensors_sha256
    from engine.layers import ADTNLinear

    fc1 = ADTNLinear(1024 * 1024, 256, depth=1)  # gates only: nothing of 2**28 is allocated
    model = torch.nn.Sequential()
    model.add_module("flatten", torch.nn.Flatten())
    model.add_module("fc1", fc1)
    model.add_module("relu", torch.nn.ReLU())
    model.add_module("fc2", torch.nn.Linear(256, 10))
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    document = build_metadata(model, None, BUNDLE_FORMAT, tensors_sha256(tensors))
    raw = json.loads(document.to_json())
    raw["model"] = {"name": "fc2", "in_channels": 1, "image_size": 1024, "num_classes": 10}
    path = tmp_path / "huge.adtn"
    save_file(tensors, path, metadata={"adtn": json.dumps(raw)})
    assert path.stat().st_size < 64 * 1024

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for function in (load_bundle, inspect_file):
        with pytest.raises(
            BundleError,
            match=r"huge.adtn: the model it describes would need "
            r"about [\d.]+ GiB to load \(largest ADTN: Q = 28\); the limit is "
            r"8 GiB",
        ) as refused:
            function(path)
        assert "\n" not in str(refused.value)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024  # the 1 GiB dense fc1 was never built


def test_a_bundle_without_checksum_still_loads_with_a_warning(bundle_bytes, tmp_path, caplog):
    path = tmp_path / "old.adtn"
    path.write_bytes(edit_metadata(lambda d: d.pop("data_sha256"))(bundle_bytes))
    with caplog.at_level("WARNING"):
        model = load_bundle(path)
    assert "old.adtn has no checksum" in caplog.text
    assert inspect_file(path).checksum == "absent"
    good = tmp_path / "good.adtn"
    good.write_bytes(bundle_bytes)
    assert inspect_file(good).checksum == "verified"
    reference = load_bundle(good)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_gates_are_read_by_the_names_the_metadata_lists(bundle_bytes, tmp_path):
    """Swapping two gates' names in the metadata swaps the tensors the engine uses, as the
    spec reads them; it does not silently keep the file's positional order."""
    document = json.loads(split(bundle_bytes)[0]["__metadata__"]["adtn"])
    full = [g for g in fc1(document)["gates"] if len(g["columns"]) == 4]
    first, second = full[0]["tensor"], full[1]["tensor"]

    def swap(doc):
        gates = {g["tensor"]: g for g in fc1(doc)["gates"]}
        gates[first]["tensor"], gates[second]["tensor"] = second, first

    original, swapped = tmp_path / "original.adtn", tmp_path / "swapped.adtn"
    original.write_bytes(bundle_bytes)
    swapped.write_bytes(edit_metadata(swap)(bundle_bytes))
    a, b = load_bundle(original).state_dict(), load_bundle(swapped).state_dict()
    assert torch.equal(b[first], a[second]) and torch.equal(b[second], a[first])
    assert not torch.equal(a[first], a[second])
