"""How much an ADTN costs over the dense layer it replaces, next to the floor of its work.

Per model (LeNet-5 with its three linear layers as ADTNs, FC-2 with both), the median time of
one training step (forward, backward, fused Adam) of each, and the median of their ratios
over pairs of one dense and one ADTN step timed back to back (3 × ``--repeats`` pairs); the
floor of the ADTN layers' extra work (every gate touches the 2**Q state once each way with 4
multiply-adds per entry: FLOP, and bytes read and written in float32);
how long that floor takes at the arithmetic rate the dense step reaches in the same run, and
which fraction of the measured extra time that is (100 %: the ADTN costs no more than its
arithmetic). The ADTNs contract with native gate passes where they can (``engine.adtn_native``;
``--kernel matmul``: matrix products only; ``both``: one after the other in the same run).
Then the time to materialise a 4096×4096 weight with and without its backward
pass, and the peak memory of materialise + backward at depth 4 (on the CPU the growth of the
resident set of a fresh process whose large blocks are returned to the system when freed; on a
GPU ``torch.cuda.max_memory_allocated``), also in states of 2**Q float32 numbers.

    python benchmarks/adtn_overhead.py [--threads 1] [--device cpu|cuda] [--clock wall|cpu]
        [--depth 3] [--batch 128] [--memory auto|low|fast] [--kernel auto|matmul|both]
        [--compile] [--vgg16]
        [--skip-steps|--skip-materialise|--skip-peak]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from engine import adtn_native
from engine.adtn import ADTN
from engine.compression import compress
from engine.models import build_model

BYTES_PER_NUMBER = 4  # float32
# "wall": perf_counter; "cpu": this process's CPU time, which other processes' load on a shared
# machine does not inflate (meaningful with --threads 1 on the CPU only).
CLOCK = {"now": time.perf_counter}
PEAK_SHAPE, PEAK_DEPTH = (4096, 4096), 4
MODELS = (
    ("LeNet-5, fc1–fc3 as ADTNs", "lenet5", ["fc1", "fc2", "fc3"]),
    ("FC-2, fc1–fc2 as ADTNs", "fc2", ["fc1", "fc2"]),
)
# With --vgg16 (meant for a GPU): the vgg16-cifar10 preset's step, on CIFAR-shaped random data,
# its two linear layers as ADTNs of the preset's depth.
VGG16 = ("VGG-16 (CIFAR-10), fc1–fc2 as ADTNs", "vgg16", ["fc1", "fc2"])
VGG16_DEPTH = 1
IMAGE_SHAPES = {"vgg16": (3, 32)}  # (channels, size); the others take MNIST's (1, 28)


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_step(model: nn.Module, inputs, targets):
    # fused: one kernel for all parameters; the default per-tensor loop would dominate the
    # step of a model made of many small local tensors.
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        optimiser.step()

    return step


def timed(step, device: str) -> float:
    now = CLOCK["now"]
    synchronise(device)
    start = now()
    step()
    synchronise(device)
    return now() - start


def paired_medians(dense_step, adtn_step, pairs: int, device: str) -> tuple[float, float, float]:
    """(median dense step, median ADTN step, median of the per-pair ratios): single dense and
    ADTN steps alternate (which goes first alternates too), so that a drift of the machine's
    speed, from other processes' load or its clock, hits both of a pair alike."""
    for _ in range(3):  # warm-up: allocator, kernels, first-call costs
        dense_step(), adtn_step()
    dense_times, adtn_times, ratios = [], [], []
    for k in range(pairs):
        if k % 2:
            t_adtn = timed(adtn_step, device)
            t_dense = timed(dense_step, device)
        else:
            t_dense = timed(dense_step, device)
            t_adtn = timed(adtn_step, device)
        dense_times.append(t_dense)
        adtn_times.append(t_adtn)
        ratios.append(t_adtn / max(t_dense, 1e-12))
    return statistics.median(dense_times), statistics.median(adtn_times), statistics.median(ratios)


