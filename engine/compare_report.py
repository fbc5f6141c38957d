"""The files a comparison writes: ``compare.csv``, ``compare.json``, ``compare.md`` and the
Pareto plot ``compare.png`` (parameters on a log axis against accuracy, one colour per
encoding). Every write is atomic."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from engine.choices import RunStatus
from engine.paths import atomic_write_text

if TYPE_CHECKING:
    from engine.compare import CompareRequest, VariantResult

CSV_COLUMNS = (
    "variant",
    "encoding",
    "budget_depth",
    "seed",
    "lr",
    "compressed_layer_params",
    "model_params",
    "best_test_acc",
    "final_test_acc",
    "seconds_per_epoch",
    "status",
    "options",
    "run_dir",
)
ENCODING_COLOURS = {
    "dense": "#444444",
    "adtn": "#d62728",
    "tt": "#1f77b4",
    "lowrank": "#2ca02c",
    "tucker": "#9467bd",
    "cp": "#ff7f0e",
}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats with fewer (or equal) parameters and higher accuracy,
    sorted by parameters."""
    front, best = [], -math.inf
    for params, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((params, acc))
            best = acc
    return front


def _options(result: VariantResult) -> str:
    return "; ".join(f"{layer['name']}: {layer['detail']}" for layer in result.layers)


def csv_text(results: list[VariantResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        if not r.fits:
            writer.writerow(
                [
                    r.key,
                    r.encoding,
                    r.depth,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"not trained: {r.reason}",
                    "",
                    "",
                ]
            )
            continue
        for i, seed in enumerate(r.seeds):
            finished = i < len(r.best_test_acc) and r.status[i] == RunStatus.FINISHED
            writer.writerow(
                [
                    r.key,
                    r.encoding,
                    r.depth,
                    seed,
                    f"{r.lr:g}",
                    r.layer_params,
                    r.model_params,
                    f"{r.best_test_acc[i]:.6f}" if finished else "",
                    f"{r.final_test_acc[i]:.6f}" if finished else "",
                    f"{r.seconds_per_epoch[i]:.3f}" if finished else "",
                    r.status[i],
                    _options(r),
                    r.run_dirs[i],
                ]
            )
    return buffer.getvalue()


def _percent(value: float) -> str:
    return "–" if value != value else f"{100 * value:.2f} %"


def markdown_text(request: CompareRequest, results: list[VariantResult], seconds: float) -> str:
    base = request.base
    seeds = ", ".join(map(str, request.seeds))
    search = (
        f"a learning-rate search over {', '.join(f'{lr:g}' for lr in request.lrs)} "
        f"({request.total_search_epochs} epoch(s), seed {request.seeds[0]}, scored on "
        f"{100 * request.holdout_fraction:g} % of the training examples held out)"
        if request.lr_search
        else f"learning rate {base.lr:g} for every variant"
    )
    lines = [
        f"# {base.model} on {base.dataset}: encodings at equal parameter budgets",
        "",
        f"Layers encoded: {', '.join(s.name for s in base.layers)}. Every variant: "
        f"{request.total_epochs} epochs, {base.optimizer}, {base.schedule} schedule, batch "
        f"{base.batch_size}, seeds {seeds}, {search}. Budgets are matched per layer to the "
        f"ADTN of the given depth (at most 5 % above). Accuracy: test set, best epoch and "
        f"final epoch, mean over seeds.",
        "",
        "| variant | compressed-layer parameters | model parameters | learning rate | "
        "best test acc (mean) | final test acc (mean) | per seed (best) | s / epoch | options |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if not r.fits:
            lines.append(f"| {r.label} | – | – | – | not trained | – | – | – | {r.reason} |")
            continue
        per_seed = ", ".join(_percent(a) for a in r.best_test_acc) or "–"
        layer_params = f"{r.layer_params:,}" if r.encoding != "dense" else "(dense)"
        lines.append(
            f"| {r.label} | {layer_params} | {r.model_params:,} | {r.lr:g} | "
            f"{_percent(r.mean_best)} | {_percent(r.mean_final)} | {per_seed} | "
            f"{r.mean_seconds:.1f} | {_options(r) or '–'} |"
        )
    lines += [
        "",
        verdict(results),
        "",
        "![Pareto plot](compare.png)",
        "",
        f"Total time: {seconds / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def verdict(results: list[VariantResult]) -> str:
    """Per budget, which encoding reached the best mean accuracy, stated plainly."""
    by_depth: dict[int, list[VariantResult]] = {}
    for r in results:
        if r.fits and r.encoding != "dense" and r.best_test_acc:
            by_depth.setdefault(r.depth, []).append(r)
    sentences = []
    for depth, group in sorted(by_depth.items()):
        ranked = sorted(group, key=lambda r: r.mean_best, reverse=True)
        winner = ranked[0]
        others = ", ".join(f"{r.encoding} {_percent(r.mean_best)}" for r in ranked[1:])
        sentences.append(
            f"At the ADTN depth-{depth} budget the best is **{winner.encoding}** "
            f"({_percent(winner.mean_best)})" + (f"; then {others}." if others else ".")
        )
    return " ".join(sentences) or "No variant finished."


def write_plot(results: list[VariantResult], path: Path) -> bool:
    """The Pareto plot as PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    by_encoding: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r.fits and r.best_test_acc:
            by_encoding.setdefault(r.encoding, []).append((r.model_params, 100 * r.mean_best))
    for encoding, points in by_encoding.items():
        colour = ENCODING_COLOURS.get(encoding, "#888888")
        xs, ys = zip(*points)
        axes.scatter(xs, ys, color=colour, label=encoding, zorder=3)
        front = pareto_front(points)
        if len(front) > 1:
            axes.plot(*zip(*front), color=colour, alpha=0.6, zorder=2)
    axes.set_xscale("log")
    axes.set_xlabel("parameters of the whole model")
    axes.set_ylabel("best test accuracy, mean over seeds (%)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(descriptor)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.unlink(temporary)
    return True


def write_report(
    request: CompareRequest, results: list[VariantResult], out: Path, seconds: float
) -> None:
    out = Path(out)
    atomic_write_text(out / "compare.csv", csv_text(results))
    document = {
        "model": request.base.model,
        "dataset": request.base.dataset,
        "layers": [s.name for s in request.base.layers],
        "encodings": list(request.encodings),
        "depths": list(request.depths),
        "seeds": list(request.seeds),
        "epochs": request.total_epochs,
        "lr_search": request.lr_search,
        "lrs": list(request.lrs),
        "search_epochs": request.total_search_epochs,
        "holdout_fraction": request.holdout_fraction,
        "seconds": seconds,
        "variants": [r.to_dict() for r in results],
    }
    atomic_write_text(out / "compare.json", json.dumps(document, indent=2, allow_nan=True))
    atomic_write_text(out / "compare.md", markdown_text(request, results, seconds))
    write_plot(results, out / "compare.png")
