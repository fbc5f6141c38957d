"""``adtn-studio compare`` end to end on the generated data set: files, columns, reuse."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import pytest

from engine.compare import CompareError, CompareRequest, Variant, run_compare, variant_config
from engine.compare_report import CSV_COLUMNS, pareto_front
from engine.config import RunConfig
from engine.layer_spec import LayerSpec


def base_config(**changes) -> RunConfig:
    config = RunConfig(
        model="fc2",
        dataset="synthetic",
        epochs=1,
        batch_size=64,
        lr=3e-3,
        limit_train=256,
        limit_test=64,
        device="cpu",
        layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2", depth=2)],
    )
    return config.replace(**changes)


def test_variants_share_everything_but_the_encoding():
    request = CompareRequest(
        base_config(), out=None, encodings=["dense", "adtn", "tt"], depths=[2, 3], seeds=[0]
    )
    keys = [v.key for v in request.variants()]
    assert keys == ["dense", "adtn-d2", "tt-d2", "adtn-d3", "tt-d3"]
    adtn = variant_config(request, Variant("adtn", 3), 0, 1e-2, search=False)
    tt = variant_config(request, Variant("tt", 3), 0, 1e-2, search=False)
    for field in ("epochs", "batch_size", "optimizer", "schedule", "seed", "lr", "dataset"):
        assert getattr(adtn, field) == getattr(tt, field), field
    assert [s.encoding for s in tt.layers] == ["tt", "tt"]
    assert all(s.budget == "match:adtn" and s.depth == 3 for s in tt.layers)
    search = variant_config(request, Variant("tt", 3), 0, 1e-2, search=True)
    assert search.holdout > 0 and adtn.holdout == 0


def test_bad_requests_name_the_option():
    with pytest.raises(CompareError, match="encodings: choose"):
        CompareRequest(base_config(), out=None, encodings=["svd"]).validate()
    with pytest.raises(CompareError, match="budgets"):
        CompareRequest(base_config(), out=None, depths=[0]).validate()
    with pytest.raises(CompareError, match="no layers"):
        CompareRequest(base_config(layers=[]), out=None).validate()


def test_compare_writes_every_file_and_reuses_finished_runs(tmp_path):
    request = CompareRequest(
        base_config(),
        out=tmp_path / "cmp",
        encodings=["dense", "adtn", "tt", "lowrank"],
        depths=[2],
        seeds=[0, 1],
        lr_search=True,
        lrs=[1e-3, 1e-2],
        search_epochs=1,
    )
    steps = []
    results = run_compare(request, progress=steps.append)
    out = tmp_path / "cmp"
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    trained = {r["variant"] for r in rows if r["status"] == "finished"}
    assert trained == {"dense", "adtn-d2", "tt-d2"}
    # The ADTN's budget on fc1 (256×784) is below a rank-1 factorisation: said, not trained.
    lowrank = [r for r in rows if r["variant"] == "lowrank-d2"]
    assert len(lowrank) == 1 and "not trained" in lowrank[0]["status"]
    document = json.loads((out / "compare.json").read_text())
    by_key = {v["key"]: v for v in document["variants"]}
    adtn, tt = by_key["adtn-d2"], by_key["tt-d2"]
    assert len(adtn["best_test_acc"]) == 2 and 0.0 <= adtn["mean_best_test_acc"] <= 1.0
    assert tt["layer_params"] <= adtn["layer_params"] * 1.05
    assert set(adtn["lr_scores"]) == {"0.001", "0.01"}
    assert float(adtn["lr"]) in (1e-3, 1e-2)
    markdown = (out / "compare.md").read_text()
    assert "| tt at the ADTN depth-2 budget |" in markdown and "compare.png" in markdown
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every variant is an ordinary run folder, and the search never evaluates on the test set.
    assert (out / "runs" / "tt-d2-seed1" / "config.toml").is_file()
    search_config = RunConfig.load(out / "search" / "tt-d2" / "lr0.01" / "config.toml")
    assert search_config.holdout > 0
    assert steps[-1].stage == "done"
    # A second call finds every run finished and trains nothing again.
    mtimes = {p: p.stat().st_mtime for p in out.glob("runs/*/summary.json")}
    again = run_compare(request)
    assert [r.best_test_acc for r in again] == [r.best_test_acc for r in results]
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/summary.json")} == mtimes


def test_pareto_front_keeps_only_undominated_points():
    points = [(100, 0.5), (200, 0.4), (300, 0.7), (50, 0.45), (300, 0.6)]
    assert pareto_front(points) == [(50, 0.45), (100, 0.5), (300, 0.7)]


def test_compare_command_line_end_to_end(tmp_path):
    config = tmp_path / "run.toml"
    base_config().save(config)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "adtn_studio",
            "compare",
            "--config",
            str(config),
            "--encodings",
            "adtn,tt",
            "--depths",
            "2",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| adtn at the ADTN depth-2 budget |" in done.stdout
    assert (out / "compare.csv").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "adtn_studio",
            "compare",
            "--config",
            str(config),
            "--encodings",
            "adtn,svd",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "encodings: choose" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_run_made_with_other_settings_is_not_reused(tmp_path):
    request = CompareRequest(
        base_config(), out=tmp_path / "cmp", encodings=["adtn"], depths=[2], seeds=[0]
    )
    first = run_compare(request)
    assert first[0].status == ["finished"]
    # the same folder asked for a different training: refused, nothing overwritten
    summary = tmp_path / "cmp" / "runs" / "adtn-d2-seed0" / "summary.json"
    before = summary.read_bytes()
    changed = dataclasses.replace(request, base=base_config(batch_size=32))
    with pytest.raises(CompareError, match=r"other settings \(batch_size\)"):
        run_compare(changed)
    assert summary.read_bytes() == before
    # a layer written rows first by an older release is another run than today's default
    rows_first = base_config(
        layers=[LayerSpec("fc1", depth=2, index_order="rows_first"), LayerSpec("fc2", depth=2)]
    )
    with pytest.raises(CompareError, match="layers"):
        run_compare(dataclasses.replace(request, base=rows_first))
