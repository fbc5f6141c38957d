"""ADTNLinear and ADTNConv2d behave like the dense layers they replace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.adtn import ADTN
from engine.layers import ADTNConv2d, ADTNLinear


def test_linear_to_dense_gives_the_same_outputs():
    torch.manual_seed(0)
    layer = ADTNLinear(100, 30, depth=2)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Linear) and dense.weight.shape == (30, 100)
    x = torch.randn(17, 100)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
        dict(
            in_channels=4, out_channels=6, kernel_size=(5, 3), stride=2, padding=(2, 1), dilation=1
        ),
        dict(in_channels=4, out_channels=8, kernel_size=3, dilation=2, groups=2, bias=False),
        dict(in_channels=3, out_channels=5, kernel_size=3, padding="same", padding_mode="reflect"),
        dict(in_channels=2, out_channels=4, kernel_size=1),
    ],
)
def test_conv_to_dense_gives_the_same_outputs(kwargs):
    torch.manual_seed(1)
    layer = ADTNConv2d(**kwargs, depth=2)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Conv2d)
    for attribute in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
        assert getattr(dense, attribute) == getattr(layer, attribute)
    x = torch.randn(2, kwargs["in_channels"], 12, 11)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_from_conv_keeps_hyper_parameters_and_bias():
    conv = nn.Conv2d(6, 16, 5, stride=2, padding=1, dilation=1, groups=2)
    layer = ADTNConv2d.from_conv(conv, depth=2)
    assert (layer.stride, layer.padding, layer.groups) == (conv.stride, conv.padding, conv.groups)
    torch.testing.assert_close(layer.bias, conv.bias)
    assert layer.adtn.shape == tuple(conv.weight.shape)
    assert layer.fit_error is None


def test_from_linear_fit_reduces_the_error_on_a_representable_weight():
    torch.manual_seed(2)
    teacher = ADTNLinear(16, 8, depth=1, activation="none")
    with torch.no_grad():
        for gate in teacher.adtn.gates:
            gate.add_(0.3 * torch.randn_like(gate))
    dense = teacher.to_dense()
    fresh = ADTNLinear.from_linear(dense, depth=1, activation="none")
    with torch.no_grad():
        error_fresh = ((fresh.adtn() - dense.weight).norm() / dense.weight.norm()).item()
    fitted = ADTNLinear.from_linear(dense, depth=1, activation="none", fit=True, fit_steps=600)
    assert fitted.fit_error is not None
    assert fitted.fit_error < 0.05 < error_fresh
    x = torch.randn(5, 16)
    torch.testing.assert_close(fitted(x), dense(x), rtol=0.1, atol=0.05)


def test_fit_to_a_trained_dense_conv_reports_its_error():
    torch.manual_seed(3)
    conv = nn.Conv2d(1, 6, 5)
    layer = ADTNConv2d.from_conv(conv, depth=2, fit=True, fit_steps=50)
    assert 0.0 < layer.fit_error < 1.05  # a random kernel is not representable; error is honest


def test_weight_is_materialised_once_per_forward_call():
    layer = ADTNLinear(64, 32, depth=3)
    calls = []
    # with gradients on, each call of the generator builds the weight (nothing is cached)
    layer.adtn.register_forward_hook(lambda *_: calls.append(1))
    layer(torch.randn(128, 64)).sum().backward()
    assert len(calls) == 1


def test_gradients_reach_every_local_tensor_through_the_layer():
    torch.manual_seed(4)
    layer = ADTNConv2d(3, 8, 3, depth=3)
    layer(torch.randn(4, 3, 8, 8)).square().mean().backward()
    assert all(g is not None and g.abs().sum() > 0 for g in layer.adtn.gate_grads())


def test_layers_train_like_dense_layers():
    """A small regression problem: the ADTN layer's loss goes down under Adam."""
    torch.manual_seed(5)
    teacher = nn.Linear(32, 16)
    layer = ADTNLinear(32, 16, depth=2)
    optimiser = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(256, 32)
    y = teacher(x).detach()
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = (layer(x) - y).square().mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_parameter_count_of_layers():
    layer = ADTNLinear(4096, 4096, depth=1)
    assert layer.num_adtn_parameters(tensors_only=True) == 224
    assert sum(p.numel() for p in layer.parameters()) == 225 + 4096  # + scale, + bias


def test_double_precision_and_device_arguments():
    layer = ADTNLinear(10, 6, dtype=torch.float64)
    assert (
        layer.adtn.scale.dtype == torch.float64
        and layer(torch.randn(2, 10, dtype=torch.float64)).dtype == torch.float64
    )


def test_bad_dense_layers_are_refused():
    with pytest.raises(ValueError, match="nn.Linear"):
        ADTNLinear.from_linear(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="nn.Conv2d"):
        ADTNConv2d.from_conv(nn.Linear(3, 4))
    with pytest.raises(ValueError):
        ADTNConv2d(3, 4, 3, groups=2)  # nn.Conv2d's own check: channels not divisible


def test_standalone_adtn_matches_layer_weight_shape():
    assert ADTN((16, 6, 5, 5), depth=2)().shape == (16, 6, 5, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_keeps_float32_under_autocast():
    torch.manual_seed(6)
    layer = ADTNLinear(300, 120, depth=3)
    x = torch.randn(64, 300)
    expected_out, expected_weight = layer(x).detach(), layer.adtn().detach()
    layer.to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        weight = layer.adtn()
        out = layer(x.cuda())
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight.detach().cpu(), expected_weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.float().detach().cpu(), expected_out, rtol=0.05, atol=0.05)
