"""docs/FORMAT.md is enough to rebuild every weight with numpy alone.

The reader below follows the spec and imports only numpy, json, struct and hashlib. It runs in a
separate Python process that checks, at the end, that neither this project nor torch nor
safetensors was imported. Only the test harness (inside the test function) uses the project,
to write a bundle and the materialised weights to compare with.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(path):
    with open(path, "rb") as handle:
        raw = handle.read()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_size])
    metadata = header.pop("__metadata__", {})
    data = raw[8 + header_size :]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[begin:end], DTYPES[entry["dtype"]])
        tensors[name] = array.reshape(entry["shape"])
    return tensors, json.loads(metadata["adtn"])


ACTIVATIONS = {
    "relu": lambda x, slope: np.maximum(x, 0.0),
    "leaky_relu": lambda x, slope: np.where(x >= 0, x, slope * x),
    "none": lambda x, slope: x,
}


def rebuild_weight(layer, tensors):
    q = layer["Q"]
    psi = np.zeros(2**q)
    psi[0] = 1.0
    previous_layer = 0
    for gate in layer["gates"]:
        if gate["layer"] != previous_layer:
            psi = ACTIVATIONS[layer["activation"]](psi, layer["negative_slope"])
            previous_layer = gate["layer"]
        matrix = np.zeros((4, 4))
        matrix[:, gate["columns"]] = tensors[gate["tensor"]]
        a = gate["pair"][0]
        psi = np.einsum("oi,lir->lor", matrix, psi.reshape(2**a, 4, 2 ** (q - a - 2)))
        psi = psi.reshape(-1)
    if layer.get("index_order", "rows_first") == "interleaved":  # FORMAT.md step 4
        bits = layer["mode_bits"]
        network = [(m, b) for b in range(max(bits)) for m, n in enumerate(bits) if b < n]
        rows_first = [(m, b) for m, n in enumerate(bits) for b in range(n)]
        axes = [network.index(bit) for bit in rows_first]
        psi = psi.reshape((2,) * q).transpose(axes).reshape(-1)
    crop = tuple(slice(0, d) for d in layer["weight_shape"])
    weight = psi.reshape(layer["padded_shape"])[crop]
    return float(tensors[layer["scale"]]) * weight / np.sqrt(np.mean(weight**2))


def rebuild_factor_weight(layer, tensors):
    """Section 4: a TT-matrix, U·V, Tucker or CP layer from its factors."""
    factor = {f["role"]: tensors[f["tensor"]].astype(np.float64) for f in layer["factors"]}
    shape, kind, options = layer["weight_shape"], layer["encoding"], layer["options"]
    if kind == "lowrank":
        return (factor["U"] @ factor["V"]).reshape(shape)
    if kind == "tt":
        cores = [factor[f"core_{k}"] for k in range(len(options["ranks"]) + 1)]
        result = cores[0]  # (1, m1, n1, r1)
        for core in cores[1:]:
            result = np.tensordot(result, core, axes=([-1], [0]))
        result = result.reshape(result.shape[1:-1])  # (m1, n1, m2, n2, ..., md, nd)
        d = len(cores)
        result = result.transpose([2 * k for k in range(d)] + [2 * k + 1 for k in range(d)])
        rows, cols = int(np.prod(options["out_factors"])), int(np.prod(options["in_factors"]))
        return result.reshape(rows, cols).reshape(shape)
    if kind == "tucker":
        result = factor["core"]
        for mode in range(len(shape)):
            result = np.moveaxis(
                np.tensordot(factor[f"factor_{mode}"], result, axes=([1], [mode])), 0, mode
            )
        return result
    if kind == "cp":
        result = np.zeros(shape)
        for r in range(options["rank"]):
            term = factor["weights"][r]
            for mode in range(len(shape)):
                term = np.multiply.outer(term, factor[f"factor_{mode}"][:, r])
            result += term
        return result
    raise AssertionError(kind)


def check_sha256(tensors, meta):
    """The data_sha256 of section 2, when the file has one."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(tensors[name].tobytes())
    assert meta.get("data_sha256") in (None, digest.hexdigest()), "corrupted tensor data"


def read_bundle(path):
    """Every tensor of the dense model, as numpy arrays."""
    tensors, meta = read_safetensors(path)
    assert meta["format"] == "adtn-bundle" and meta["format_version"] == 1
    check_sha256(tensors, meta)
    state = dict(tensors)
    for layer in meta["layers"]:
        if layer.get("encoding", "adtn") != "adtn":
            state[layer["weight_key"]] = rebuild_factor_weight(layer, tensors)
            for factor in layer["factors"]:
                del state[factor["tensor"]]
            continue
        state[layer["weight_key"]] = rebuild_weight(layer, tensors)
        for gate in layer["gates"]:
            del state[gate["tensor"]]
        del state[layer["scale"]]
    return state


