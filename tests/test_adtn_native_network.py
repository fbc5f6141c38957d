"""A brick ADTN's contraction in one native call each way (engine/adtn_native_network.c):
that it is the path a CPU training step takes, that it agrees with the step-by-step kernel
calls, and how it behaves with kept graphs, reused memory, changed gates and bad programs."""

from __future__ import annotations

import copy
import ctypes
import dataclasses

import pytest
import torch

from engine import adtn_native, adtn_native_network
from engine.adtn import ADTN

needs_kernel = pytest.mark.skipif(
    adtn_native.library() is None, reason="no C compiler on this machine: no native kernel"
)

CASES = [
    ((256, 784), 3, "relu", "interleaved"),
    ((10, 256), 2, "relu", "rows_first"),
    ((84, 120), 4, "leaky_relu", "interleaved"),
    ((120, 400), 3, "relu", "rows_first"),
]


def step_by_step(monkeypatch):
    """Make every ADTN take ``NetworkState`` (one kernel call per step) instead."""
    monkeypatch.setattr(adtn_native_network, "runs", lambda *_: False)


def grad_names(weight: torch.Tensor) -> str:
    return type(weight.grad_fn).__name__


@needs_kernel
@pytest.mark.parametrize("shape, depth, activation, index_order", CASES)
def test_one_call_each_way_agrees_with_the_step_by_step_kernel(
    shape, depth, activation, index_order, monkeypatch
):
    torch.manual_seed(0)
    adtn = ADTN(shape, depth, activation=activation, index_order=index_order)
    reference = copy.deepcopy(adtn)
    upstream = torch.randn(shape)
    weight = adtn()
    assert grad_names(weight).startswith("NetworkWeight")
    (weight * upstream).sum().backward()
    step_by_step(monkeypatch)
    expected = reference()
    assert grad_names(expected).startswith("NetworkState")
    (expected * upstream).sum().backward()
    # The same arithmetic in the same order: equal to the last bit, so that training takes
    # the same path either way.
    assert torch.equal(weight, expected)
    for mine, theirs in zip(adtn.parameters(), reference.parameters()):
        assert torch.equal(mine.grad, theirs.grad)


@needs_kernel
def test_steps_that_reuse_the_memory_block_give_what_a_fresh_module_gives():
    torch.manual_seed(0)
    adtn = ADTN((84, 120), 3, index_order="interleaved")
    upstream = torch.randn(84, 120)
    grads = []
    for _ in range(3):  # the block goes back to the pool after each backward pass
        adtn.zero_grad()
        (adtn() * upstream).sum().backward()
        grads.append(adtn.gate_values.grad.clone())
    assert len(adtn.buffer_pool.free) == 1
    fresh = copy.deepcopy(adtn)
    fresh.zero_grad()
    (fresh() * upstream).sum().backward()
    for grad in grads:
        assert torch.equal(grad, fresh.gate_values.grad)


@needs_kernel
def test_a_kept_graph_goes_back_twice_and_a_freed_one_says_so():
    torch.manual_seed(0)
    adtn = ADTN((84, 120), 3, index_order="interleaved")
    loss = adtn().square().sum()
    loss.backward(retain_graph=True)
    once = adtn.gate_values.grad.clone()
    loss.backward()
    torch.testing.assert_close(adtn.gate_values.grad, 2 * once)
    with pytest.raises(RuntimeError, match="backward"):
        loss.backward()


@needs_kernel
def test_two_weights_alive_at_once_keep_their_own_states():
    torch.manual_seed(0)
    adtn = ADTN((84, 120), 3, index_order="interleaved")
    reference = copy.deepcopy(adtn)
    first = adtn()
    with torch.no_grad():
        adtn.gate_values.mul_(0.5)  # a different network for the second weight
    second = adtn()
    (first.square().sum() + second.sum()).backward()
    expected_first = reference()
    with torch.no_grad():
        reference.gate_values.mul_(0.5)
    (expected_first.square().sum() + reference().sum()).backward()
    scale = reference.gate_values.grad.abs().max().item()
    torch.testing.assert_close(
        adtn.gate_values.grad, reference.gate_values.grad, rtol=1e-5, atol=1e-6 * scale
    )


@needs_kernel
def test_a_program_the_kernel_cannot_read_is_refused_not_run():
    torch.manual_seed(0)
    adtn = ADTN((84, 120), 3, index_order="interleaved")
    adtn().sum().backward()
    plan = adtn._compiled(True)[0][True]
    program = plan.network
    short = (ctypes.c_int64 * (len(program.code) - 1))(*program.code[:-1])
    broken = dataclasses.replace(program, code=short)
    grid = adtn._weight_gather(adtn.gate_values.device).grid
    with pytest.raises(RuntimeError, match="refused"):
        adtn_native_network.NetworkWeight.apply(
            broken, plan.slope, grid, None, adtn.scale, adtn.gate_values
        )


@needs_kernel
def test_a_weight_that_is_the_state_itself_takes_the_one_call_too(monkeypatch):
    torch.manual_seed(0)
    adtn = ADTN((64, 256), 3, index_order="rows_first")  # (no gather: powers of two)
    assert adtn._weight_gather(adtn.gate_values.device) is None
    reference = copy.deepcopy(adtn)
    upstream = torch.randn(64, 256)
    weight = adtn()
    assert grad_names(weight).startswith("NetworkWeight")
    (weight * upstream).sum().backward()
    step_by_step(monkeypatch)
    expected = reference()
    (expected * upstream).sum().backward()
    # (the step-by-step path takes this weight's rms from torch's norm, not the native sum)
    torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-7)
    for mine, theirs in zip(adtn.parameters(), reference.parameters()):
        scale = theirs.grad.abs().max().item()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6 * scale)


def test_plans_that_are_not_grown_from_their_gates_have_no_program():
    odd = ADTN((10, 84), 3)  # odd Q: the first layer is built from matrices
    plan = odd._compiled(True)[0][True]
    assert plan.growth is None and plan.network is None
    products = ADTN((84, 120), 3)
    plan = products._compiled(False)[0][True]  # matrix products: no gate passes
    assert adtn_native_network.compile_program(plan, products.gate_values.numel()) is None


@needs_kernel
def test_two_threads_share_the_tiles_and_agree_with_one():
    torch.manual_seed(0)
    adtn = ADTN((256, 784), 3, index_order="interleaved")
    reference = copy.deepcopy(adtn)
    upstream = torch.randn(256, 784)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        (reference() * upstream).sum().backward()
        torch.set_num_threads(2)  # (each pass has enough tiles for two threads)
        weight = adtn()
        (weight * upstream).sum().backward()
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(weight, reference(), rtol=1e-6, atol=1e-7)
    for mine, theirs in zip(adtn.parameters(), reference.parameters()):
        scale = theirs.grad.abs().max().item()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6 * scale)