def step_flop(model: nn.Module, inputs, targets) -> int:
    """FLOP of one forward and backward pass (PyTorch's own counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        nn.CrossEntropyLoss()(model(inputs), targets).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def floor_of(adtns: list[ADTN]) -> tuple[int, int]:
    """(FLOP, bytes) that no contraction of these ADTNs can go below in one training step:
    each gate touches the 2**Q state once each way, 4 multiply-adds per entry, reading and
    writing every entry once."""
    flop = sum(len(a.gates) * (1 << a.Q) * 4 * 2 * 2 for a in adtns)
    moved = sum(len(a.gates) * (1 << a.Q) * BYTES_PER_NUMBER * 2 * 2 for a in adtns)
    return flop, moved


def compare(
    name,
    model_name,
    layers,
    depth,
    batch,
    repeats,
    device,
    block_bits=None,
    compiled=False,
    kernel="auto",
):
    torch.manual_seed(0)
    channels, size = IMAGE_SHAPES.get(model_name, (1, 28))
    dense = build_model(model_name, channels, size, 10).to(device)
    compressed = build_model(model_name, channels, size, 10)
    report = compress(compressed, layers, depth=depth)
    compressed.to(device)
    adtns = [m for m in compressed.modules() if isinstance(m, ADTN)]
    if compiled:  # both models alike, so that the ratio compares like with like
        dense, compressed = torch.compile(dense), torch.compile(compressed)
        name = f"{name}, torch.compile"
    for module in adtns:
        module.kernel = kernel
        if block_bits:
            module.block_bits = block_bits
    gates = adtns[0].gate_values
    native = adtns[0]._native_for(gates)
    how = "native gate passes" if native else f"matrix products, {block_bits or 'default'} bits"
    inputs = torch.randn(batch, channels, size, size, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)
    dense_step = make_step(dense, inputs, targets)
    adtn_step = make_step(compressed, inputs, targets)
    if compiled:
        started = time.perf_counter()
        dense_step(), adtn_step()
        print(
            f"(torch.compile of {name}: first steps took {time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
    # Three times as many pairs as --repeats: the median of the ratios needs more samples
    # than a median of one model's times (each ratio carries the noise of two steps).
    t_dense, t_adtn, ratio = paired_medians(dense_step, adtn_step, 3 * repeats, device)
    rate = step_flop(dense, inputs, targets) / t_dense  # the dense step's FLOP per second
    flop, moved = floor_of(adtns)
    floor_seconds = flop / rate
    extra = max(t_adtn - t_dense, 1e-12)
    print(
        f"| {name} | {how} | {report.model_params_before:,} → "
        f"{report.model_params_after:,} | {t_dense * 1e3:.2f} | {t_adtn * 1e3:.2f} "
        f"| {ratio:.2f}× | {flop / 1e9:.3f} GFLOP, {moved / 1e6:.0f} MB "
        f"| {rate / 1e9:.0f} GFLOP/s | {floor_seconds * 1e3:.2f} | {floor_seconds / extra:.0%} |"
    )


def materialise_times(
    depths, device: str, repeats: int = 3, memory: str = "auto", kernel: str = "auto"
) -> None:
    now = CLOCK["now"]
    for depth in depths:
        adtn = ADTN(PEAK_SHAPE, depth=depth, memory=memory).to(device)
        adtn.kernel = kernel
        with torch.no_grad():
            adtn._weight()  # warm-up
        times = []
        for _ in range(repeats):
            synchronise(device)
            start = now()
            with torch.no_grad():
                adtn._weight()
            synchronise(device)
            times.append(now() - start)
        grad_times = []
        for _ in range(repeats):
            synchronise(device)
            start = now()
            adtn().sum().backward()
            synchronise(device)
            grad_times.append(now() - start)
        low = adtn.uses_low_memory()
        how = "native passes" if adtn._native_for(adtn.gate_values) else "matrix products"
        agreement = ""
        if device != "cpu":  # the same float32 weight computed on the CPU
            with torch.no_grad():
                here = adtn._weight().cpu()
                there = copy.deepcopy(adtn).cpu()._weight()
            difference = float((here - there).abs().max() / there.abs().max())
            agreement = f", {difference:.1e} from the CPU's weight"
        print(
            f"| 4096×4096 (Q = 24) | {device} | {depth} | {adtn.num_parameters():,} "
            f"| {'low' if low else 'fast'}, {how}{agreement} | {min(times) * 1e3:.1f} "
            f"| {min(grad_times) * 1e3:.1f} |"
        )


def peak_child(device: str, memory: str, kernel: str = "auto") -> None:
    """Run in a fresh process: materialise + backward once, print the peak growth (JSON)."""
    # Warm-up on a small weight: libraries map their kernels and buffers on first use, which
    # the resident set would otherwise count.
    small = ADTN((256, 256), depth=PEAK_DEPTH, memory=memory).to(device)
    small.kernel = kernel
    small().backward(torch.randn(256, 256, device=device))
    adtn = ADTN(PEAK_SHAPE, depth=PEAK_DEPTH, memory=memory).to(device)
    adtn.kernel = kernel
    upstream = torch.randn(PEAK_SHAPE, device=device)  # a real incoming gradient
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _resident_bytes()
        _reset_peak_resident()
    start = CLOCK["now"]()
    weight = adtn()
    weight.backward(upstream)
    synchronise(device)
    seconds = CLOCK["now"]() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _peak_resident_bytes() - base
    print(json.dumps({"peak": peak, "seconds": seconds}))


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_resident() -> None:
    """Restart the peak resident set from now (Linux: ``5`` to ``/proc/self/clear_refs``), so
    that a higher one while libraries were loaded, before ``base``, does not count; kept
    where the system has no such file."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_resident_bytes() -> int:
    """The peak resident set (``VmHWM``; ``ru_maxrss`` where there is no ``/proc``)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    unit = 1 if sys.platform == "darwin" else 1024  # (bytes on macOS, KiB elsewhere)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


def peak_memory(device: str, memory: str, threads: int, kernel: str = "auto") -> None:
    env = dict(os.environ)
    # Blocks above 64 KiB are mapped and unmapped one by one, so the resident set follows
    # the memory that is really in use (glibc would otherwise keep freed blocks).
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    command = [
        sys.executable,
        __file__,
        "--peak-child",
        "--device",
        device,
        "--memory",
        memory,
        "--kernel",
        kernel,
        "--threads",
        str(threads),
        "--clock",
        "cpu" if CLOCK["now"] is time.process_time else "wall",
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    state = (1 << 24) * BYTES_PER_NUMBER
    how = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "resident-set growth"
    print(
        f"| 4096×4096, depth {PEAK_DEPTH}, memory={memory!r}, kernel={kernel!r} | {device} | "
        f"{result['peak'] / 2**20:.0f} MiB ({how}) | {result['peak'] / state:.2f} "
        f"| {result['seconds'] * 1e3:.0f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--skip-steps", action="store_true", help="no training-step timings")
    parser.add_argument("--skip-materialise", action="store_true", help="no 4096×4096 timings")
    parser.add_argument("--skip-peak", action="store_true", help="no peak-memory measurement")
    parser.add_argument(
        "--memory",
        default="auto",
        choices=("auto", "low", "fast"),
        help="the ADTN's memory mode for the 4096×4096 measurements",
    )
    parser.add_argument(
        "--block-bits", type=int, nargs="*", help="compare block sizes (matrix products)"
    )
    parser.add_argument(
        "--kernel",
        default="auto",
        choices=("auto", "matmul", "both"),
        help="the ADTNs' contraction: native gate passes where they can run (auto), matrix "
        "products only, or both one after the other",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall time, or this process's CPU time (robust to other load)",
    )
    parser.add_argument("--materialise-repeats", type=int, default=3)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time both models under torch.compile (Inductor)",
    )
    parser.add_argument(
        "--vgg16",
        action="store_true",
        help="also time the vgg16-cifar10 preset's step (CIFAR-shaped random data; for a GPU)",
    )
    parser.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clock == "cpu":
        CLOCK["now"] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA device here")
    if args.peak_child:
        peak_child(args.device, args.memory, args.kernel)
        return
    kernels = ("auto", "matmul") if args.kernel == "both" else (args.kernel,)
    built = adtn_native.library()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device "
        f"{args.device}, batch {args.batch}, ADTN depth {args.depth}, {args.clock} clock; "
        f"native kernel {'built' if built is not None else 'not available'}\n"
    )
    if not args.skip_steps:
        print(
            "| model | contraction | parameters | dense step (ms) | ADTN step (ms) | ratio "
            "| floor of the ADTN work | dense FLOP rate | floor at that rate (ms) "
            "| fraction of the floor reached |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for kernel in kernels:
            for block_bits in args.block_bits or [None]:
                rows = [(*model, args.depth) for model in MODELS]
                if args.vgg16:
                    rows.append((*VGG16, VGG16_DEPTH))
                for name, model_name, layers, depth in rows:
                    compare(
                        name,
                        model_name,
                        layers,
                        depth,
                        args.batch,
                        args.repeats,
                        args.device,
                        block_bits,
                        kernel=kernel,
                    )
        if args.compile:
            compare(
                "FC-2, fc1–fc2 as ADTNs",
                "fc2",
                ["fc1", "fc2"],
                args.depth,
                args.batch,
                args.repeats,
                args.device,
                None,
                compiled=True,
            )
    if not args.skip_materialise:
        print(
            "\n| weight | device | depth | ADTN parameters | backward mode | materialise (ms) "
            "| materialise + backward (ms) |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for kernel in kernels:
            materialise_times((1, 2, 4), args.device, args.materialise_repeats, args.memory, kernel)
    if not args.skip_peak:
        print(
            "\n| materialise + backward | device | peak memory | in states of 2^24 float32 | time |"
        )
        print("| --- | --- | --- | --- | --- |")
        for kernel in kernels:
            peak_memory(args.device, args.memory, args.threads, kernel)


if __name__ == "__main__":
    main()
