"""One ADTN weight, forward and backward: the native gate passes against the matrix products.

For each weight shape (FC-2's and LeNet-5's linear layers, ``index_order="interleaved"``), two
copies of one ADTN, one contracting with native gate passes (``engine.adtn_native``) and one
with matrix products only (``kernel = "matmul"``), take turns (which goes first alternates):
materialise the weight and back-propagate a fixed gradient. Prints each one's median time and
the median of the per-pair ratios (native / matrix products; below 1: the native passes are
faster), so that a drift of the machine's speed hits both alike.

    python benchmarks/adtn_contractions.py [--threads 1] [--depth 3] [--pairs 40] [--clock cpu]

With ``--breakdown``, it then prints where one native weight's time goes: each kind of native
kernel call (timed by wrapping ``engine.adtn_native``'s functions) and the rest (Python, small
tensor operations, autograd). The breakdown runs the contraction one kernel call per step
(``NetworkState``); next to it, the same weight in one native call each way
(``engine.adtn_native_network``, what training uses where it can), whose difference is what
that call saves of the rest.
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import statistics
import time

import torch

from engine import adtn_native, adtn_native_network
from engine.adtn import ADTN

SHAPES = {
    "FC-2 fc1": (256, 784),
    "FC-2 fc2": (10, 256),
    "LeNet-5 fc1": (120, 400),
    "LeNet-5 fc2": (84, 120),
    "LeNet-5 fc3": (10, 84),
}


# The native kernel's entry points that a breakdown times.
KERNEL_CALLS = (
    "pass_forward", "pass_backward", "grow_forward", "grow_backward", "grow_gates_forward",
    "grow_gates_backward", "gather", "scatter_scaled", "transition",
)  # fmt: skip


def breakdown(depth: int, pairs: int, now) -> None:
    """Per weight, the mean time of one native forward and backward and of each kernel call
    kind in it (wrapped for the duration; a wrapper costs about a microsecond)."""
    spent: collections.Counter = collections.Counter()
    originals = {name: getattr(adtn_native, name) for name in KERNEL_CALLS}

    def timed(name, call):
        @functools.wraps(call)
        def wrapper(*args, **kwargs):
            start = now()
            try:
                return call(*args, **kwargs)
            finally:
                spent[name] += now() - start

        return wrapper

    header = " | ".join(f"{name} (ms)" for name in KERNEL_CALLS)
    print(
        "\n| weight | one native call each way, mean (ms) | a call per step, mean (ms) "
        f"| {header} | rest (ms) |"
    )
    print("| --- " * (len(KERNEL_CALLS) + 4) + "|")
    one_call = adtn_native_network.runs
    try:
        for name, call in originals.items():
            setattr(adtn_native, name, timed(name, call))
        for label, shape in SHAPES.items():
            torch.manual_seed(0)
            adtn = ADTN(shape, depth, index_order="interleaved")
            upstream = torch.randn(shape)

            def mean_time(adtn: ADTN = adtn, upstream: torch.Tensor = upstream) -> float:
                for _ in range(3):
                    adtn().backward(upstream)
                spent.clear()
                start = now()
                for _ in range(pairs):
                    adtn().backward(upstream)
                return (now() - start) / pairs

            adtn_native_network.runs = one_call
            whole = mean_time()
            adtn_native_network.runs = lambda *_: False
            total = mean_time()
            parts = [spent[name] / pairs * 1e3 for name in KERNEL_CALLS]
            rest = total * 1e3 - sum(parts)
            cells = " | ".join(f"{part:.2f}" for part in parts)
            print(f"| {label} | {whole * 1e3:.2f} | {total * 1e3:.2f} | {cells} | {rest:.2f} |")
    finally:
        adtn_native_network.runs = one_call
        for name, call in originals.items():
            setattr(adtn_native, name, call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"))
    parser.add_argument(
        "--breakdown", action="store_true", help="then where a native weight's time goes"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), depth {args.depth}, "
        f"{args.clock} clock; CPU contraction: {adtn_native.describe()}\n"
    )
    print("| weight | shape | native passes (ms) | matrix products (ms) | native / products |")
    print("| --- | --- | --- | --- | --- |")
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        native = ADTN(shape, args.depth, index_order="interleaved")
        products = copy.deepcopy(native)
        products.kernel = "matmul"
        upstream = torch.randn(shape)

        def once(adtn: ADTN, upstream: torch.Tensor = upstream) -> float:
            start = now()
            adtn().backward(upstream)
            return now() - start

        for _ in range(3):  # warm-up: buffers, compiled plans
            once(native), once(products)
        times_native, times_products, ratios = [], [], []
        for k in range(args.pairs):
            if k % 2:
                a = once(native)
                b = once(products)
            else:
                b = once(products)
                a = once(native)
            times_native.append(a)
            times_products.append(b)
            ratios.append(a / b)
        print(
            f"| {name} | {shape[0]}×{shape[1]} | {statistics.median(times_native) * 1e3:.2f} "
            f"| {statistics.median(times_products) * 1e3:.2f} "
            f"| {statistics.median(ratios):.2f} |"
        )
    if args.breakdown:
        breakdown(args.depth, args.pairs, now)


if __name__ == "__main__":
    main()
