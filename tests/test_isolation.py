"""The test environment itself: every test gets its own empty user folders, whatever the
user's environment says (tests/conftest.py, ``isolated_user_dirs``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IGNORED_VARIABLES, ISOLATED_DIRS, SHARED_DATASETS

REAL_DEFAULTS = """
import json, os, platformdirs
from engine.paths import APP_NAME, default_data_root, default_runs_root
print(json.dumps([str(default_data_root()), str(default_runs_root()),
                  str(platformdirs.user_config_path(APP_NAME)),
                  str(platformdirs.user_log_path(APP_NAME))]))
"""


def outside_the_tests(code: str) -> str:
    """Run ``code`` with the environment as it was before the fixture changed it."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_DIRS}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_data_runs_settings_and_logs_live_in_a_fresh_temporary_folder(
    isolated_user_dirs, tmp_path_factory
):
    import json

    import platformdirs

    from engine.paths import APP_NAME, default_data_root, default_runs_root
    from ui.settings import app_settings

    home = isolated_user_dirs
    assert home.is_relative_to(tmp_path_factory.getbasetemp())
    assert not any(home.iterdir())  # empty: nothing left by another test
    ours = [
        default_data_root(),
        default_runs_root(),
        Path(app_settings().fileName()),
        platformdirs.user_config_path(APP_NAME),
        platformdirs.user_log_path(APP_NAME),
    ]
    assert all(path.is_relative_to(home) for path in ours), ours
    assert os.environ["ADTN_DATA_DIR"] == str(home / ISOLATED_DIRS["ADTN_DATA_DIR"])
    assert default_data_root() != SHARED_DATASETS
    # and they differ from what the same code gives outside the tests
    real = [Path(p) for p in json.loads(outside_the_tests(REAL_DEFAULTS))]
    assert not any(path.is_relative_to(home) for path in real)
    assert {default_data_root(), default_runs_root()}.isdisjoint(real)


def test_variables_that_change_a_run_are_removed():
    assert not any(variable in os.environ for variable in IGNORED_VARIABLES)


def test_asking_for_the_shared_data_sets_points_the_data_folder_there(request):
    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip("../shared/datasets/MNIST is not present on this machine")
    shared = request.getfixturevalue("shared_datasets")
    from engine.paths import default_data_root

    assert default_data_root() == shared == SHARED_DATASETS
