"""Encodings side by side: the same network, data, epochs and schedule, equal budgets.

``run_compare`` trains one variant per (budget, encoding) — the budget of a variant is the
count of the ADTN of a given depth on each chosen layer, matched per layer — for every seed,
through the ordinary trainer: each is a run folder of its own (resumable, listed in the run
history). An optional learning-rate search per variant trains on the training split minus
held-out examples and scores on those held-out examples, never on the test set. Results go
to ``compare.csv``, ``compare.json`` and ``compare.md`` with a Pareto plot
(``engine.compare_report``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.choices import ENCODINGS, MATCH_ADTN, RunStatus
from engine.config import RunConfig
from engine.errors import CompareError
from engine.events import RunControl
from engine.layer_spec import LayerSpec
from engine.paths import RunPaths

log = logging.getLogger(__name__)

DENSE = "dense"  # the uncompressed model, as a reference row
COMPARE_CHOICES = (DENSE, *ENCODINGS)
DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_HOLDOUT_FRACTION = 0.1
RUNS_FOLDER, SEARCH_FOLDER = "runs", "search"


@dataclass(frozen=True)
class Variant:
    """One encoding at one budget: ``depth`` is the ADTN depth whose count sets the budget
    (0 for the dense reference)."""

    encoding: str
    depth: int

    @property
    def key(self) -> str:
        return DENSE if self.encoding == DENSE else f"{self.encoding}-d{self.depth}"

    @property
    def label(self) -> str:
        if self.encoding == DENSE:
            return "dense"
        return f"{self.encoding} at the ADTN depth-{self.depth} budget"


@dataclass
class CompareRequest:
    """What to compare; ``base`` supplies the model, data, layers, optimiser and schedule."""

    base: RunConfig
    out: Path
    encodings: list[str] = field(default_factory=lambda: ["adtn", "tt", "lowrank"])
    depths: list[int] = field(default_factory=lambda: [3])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    epochs: int = 0  # 0: the base configuration's
    lr_search: bool = False
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS))
    search_epochs: int = 0  # 0: half the epochs (at least 1)
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION

    def validate(self) -> CompareRequest:
        unknown = [e for e in self.encodings if e not in COMPARE_CHOICES]
        if unknown or not self.encodings:
            raise CompareError(
                f"encodings: choose some of {', '.join(COMPARE_CHOICES)} "
                f"(got {', '.join(self.encodings) or 'none'})"
            )
        if not self.depths or any(d < 1 for d in self.depths):
            raise CompareError(f"budgets: ADTN depths of 1 or more (got {self.depths})")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise CompareError(f"seeds: whole numbers of 0 or more (got {self.seeds})")
        if self.epochs < 0 or self.search_epochs < 0:
            raise CompareError("epochs and search epochs must be 0 or more")
        if self.lr_search and (
            not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs)
        ):
            raise CompareError(f"learning rates to search must be positive (got {self.lrs})")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise CompareError("the held-out fraction must lie between 0 and 1")
        if not self.base.layers:
            raise CompareError(
                "the configuration names no layers to encode: a comparison "
                "needs at least one (layers = [{name = 'fc1'}])"
            )
        return self

    @property
    def total_epochs(self) -> int:
        return self.epochs or self.base.epochs

    @property
    def total_search_epochs(self) -> int:
        return self.search_epochs or max(1, self.total_epochs // 2)

    def variants(self) -> list[Variant]:
        result = [Variant(DENSE, 0)] if DENSE in self.encodings else []
        for depth in self.depths:
            result += [Variant(e, depth) for e in self.encodings if e != DENSE]
        return result


@dataclass(frozen=True)
class CompareProgress:
    """One step of a comparison, for a progress bar: ``done`` of ``total`` trainings."""

    done: int
    total: int
    variant: str
    stage: str  # "search" | "train" | "skip"
    seed: int
    lr: float
    message: str = ""


@dataclass
class VariantResult:
    """What one variant reached, per seed and on average."""

    key: str
    label: str
    encoding: str
    depth: int
    fits: bool = True
    reason: str = ""  # why it was not trained (a budget it cannot meet)
    budget: int = 0  # the compressed layers' budget (sum over layers)
    layer_params: int = 0  # parameters of the compressed layers
    model_params: int = 0
    layers: list[dict[str, Any]] = field(default_factory=list)  # per-layer options
    lr: float = 0.0
    lr_scores: dict[str, float] = field(default_factory=dict)  # lr -> held-out accuracy
    seeds: list[int] = field(default_factory=list)
    best_test_acc: list[float] = field(default_factory=list)
    final_test_acc: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)

    @property
    def mean_best(self) -> float:
        return statistics.fmean(self.best_test_acc) if self.best_test_acc else float("nan")

    @property
    def mean_final(self) -> float:
        return statistics.fmean(self.final_test_acc) if self.final_test_acc else float("nan")

    @property
    def mean_seconds(self) -> float:
        return statistics.fmean(self.seconds_per_epoch) if self.seconds_per_epoch else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(
            mean_best_test_acc=self.mean_best,
            mean_final_test_acc=self.mean_final,
            mean_seconds_per_epoch=self.mean_seconds,
        )
        return data


def variant_config(
    request: CompareRequest, variant: Variant, seed: int, lr: float, search: bool
) -> RunConfig:
    """The run configuration of one training of a comparison."""
    base = request.base
    if variant.encoding == DENSE:
        layers: list[LayerSpec] = []
    else:
        # the ADTN's own options (index order, gate init) travel with it: they set no budget
        layers = [
            LayerSpec(
                spec.name,
                depth=variant.depth,
                activation=spec.activation,
                layout=spec.layout,
                encoding=variant.encoding,
                budget=0 if variant.encoding == "adtn" else MATCH_ADTN,
                index_order=spec.index_order,
                gate_init=spec.gate_init,
            )
            for spec in base.layers
        ]
    changes: dict[str, Any] = dict(
        name=f"{base.run_name}-{variant.key}-" + (f"lr{lr:g}" if search else f"seed{seed}"),
        layers=layers,
        seed=seed,
        lr=lr,
        adtn_lr=0.0,
        init="scratch",
        pretrain_epochs=0,
        epochs=request.total_search_epochs if search else request.total_epochs,
        holdout=0,
    )
    if hasattr(base, "dense_baseline"):
        changes["dense_baseline"] = variant.encoding == DENSE
    if search:
        changes["holdout"] = _holdout_count(request)
    return base.replace(**changes)


def _holdout_count(request: CompareRequest) -> int:
    from engine.data import config_dataset_info

    size = config_dataset_info(request.base).train_size
    if request.base.limit_train:
        size = min(size, request.base.limit_train)
    return max(1, int(size * request.holdout_fraction))


def _plan(config: RunConfig):
    """The compression report of a variant, or the reason it cannot be built."""
    from engine.compression import plan_compression
    from engine.runs import build_config_model

    try:
        model, _ = build_config_model(config, compressed=False)
        return plan_compression(model, config.layers), ""
    except ValueError as exc:
        return None, str(exc).removeprefix("cannot compress: ")


# Settings that say where and how fast a run trains, not what it computes: a run found in the
# output folder is reused (or resumed) when everything else agrees.
_NOT_COMPARED = ("data_root", "device", "download", "workers", "amp", "description")


def _check_same_run(paths: RunPaths, wanted: RunConfig) -> None:
    """Refuse to reuse or resume a run folder made with other settings (an older comparison in
    the same output folder, or a release whose defaults differed): its results would be
    reported as this request's."""
    if not paths.config.is_file():
        return
    saved = RunConfig.load(paths.config).to_dict()
    asked = wanted.to_dict()
    differing = sorted(
        key
        for key in set(saved) | set(asked)
        if key not in _NOT_COMPARED and saved.get(key) != asked.get(key)
    )
    if differing:
        raise CompareError(
            f"{paths.root} holds a run made with other settings ({', '.join(differing)}); "
            f"choose another output folder, or delete that one to train it again"
        )


