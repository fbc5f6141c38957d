"""Sweeps for the ADTN accuracy-per-parameter research (docs/RESEARCH.md).

Each probe is a named variant of one base run configuration (FC-2 or LeNet-5 on the real MNIST,
every linear layer encoded), trained by the application's own ``engine.trainer.train``. Probes
are scored on ``holdout`` training examples held out of the training set, so the test set is
never seen while ideas are screened. Results are appended to ``OUT.jsonl`` (a probe already
there is not trained again) and the table is printed and written to ``OUT`` as markdown.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adtn_research.py --list
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adtn_research.py \\
        --probes base,lr-same,adamw --out benchmarks/results/research-screen.md

Screening default: 20,000 training examples, 5,000 of them held out, 3 epochs, seed 0.
``adtn_research.py compare ARGS`` runs ``adtn-studio compare ARGS`` in this process, with the
prototypes installed (``--config FILE`` may then name their options).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.config import LayerSpec, RunConfig  # noqa: E402

LAYERS = {"fc2": ("fc1", "fc2"), "lenet5": ("fc1", "fc2", "fc3")}

# The base: what the presets do today (Adam, lr 2e-3, ADTN lr 1e-2, cosine, batch 128).
BASE: dict[str, Any] = dict(
    model="fc2",
    dataset="mnist",
    optimizer="adam",
    lr=2e-3,
    adtn_lr=1e-2,
    schedule="cosine",
    batch_size=128,
    init="scratch",
)
BASE_LAYER: dict[str, Any] = dict(depth=3)

# name -> (run configuration changes, changes to every encoded layer)
PROBES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "base": ({}, {}),
    # -- optimisation
    "lr-same-2e-3": ({"adtn_lr": 0.0}, {}),
    "lr-same-1e-2": ({"lr": 1e-2, "adtn_lr": 0.0}, {}),
    "adtn-lr-3e-3": ({"adtn_lr": 3e-3}, {}),
    "adtn-lr-3e-2": ({"adtn_lr": 3e-2}, {}),
    "adtn-lr-1e-1": ({"adtn_lr": 1e-1}, {}),
    "lr-5e-3": ({"lr": 5e-3}, {}),
    "adamw": ({"optimizer": "adamw", "weight_decay": 1e-4}, {}),
    "sgd-0.05": ({"optimizer": "sgd", "lr": 0.05, "adtn_lr": 0.25}, {}),
    "sgd-0.1": ({"optimizer": "sgd", "lr": 0.1, "adtn_lr": 0.1}, {}),
    "sgd-0.05-0.05": ({"optimizer": "sgd", "lr": 0.05, "adtn_lr": 0.05}, {}),
    "sgd-0.1-0.02": ({"optimizer": "sgd", "lr": 0.1, "adtn_lr": 0.02}, {}),
    "sgd-0.05-1e-3": ({"optimizer": "sgd", "lr": 0.05, "adtn_lr": 1e-3}, {}),
    "sgd-0.05-1e-4": ({"optimizer": "sgd", "lr": 0.05, "adtn_lr": 1e-4}, {}),
    "batch-64": ({"batch_size": 64}, {}),
    "lr-5e-3-adtn-2e-2": ({"lr": 5e-3, "adtn_lr": 2e-2}, {}),
    "no-schedule": ({"schedule": "none"}, {}),
    "warmup-1": ({"warmup_epochs": 1}, {}),
    # -- structure
    "no-normalise": ({"prototype": {"normalise": False}}, {}),
    "interleaved-no-normalise": (
        {"prototype": {"normalise": False}},
        {"index_order": "interleaved"},
    ),
    "image-modes": ({"prototype": {"image_modes": True}}, {}),
    "image-modes-interleaved": (
        {"prototype": {"image_modes": True}},
        {"index_order": "interleaved"},
    ),
    "act-none": ({}, {"activation": "none"}),
    "act-leaky": ({}, {"activation": "leaky_relu"}),
    "stair": ({}, {"layout": "stair"}),
    "interleaved": ({}, {"index_order": "interleaved"}),
    "interleaved-none": ({}, {"index_order": "interleaved", "activation": "none"}),
    "interleaved-leaky": ({}, {"index_order": "interleaved", "activation": "leaky_relu"}),
    "interleaved-stair": ({}, {"index_order": "interleaved", "layout": "stair"}),
    # -- initialisation
    "init-near-identity": ({}, {"gate_init": "near_identity"}),
    "init-normal": ({}, {"gate_init": "normal"}),
    "interleaved-near-identity": ({}, {"index_order": "interleaved", "gate_init": "near_identity"}),
    # -- depth at a budget: depth d of the ADTN is the budget; here simply more depth
    **{f"depth-{d}": ({}, {"depth": d}) for d in (1, 2, 4, 6, 8)},
    # -- references at the same budget: the TT-matrix layer and the dense model
    "tt": ({}, {"encoding": "tt", "budget": "match:adtn"}),
    **{
        f"tt-depth-{d}": ({}, {"encoding": "tt", "budget": "match:adtn", "depth": d})
        for d in (1, 2, 4, 6)
    },
    "tt-lr-same-1e-2": ({"lr": 1e-2, "adtn_lr": 0.0}, {"encoding": "tt", "budget": "match:adtn"}),
    # -- the small-model target: FC-2 with at most 5,000 parameters (depth 10: 4,568)
    "target-adtn-d10": ({"lr": 1e-2, "adtn_lr": 0.0}, {"depth": 10, "index_order": "interleaved"}),
    "target-tt-d10": (
        {"lr": 1e-2, "adtn_lr": 0.0},
        {"depth": 10, "encoding": "tt", "budget": "match:adtn"},
    ),
    # -- the LeNet-5 target (its three linear layers at least 30x smaller: depth 3)
    "target-lenet-interleaved": ({"lr": 1e-2, "adtn_lr": 0.0}, {"index_order": "interleaved"}),
    "target-lenet-tt": ({"lr": 1e-2, "adtn_lr": 0.0}, {"encoding": "tt", "budget": "match:adtn"}),
    # -- a dense model, e.g. the teacher of knowledge distillation (--teacher RUN_DIR)
    # LeNet-5 within the size target's allowance (≥ 30× fewer than the layers' 59,134, so at
    # most 1,971): depth 3 for fc1, 4 for fc2 and fc3 (1,947), and the TT-matrix layer by layer.
    "target-lenet-344": (
        {"lr": 1e-2, "adtn_lr": 0.0},
        {"index_order": "interleaved", "depths": [3, 4, 4]},
    ),
    "target-lenet-344-tt": (
        {"lr": 1e-2, "adtn_lr": 0.0},
        {"encoding": "tt", "budget": "match:adtn", "depths": [3, 4, 4]},
    ),
    "dense": ({"lr": 1e-3, "adtn_lr": 0.0, "dense_baseline": True}, {}),
    # -- from a trained dense layer
    "pretrained": ({"init": "pretrained", "pretrain_epochs": 1, "fit_steps": 500}, {}),
    # The plain-autograd GateNetwork (benchmarks/adtn_prototypes.py) in place of the engine's
    # ADTN: gates on three or four indices, smooth activations. "network" names its settings;
    # a TT-matrix probe with them matches the budget of that network ("match:adtn").
    "proto-interleaved": ({"network": {}}, {"index_order": "interleaved"}),
    "proto-tanh": ({"network": {"activation": "tanh"}}, {"index_order": "interleaved"}),
    "proto-gelu": ({"network": {"activation": "gelu"}}, {"index_order": "interleaved"}),
    "interleaved-d2": ({}, {"index_order": "interleaved", "depth": 2}),
    "interleaved-d4": ({}, {"index_order": "interleaved", "depth": 4}),
    "interleaved-d5": ({}, {"index_order": "interleaved", "depth": 5}),
    # continuation: leaky slope 1 → 0 (linear → ReLU) over this fraction of the training steps
    "anneal-50": ({"network": {"anneal_fraction": 0.5}}, {"index_order": "interleaved"}),
    "anneal-90": ({"network": {"anneal_fraction": 0.9}}, {"index_order": "interleaved"}),
    "anneal-50-d4": (
        {"network": {"anneal_fraction": 0.5}},
        {"index_order": "interleaved", "depth": 4},
    ),
    "residual": ({"network": {"residual": True}}, {"index_order": "interleaved"}),
    "residual-d4": ({"network": {"residual": True}}, {"index_order": "interleaved", "depth": 4}),
    "g3-d1": ({"network": {"gate_bits": 3}}, {"index_order": "interleaved", "depth": 1}),
    "g3-d2": ({"network": {"gate_bits": 3}}, {"index_order": "interleaved", "depth": 2}),
    "g3-d2-tanh": (
        {"network": {"gate_bits": 3, "activation": "tanh"}},
        {"index_order": "interleaved", "depth": 2},
    ),
    "g4-d1": ({"network": {"gate_bits": 4}}, {"index_order": "interleaved", "depth": 1}),
    "g4-d2": ({"network": {"gate_bits": 4}}, {"index_order": "interleaved", "depth": 2}),
    "tt-g3-d1": (
        {"network": {"gate_bits": 3}},
        {"encoding": "tt", "budget": "match:adtn", "depth": 1},
    ),
    "tt-g3-d2": (
        {"network": {"gate_bits": 3}},
        {"encoding": "tt", "budget": "match:adtn", "depth": 2},
    ),
    "tt-g4-d1": (
        {"network": {"gate_bits": 4}},
        {"encoding": "tt", "budget": "match:adtn", "depth": 1},
    ),
}


def interleaved_order(mode_bits: tuple[int, ...]) -> list[int]:
    """Network position -> flat-index bit (rows first): one bit of each mode in turn, most
    significant first, the longer mode's extra bits at the end."""
    starts = [sum(mode_bits[:m]) for m in range(len(mode_bits))]
    order = []
    for k in range(max(mode_bits)):
        order += [starts[m] + k for m in range(len(mode_bits)) if k < mode_bits[m]]
    return order


