"""Which family of weights is richer at equal budget: the ADTN's or the TT-matrix's?

Trained run folders give three ``fc1`` weights of FC-2 (256 × 784): the dense model's, the
ADTN's and the TT-matrix's (each trained on MNIST). Each weight is then fitted by an ADTN and
by a TT-matrix of the same budget (the fit of the engine: restarts and Adam for the ADTN,
TT-SVD then Adam for the TT-matrix; and the TT-matrix by Adam alone from its random start, the
way the ADTN has to), and the relative error ``||W_fit - W|| / ||W||`` printed.
If the TT-matrix fits the ADTN's own trained weight better than the ADTN fits the TT-matrix's,
the TT-matrix's family holds more of the weights that training finds useful.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adtn_cross_fit.py \\
        --dense /work/bench/compare-mnist/fc2/runs/dense-seed0 \\
        --adtn /work/bench/adtn-research/fc2-interleaved/runs/adtn-d3-seed0 \\
        --tt /work/bench/compare-mnist/fc2/runs/tt-d3-seed0 --depth 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import LayerSpec  # noqa: E402
from engine.encodings.base import refine_by_adam  # noqa: E402
from engine.layers import EncodedLinear  # noqa: E402
from engine.runs import build_run_model  # noqa: E402


def trained_weight(run_dir: str, layer: str) -> torch.Tensor:
    model = build_run_model(run_dir, "best")
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        weight = module.weight if isinstance(module, torch.nn.Linear) else module.generator()
    return weight.detach().clone()


def fit_error(
    weight: torch.Tensor, spec: LayerSpec, steps: int, adam_only: bool = False
) -> tuple[float, int]:
    out_features, in_features = weight.shape
    dense = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        dense.weight.copy_(weight)
    torch.manual_seed(0)
    if adam_only:  # no closed-form start: gradient descent from the random initialisation
        layer = EncodedLinear.from_linear(dense, spec)
        error = refine_by_adam(layer.generator, weight, steps, lr=0.01)
        return float(error), layer.num_encoding_parameters()
    layer = EncodedLinear.from_linear(dense, spec, fit=True, fit_steps=steps)
    return float(layer.fit_error), layer.num_encoding_parameters()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", default="", help="run folder of the dense model")
    parser.add_argument("--adtn", default="", help="run folder of the ADTN model")
    parser.add_argument("--tt", default="", help="run folder of the TT-matrix model")
    parser.add_argument("--layer", default="fc1")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps of each fit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sources", default="dense,adtn,tt", help="which trained weights")
    parser.add_argument(
        "--activation", default="relu", help="the fitting ADTN's activation (as --adtn's run)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    adtn = LayerSpec(
        args.layer, depth=args.depth, index_order="interleaved", activation=args.activation
    )
    tt = LayerSpec(args.layer, encoding="tt", depth=args.depth, budget="match:adtn")
    fitters = {
        "ADTN": (adtn, False),
        "TT-matrix": (tt, False),
        "TT-matrix, Adam from random": (tt, True),
    }
    print(
        f"fits of trained `{args.layer}` weights at the ADTN depth-{args.depth} budget, "
        f"{args.steps} Adam steps each; relative error ||W_fit - W|| / ||W||\n"
    )
    print("| weight trained as | fitted by | parameters | relative error | seconds |")
    print("| --- | --- | ---: | ---: | ---: |")
    for source in args.sources.split(","):
        folder = getattr(args, source)
        if not folder:
            continue
        weight = trained_weight(folder, args.layer)
        for name, (spec, adam_only) in fitters.items():
            started = time.process_time()
            error, params = fit_error(weight, spec, args.steps, adam_only)
            seconds = time.process_time() - started
            label = {"dense": "dense", "adtn": "ADTN", "tt": "TT-matrix"}[source]
            print(f"| {label} | {name} | {params:,} | {error:.3f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