def run_compare(
    request: CompareRequest,
    progress: Callable[[CompareProgress], None] | None = None,
    control: RunControl | None = None,
    train_callbacks: Iterable[Any] = (),
) -> list[VariantResult]:
    """Run every variant (search, then one run per seed) and write the report files.

    Finished runs found in ``request.out`` are reused and interrupted ones resumed, so a
    comparison that was stopped picks up where it was. ``control`` stops it between (and
    within) trainings.
    """
    from engine.compare_report import write_report
    from engine.runs import read_summary
    from engine.trainer import train

    request.validate()
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    control = control or RunControl()
    variants = request.variants()
    per_variant = len(request.seeds) + (len(request.lrs) if request.lr_search else 0)
    total, done = len(variants) * per_variant, 0
    results: list[VariantResult] = []
    started = time.time()

    def report(variant: Variant, stage: str, seed: int, lr: float, message: str = "") -> None:
        if progress is not None:
            progress(CompareProgress(done, total, variant.key, stage, seed, lr, message))

    def run_one(config: RunConfig, folder: Path) -> dict:
        paths = RunPaths(folder)
        _check_same_run(paths, config)
        previous = read_summary(paths.summary) if folder.is_dir() else None
        if previous and previous.get("status") == RunStatus.FINISHED:
            return previous
        resume = bool(previous) and paths.checkpoints.is_dir()
        summary = train(config, folder, callbacks=train_callbacks, control=control, resume=resume)
        return dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else summary

    for variant in variants:
        result = VariantResult(variant.key, variant.label, variant.encoding, variant.depth)
        results.append(result)
        probe = variant_config(request, variant, request.seeds[0], request.base.lr, False)
        plan, reason = _plan(probe)
        if plan is None:
            result.fits, result.reason = False, reason
            done += per_variant
            report(variant, "skip", -1, 0.0, reason)
            log.warning("%s: not trained: %s", variant.label, reason)
            continue
        result.layers = [
            {
                "name": r.name,
                "encoding": r.encoding,
                "detail": r.detail,
                "params": r.encoded_params,
                "budget": r.budget,
            }
            for r in plan.rows
        ]
        result.layer_params = plan.encoded_params
        result.budget = sum(r.budget or r.encoded_params for r in plan.rows)
        result.model_params = plan.model_params_after
        lr = request.base.lr
        if request.lr_search:
            for candidate in request.lrs:
                if control.stop_requested:
                    break
                report(variant, "search", request.seeds[0], candidate)
                config = variant_config(request, variant, request.seeds[0], candidate, True)
                summary = run_one(config, out / SEARCH_FOLDER / variant.key / f"lr{candidate:g}")
                score = (
                    float(summary.get("best_test_acc", 0.0))
                    if summary.get("status") == RunStatus.FINISHED
                    else float("nan")
                )
                result.lr_scores[f"{candidate:g}"] = score
                done += 1
            scored = {float(k): v for k, v in result.lr_scores.items() if v == v}
            if scored:
                lr = max(scored, key=lambda k: (scored[k], -k))
        result.lr = lr
        for seed in request.seeds:
            if control.stop_requested:
                break
            report(variant, "train", seed, lr)
            config = variant_config(request, variant, seed, lr, False)
            folder = out / RUNS_FOLDER / f"{variant.key}-seed{seed}"
            summary = run_one(config, folder)
            result.seeds.append(seed)
            result.run_dirs.append(str(folder))
            result.status.append(str(summary.get("status", "")))
            if summary.get("status") == RunStatus.FINISHED:
                result.best_test_acc.append(float(summary.get("best_test_acc", 0.0)))
                result.final_test_acc.append(float(summary.get("test_acc", 0.0)))
                result.seconds_per_epoch.append(float(summary.get("seconds_per_epoch", 0.0)))
            done += 1
        write_report(request, results, out, time.time() - started)
    write_report(request, results, out, time.time() - started)
    report(variants[-1], "done", -1, 0.0)
    return results