def install_prototypes() -> None:
    """Screen options the engine's ADTN did not have (``index_order``, ``init``, and the
    probes' ``normalise`` and ``image_modes``) with a subclass of the engine's ADTN as it was
    at commit 813182a (its ``_crop`` and ``_network_state``), where the research ran (a
    ``git archive`` of that commit). With an engine that has ``index_order`` and ``init`` its
    own are used and the two other probes refuse to run."""
    import inspect

    import torch

    import engine.encodings.adtn as encoding_module
    from engine.adtn import ADTN

    accepted = inspect.signature(ADTN.__init__).parameters
    if "index_order" in accepted and "init" in accepted:
        return

    class PrototypeADTN(ADTN):
        def __init__(self, shape, *a, index_order="rows_first", init="orthogonal", **k):
            self.layer_shape = tuple(shape)
            if self.image_modes and len(shape) == 2 and shape[1] == 28 * 28:
                # read the input index as (image row, image column), each padded to 32, so
                # that the binary indices follow the picture's geometry (same Q: 10 bits)
                shape = (shape[0], 28, 28)
            super().__init__(shape, *a, **k)
            self.index_order = index_order
            order = (
                interleaved_order(self.mode_bits)
                if index_order == "interleaved"
                else list(range(self.Q))
            )
            self._to_rows_first = [order.index(j) for j in range(self.Q)]
            if init != "orthogonal":
                generator = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
                with torch.no_grad():
                    for spec, gate in zip(self.specs, self.gates):
                        noise = torch.randn(4, 4, generator=generator)
                        full = (
                            torch.eye(4) + 0.1 * noise if init == "near_identity" else noise / 2.0
                        )
                        gate.copy_(full[:, list(spec.columns)])

        normalise = True  # set by a probe's "prototype" changes
        image_modes = False

        def _weight(self):
            return self._weight_of_shape().reshape(self.layer_shape)

        def _weight_of_shape(self):
            if self.normalise:
                return super()._weight()
            # no rms normalisation, in the network nor of the weight: a constant fixed at
            # initialisation gives the weight its starting spread instead
            raw = self._crop(self._network_state(normalise=False))
            if not hasattr(self, "_fixed_rms"):
                self._fixed_rms = float(raw.detach().square().mean().sqrt())
            return raw * (self.scale / self._fixed_rms)

        def _crop(self, state):
            state = state.reshape((2,) * self.Q).permute(self._to_rows_first)
            return super()._crop(state.reshape(-1))

    encoding_module.ADTN = PrototypeADTN
    global PROTOTYPE
    PROTOTYPE = PrototypeADTN


