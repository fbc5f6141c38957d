"""Shared test set-up: Qt offscreen, the real MNIST beside the project when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """The read-only real data sets beside the checkout; skips when absent."""
    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip("../shared/datasets/MNIST is not present on this machine")
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep runs and settings of tests out of the user's real folders."""
    home = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("ADTN_RUNS_DIR", str(home / "runs"))
    monkeypatch.setenv("ADTN_CONFIG_DIR", str(home / "config"))
    if "ADTN_DATA_DIR" not in os.environ:
        monkeypatch.setenv("ADTN_DATA_DIR", str(home / "data"))
