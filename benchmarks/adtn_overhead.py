"""How much an ADTN costs over the dense layer it replaces, on the CPU.

Prints the median time of one training step (forward, backward, Adam step) for LeNet-5 with
its three linear layers as ADTNs and for FC-2 with both layers as ADTNs, next to the same model
dense, measured in the same run; and the time to materialise a 4096×4096 weight.

    python benchmarks/adtn_overhead.py [--depth 3] [--batch 128] [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from engine.adtn import ADTN
from engine.compression import compress
from engine.models import build_model


def median_step_seconds(model: nn.Module, inputs, targets, repeats: int) -> float:
    # fused: one kernel for all parameters; the default per-tensor loop would dominate the
    # step of a model made of many small local tensors.
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        optimiser.step()

    for _ in range(3):  # warm-up: allocator, kernels, first-call costs
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(name, model_name, layers, depth, batch, repeats, block_bits=None):
    torch.manual_seed(0)
    dense = build_model(model_name, 1, 28, 10)
    compressed = build_model(model_name, 1, 28, 10)
    report = compress(compressed, layers, depth=depth)
    if block_bits:
        for module in compressed.modules():
            if isinstance(module, ADTN):
                module.block_bits = block_bits
    inputs = torch.randn(batch, 1, 28, 28)
    targets = torch.randint(0, 10, (batch,))
    # Interleave the two measurements so that load from other processes hits both alike.
    dense_times, adtn_times = [], []
    for _ in range(3):
        dense_times.append(median_step_seconds(dense, inputs, targets, repeats))
        adtn_times.append(median_step_seconds(compressed, inputs, targets, repeats))
    t_dense, t_adtn = min(dense_times), min(adtn_times)
    print(
        f"| {name} | {depth} | {block_bits or 'default'} | {report.model_params_before:,} | {report.model_params_after:,} "
        f"| {t_dense * 1e3:.2f} | {t_adtn * 1e3:.2f} | {t_adtn / t_dense:.2f}× |"
    )


def materialise_times(depths, device: str, repeats: int = 3):
    def synchronise():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for depth in depths:
        adtn = ADTN((4096, 4096), depth=depth).to(device)
        with torch.no_grad():
            adtn._weight()  # warm-up
        times = []
        for _ in range(repeats):
            synchronise()
            start = time.perf_counter()
            with torch.no_grad():
                adtn._weight()
            synchronise()
            times.append(time.perf_counter() - start)
        grad_times = []
        for _ in range(repeats):
            synchronise()
            start = time.perf_counter()
            adtn().sum().backward()
            synchronise()
            grad_times.append(time.perf_counter() - start)
        print(
            f"| 4096×4096 (Q = 24) | {device} | {depth} | {adtn.num_parameters():,} "
            f"| {min(times) * 1e3:.0f} | {min(grad_times) * 1e3:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-materialise", action="store_true")
    parser.add_argument("--device", default="cpu", help="device for the materialisation timings")
    parser.add_argument("--skip-steps", action="store_true", help="only the materialisation timings")
    parser.add_argument("--block-bits", type=int, nargs="*", help="compare block sizes (indices a block spans)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}\n")
    print("| model | depth | block bits | params dense | params ADTN | step dense (ms) | step ADTN (ms) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for block_bits in [] if args.skip_steps else args.block_bits or [None]:
        compare("LeNet-5, fc1–fc3 as ADTN", "lenet5", ["fc1", "fc2", "fc3"], args.depth, args.batch, args.repeats, block_bits)
        compare("FC-2, fc1–fc2 as ADTN", "fc2", ["fc1", "fc2"], args.depth, args.batch, args.repeats, block_bits)
    if not args.skip_materialise:
        print("\n| weight | device | depth | ADTN params | materialise (ms) | materialise + backward (ms) |")
        print("| --- | --- | --- | --- | --- | --- |")
        materialise_times((1, 2, 4), args.device)


if __name__ == "__main__":
    main()