PROTOTYPE = None


def build_config(name: str, args: argparse.Namespace) -> RunConfig:
    changes, layer_changes = PROBES[name]
    values = dict(
        BASE,
        model=args.model,
        data_root=args.data_root,
        download=False,
        device=args.device,
        epochs=args.epochs,
        limit_train=args.limit_train,
        holdout=args.holdout,
        seed=args.seed,
        name=f"research-{name}",
    )
    values.update({k: v for k, v in changes.items() if k not in ("prototype", "network")})
    if "pretrain_epochs" in changes:  # dense epochs count on top: keep the total the same
        values["epochs"] = max(1, args.epochs - int(changes["pretrain_epochs"]))
    layer = dict(BASE_LAYER, **{k: v for k, v in layer_changes.items() if k != "depths"})
    if args.depth and "depth" not in layer_changes:
        layer["depth"] = args.depth
    dense = values.get("dense_baseline", False)
    # "depths": one depth per encoded layer (a budget spent unevenly), else the same for all
    depths = layer_changes.get("depths") or [layer["depth"]] * len(LAYERS[args.model])
    values["layers"] = (
        []
        if dense
        else [
            LayerSpec(n, **dict(layer, depth=d))
            for n, d in zip(LAYERS[args.model], depths, strict=True)
        ]
    )
    if args.teacher and not dense:  # every compressed probe learns from the same teacher
        values.update(
            teacher=args.teacher,
            distill_weight=args.distill_weight,
            distill_temperature=args.distill_temperature,
        )
    return RunConfig(**values).validate()