def compare(bundle_path, expected_path):
    """Exit non-zero unless every rebuilt tensor matches the project's materialised one."""
    state = read_bundle(bundle_path)
    expected = dict(np.load(expected_path))
    assert state.keys() == expected.keys(), (sorted(state), sorted(expected))
    for key, want in expected.items():
        got = state[key]
        assert got.shape == want.shape, (key, got.shape, want.shape)
        tolerance = 1e-5 * float(np.max(np.abs(want))) + 1e-7
        error = float(np.max(np.abs(got - want))) if want.size else 0.0
        assert error <= tolerance, (key, error, tolerance)
    foreign = sorted(
        {m.split(".")[0] for m in sys.modules}
        & {"engine", "adtn_studio", "ui", "torch", "safetensors"}
    )
    assert not foreign, f"the reader imported {foreign}"
    print(f"rebuilt {len(state)} tensors")


if __name__ == "__main__":
    compare(sys.argv[1], sys.argv[2])


@pytest.mark.parametrize("layers", [None, "mixed"], ids=["every-adtn-kind", "every-encoding"])
def test_numpy_reader_rebuilds_every_weight(tmp_path, layers):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # cores are shared on test machines; avoid oversubscription stalls
    try:
        write_bundle_and_expected(
            tmp_path / "model.adtn",
            tmp_path / "expected.npz",
            layers=MIXED_ENCODINGS if layers == "mixed" else None,
        )
    finally:
        torch.set_num_threads(threads)
    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "model.adtn"), str(tmp_path / "expected.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt 10 tensors" in result.stdout


def test_numpy_reader_checks_the_checksum_and_reads_gates_by_name(tmp_path):
    """The spec's checksum is the one the engine writes, and a file whose gate names are
    permuted is rebuilt the same way by the spec's reader and by the engine."""
    import torch

    from engine.compression import materialize
    from engine.export import load_bundle

    bundle = tmp_path / "model.adtn"
    write_bundle_and_expected(bundle, tmp_path / "expected.npz")
    tensors, meta = read_safetensors(bundle)
    assert len(meta["data_sha256"]) == 64
    check_sha256(tensors, meta)

    raw = bundle.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    document = json.loads(header["__metadata__"]["adtn"])
    layer = next(entry for entry in document["layers"] if entry["name"] == "conv2")
    full = [gate for gate in layer["gates"] if len(gate["columns"]) == 4]
    full[0]["tensor"], full[1]["tensor"] = full[1]["tensor"], full[0]["tensor"]
    header["__metadata__"]["adtn"] = json.dumps(document)
    text = json.dumps(header).encode()
    swapped = tmp_path / "swapped.adtn"
    swapped.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])

    spec_weight = read_bundle(swapped)["conv2.weight"]
    engine_weight = materialize(load_bundle(swapped)).state_dict()["conv2.weight"].double()
    original_weight = read_bundle(bundle)["conv2.weight"]
    tolerance = 1e-5 * float(np.max(np.abs(spec_weight)))
    assert float(np.max(np.abs(engine_weight.numpy() - spec_weight))) <= tolerance
    assert float(np.max(np.abs(original_weight - spec_weight))) > 100 * tolerance
    assert torch.is_tensor(engine_weight)


# Every encoding in one LeNet-5 (layer name, encoding, options).
MIXED_ENCODINGS = (
    ("conv1", "tucker", {"ranks": [3, 1, 3, 2]}),
    ("conv2", "cp", {"rank": 5}),
    ("fc1", "tt", {"ranks": [3, 2], "factors": [[4, 5, 6], [4, 10, 10]]}),
    ("fc2", "lowrank", {"rank": 4}),
    ("fc3", "adtn", {"depth": 2}),
)


def write_bundle_and_expected(bundle, expected, layers=None):
    """Harness: a bundle with every activation, layout and column kind (or the given
    encodings), and its dense weights."""
    import torch

    from engine.compression import LayerSpec, compress, materialize
    from engine.config import RunConfig
    from engine.export import save_bundle
    from engine.models import build_model

    torch.manual_seed(1)
    specs = (
        [
            # both index orders: rows first (files of configuration version 1) and interleaved
            LayerSpec(
                "conv2", depth=3, activation="relu", layout="brick", index_order="rows_first"
            ),
            LayerSpec(
                "fc1", depth=2, activation="leaky_relu", layout="stair", index_order="rows_first"
            ),
            LayerSpec("fc2", depth=2, activation="none", layout="brick", index_order="interleaved"),
            LayerSpec("fc3", depth=1, index_order="rows_first"),
        ]
        if layers is None
        else [LayerSpec(name, encoding=encoding, **options) for name, encoding, options in layers]
    )
    config = RunConfig(model="lenet5", dataset="synthetic", layers=specs)
    model = build_model("lenet5", 1, 28, 10)
    compress(model, config.layers)
    with torch.no_grad():  # move away from the orthogonal initialisation, as training would
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    save_bundle(model.eval(), bundle, config)
    np.savez(expected, **{k: v.numpy() for k, v in materialize(model).state_dict().items()})
