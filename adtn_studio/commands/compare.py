"""``adtn-studio compare``: encodings side by side at equal parameter budgets."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from adtn_studio.cli import CommandError
from engine.choices import RunStatus
from engine.events import RunControl


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, got {text!r}"
        ) from None


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train every encoding at equal parameter budgets and tabulate",
        description="Train the layers of a preset or configuration under several encodings "
        "(adtn, tt, lowrank, tucker, cp; 'dense' adds the uncompressed model) at "
        "the parameter budget of the ADTN of each given depth, for every seed, "
        "with the same data, epochs and schedule. Writes compare.csv, "
        "compare.json and compare.md (with a Pareto plot) into --out; every "
        "variant is an ordinary run folder. Run it again with the same --out to "
        "resume.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", metavar="NAME", help="a built-in preset (see 'presets')")
    source.add_argument("--config", metavar="FILE", type=Path, help="a run configuration (TOML)")
    parser.add_argument(
        "--encodings",
        type=_words,
        default=["adtn", "tt", "lowrank"],
        metavar="LIST",
        help="encodings to compare (default adtn,tt,lowrank)",
    )
    parser.add_argument(
        "--depths",
        type=_ints,
        metavar="LIST",
        help="ADTN depths whose parameter counts are the budgets (default: "
        "the configuration's depth)",
    )
    parser.add_argument(
        "--seeds", type=_ints, default=[0, 1], metavar="LIST", help="seeds (default 0,1)"
    )
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs of every variant")
    parser.add_argument(
        "--lr-search",
        action="store_true",
        help="choose each variant's learning rate on held-out training "
        "examples first (never the test set)",
    )
    parser.add_argument(
        "--lrs",
        type=_floats,
        metavar="LIST",
        help="learning rates the search tries (default 0.001,0.003,0.01)",
    )
    parser.add_argument(
        "--search-epochs",
        type=int,
        metavar="N",
        help="epochs of each search training (default: half of --epochs)",
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="fraction of the training examples the search holds out (default 0.1)",
    )
    parser.add_argument("--data-root", metavar="DIR", help="folder holding the data sets")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--limit-train", type=int, metavar="N", help="use only the first N training examples"
    )
    parser.add_argument(
        "--limit-test", type=int, metavar="N", help="use only the first N test examples"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="output folder (default: a new folder under the runs folder)",
    )
    parser.set_defaults(func=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    from engine.compare import CompareError, CompareRequest, run_compare
    from engine.config import ConfigError, RunConfig
    from engine.paths import default_runs_root
    from engine.presets import load_preset

    try:
        config = load_preset(args.preset) if args.preset else RunConfig.load(args.config)
        changes = {
            name: value
            for name, value in (
                ("data_root", args.data_root),
                ("device", args.device),
                ("limit_train", args.limit_train),
                ("limit_test", args.limit_test),
            )
            if value is not None
        }
        config = config.replace(**changes).validate()
    except (ConfigError, KeyError, ValueError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None
    depths = args.depths or sorted({spec.depth for spec in config.layers}) or [1]
    out = (
        args.out
        or default_runs_root() / f"compare-{config.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    request = CompareRequest(
        base=config,
        out=out,
        encodings=args.encodings,
        depths=depths,
        seeds=args.seeds,
        epochs=args.epochs or 0,
        lr_search=args.lr_search,
        search_epochs=args.search_epochs or 0,
        holdout_fraction=args.holdout,
    )
    if args.lrs:
        request.lrs = args.lrs
    try:
        request.validate()
    except CompareError as exc:
        raise CommandError(str(exc)) from None
    control = RunControl()
    bar = tqdm(
        total=len(request.variants())
        * (len(request.seeds) + (len(request.lrs) if request.lr_search else 0)),
        unit="run",
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def progress(step) -> None:
        bar.n = step.done
        if step.stage == "skip":
            tqdm.write(f"{step.variant}: not trained: {step.message}", file=sys.stderr)
        elif step.stage in ("search", "train"):
            what = f"lr {step.lr:g}" if step.stage == "search" else f"seed {step.seed}"
            bar.set_description(f"{step.variant} {step.stage} {what}")
        bar.refresh()

    previous = signal.signal(signal.SIGINT, lambda *_: control.request_stop())
    try:
        results = run_compare(request, progress=progress, control=control)
    except (CompareError, ConfigError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.n = bar.total if not control.stop_requested else bar.n
        bar.close()
    print((Path(out) / "compare.md").read_text(encoding="utf-8"))
    print(f"written: {out}/compare.csv, compare.json, compare.md, compare.png")
    if control.stop_requested:
        print("stopped; run the same command again to resume", file=sys.stderr)
        return 130
    failed = [r.key for r in results for s in r.status if s != RunStatus.FINISHED]
    return 1 if failed else 0