def install_network(settings: dict[str, Any], training_steps: int = 0):
    """Put a ``GateNetwork`` with ``settings`` (gate_bits, activation, anneal_fraction of the
    run's ``training_steps``) in place of the engine's ADTN for the encodings (building and
    budget counting); returns the undo."""
    import engine.encodings.adtn as encoding_module
    from benchmarks.adtn_prototypes import GateNetwork

    attributes = {
        "gate_bits": int(settings.get("gate_bits", 2)),
        "activation_override": settings.get("activation", ""),
        "anneal_steps": int(settings.get("anneal_fraction", 0.0) * training_steps),
        "residual": bool(settings.get("residual", False)),
    }
    network = type("ScreenedNetwork", (GateNetwork,), attributes)
    engine_adtn = encoding_module.ADTN
    encoding_module.ADTN = network

    def restore() -> None:
        encoding_module.ADTN = engine_adtn

    return restore


def train_probe(name: str, config: RunConfig, args: argparse.Namespace):
    from engine.trainer import train

    if args.runs:  # kept: metrics.csv shows each epoch while a long probe runs
        taught = f"-kd{args.distill_weight:g}T{args.distill_temperature:g}" if args.teacher else ""
        return train(config, Path(args.runs) / f"{args.model}-{name}{taught}-seed{args.seed}")
    with tempfile.TemporaryDirectory(prefix="adtn-research-") as folder:
        return train(config, Path(folder) / name)


def run_probe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    changes = PROBES[name][0]
    config = build_config(name, args)
    prototype = PROBES[name][0].get("prototype", {})
    if prototype and PROTOTYPE is None:
        raise SystemExit(f"{name}: needs the prototype ADTN (the engine's has its options)")
    saved = {key: getattr(PROTOTYPE, key) for key in prototype}
    for key, value in prototype.items():
        setattr(PROTOTYPE, key, value)
    restore = None
    if "network" in changes:
        images = (args.limit_train or 60000) - args.holdout
        steps = -(-images // config.batch_size) * config.epochs
        restore = install_network(changes["network"], steps)
    started = time.time()
    try:
        summary = train_probe(name, config, args)
    finally:
        for key, value in saved.items():
            setattr(PROTOTYPE, key, value)
        if restore:
            restore()
    return {
        "probe": name,
        "model": args.model,
        "status": summary.status,
        "error": summary.error_message,
        "seed": args.seed,
        "epochs": args.epochs,
        "limit_train": args.limit_train,
        "holdout": args.holdout,
        "params_total": summary.params_total,
        "layer_params": summary.compression.get("compressed_layers_encoded_params", 0),
        "fit_errors": summary.compression.get("fit_errors", {}),
        "best_acc": summary.best_test_acc,
        "final_acc": summary.test_acc,
        "seconds_per_epoch": summary.seconds_per_epoch,
        "wall_seconds": time.time() - started,
        "changes": {
            **PROBES[name][0],
            **(
                {"teacher": Path(args.teacher).name, "distill": args.distill_weight}
                if args.teacher and not config.dense_baseline
                else {}
            ),
        },
        "layer_changes": PROBES[name][1],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| probe | seed | epochs | model params | held-out acc (final) | best | s/epoch "
        "| changes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["status"] != "finished":
            lines.append(
                f"| {r['probe']} | {r['seed']} | {r['epochs']} | | {r['status']}: "
                f"{r['error'][:60]} | | | |"
            )
            continue
        changes = ", ".join(f"{k}={v}" for k, v in {**r["changes"], **r["layer_changes"]}.items())
        lines.append(
            f"| {r['probe']} | {r['seed']} | {r['epochs']} | {r['params_total']:,} | "
            f"{r['final_acc']:.2%} | "
            f"{r['best_acc']:.2%} | {r['seconds_per_epoch']:.1f} | {changes or '—'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:  # `adtn-studio compare ARGS`, with the prototypes installed
        from adtn_studio.cli import run_cli

        install_prototypes()
        return run_cli(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", default="base", help="comma-separated probe names")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    parser.add_argument("--model", choices=sorted(LAYERS), default="fc2")
    parser.add_argument("--depth", type=int, default=0, help="ADTN depth (default 3)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default="/work/shared/datasets")
    parser.add_argument("--out", default="benchmarks/results/adtn-research.md")
    parser.add_argument("--runs", default="", help="keep the run folders here (default: none)")
    parser.add_argument("--teacher", default="", help="distil from this run folder or weights")
    parser.add_argument("--distill-weight", type=float, default=0.5)
    parser.add_argument("--distill-temperature", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.list:
        for name, (changes, layer) in PROBES.items():
            print(f"{name:28s} {changes} {layer}")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    install_prototypes()
    names = [n.strip() for n in args.probes.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        parser.error(f"unknown probe(s): {', '.join(unknown)} (see --list)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    key = (args.model, args.seed, args.epochs, args.limit_train, args.holdout, args.depth)

    def same(r: dict[str, Any], name: str) -> bool:
        return (
            r["probe"] == name
            and (
                r["model"],
                r["seed"],
                r["epochs"],
                r["limit_train"],
                r["holdout"],
                r.get("depth", 0),
            )
            == key
            and r["status"] == "finished"
        )

    for name in names:
        if any(same(r, name) for r in rows):
            print(f"{name}: already measured", flush=True)
            continue
        row = run_probe(name, args)
        row["depth"] = args.depth
        rows.append(row)
        with store.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{name}: {row['status']} final {row['final_acc']:.2%} best {row['best_acc']:.2%} "
            f"({row['params_total']:,} params, {row['seconds_per_epoch']:.1f} s/epoch)",
            flush=True,
        )
    text = table(rows)
    header = (
        "ADTN research probes (benchmarks/adtn_research.py); accuracy on held-out "
        "training examples, never the test set.\n\n"
    )
    out.write_text(header + text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
